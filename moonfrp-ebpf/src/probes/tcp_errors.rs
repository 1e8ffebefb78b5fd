//! TCP trouble per watched local port: `tcp/tcp_send_reset` (refused connections apart from other
//! resets sent), `tcp/tcp_receive_reset` and `tcp/tcp_retransmit_skb`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use moonfrp_common::{NO_FIELD, Proto, TcpCounters};

use crate::maps::{TCP_STATS, layout, slot_of};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn mf_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_send_reset(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn mf_recv_reset(ctx: TracePointContext) -> u32 {
    let l = layout();
    let _ = bump_by_sport(&ctx, l.recv_reset_sport, |c| c.resets_received += 1);
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn mf_retransmit(ctx: TracePointContext) -> u32 {
    let l = layout();
    let _ = bump_by_sport(&ctx, l.retrans_sport, |c| c.retransmits += 1);
    0
}

/// Applies `f` to this CPU's counters of the watched TCP port read (host order) at `off`.
#[inline(always)]
fn bump_by_sport(
    ctx: &TracePointContext,
    off: u32,
    f: impl FnOnce(&mut TcpCounters),
) -> Result<(), i32> {
    // SAFETY: offset from this kernel's format file.
    let sport = unsafe { ctx.read_at::<u16>(off as usize)? };
    bump(u32::from(sport), f);
    Ok(())
}

#[inline(always)]
fn bump(port: u32, f: impl FnOnce(&mut TcpCounters)) {
    if let Some(slot) = slot_of(port, Proto::Tcp)
        && let Some(c) = TCP_STATS.get_ptr_mut(slot)
    {
        // SAFETY: this CPU's per-CPU value.
        f(unsafe { &mut *c });
    }
}

#[inline(always)]
fn try_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // SAFETY: offsets from this kernel's format file.
    let raw = unsafe { ctx.read_at::<u16>(l.send_reset_port as usize)? };
    let port = if l.send_reset_port_be != 0 {
        u16::from_be(raw)
    } else {
        raw
    };
    if port == 0 {
        return Ok(());
    }
    let refused = if l.send_reset_reason == NO_FIELD {
        // Before sk_rst_reason existed: a reset sent with no socket answers a port nobody has.
        unsafe { ctx.read_at::<u64>(l.send_reset_skaddr as usize)? == 0 }
    } else {
        unsafe { ctx.read_at::<u32>(l.send_reset_reason as usize)? == l.reason_no_socket }
    };
    bump(u32::from(port), |c| {
        if refused {
            c.refused += 1;
        } else {
            c.resets_sent += 1;
        }
    });
    Ok(())
}
