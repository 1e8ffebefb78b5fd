//! TCP trouble per watched local port: `tcp/tcp_send_reset` (on 6.10+ refused connections — a
//! reset with no socket answering a SYN — apart from other resets sent), `tcp/tcp_receive_reset`,
//! `tcp/tcp_retransmit_skb`, and before 6.10 refused connections as SYNs dropped for want of a
//! socket (`skb/kfree_skb`).
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};
use moonfrp_common::{NO_FIELD, Proto, TcpCounters, TracepointLayout};

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
    // Before sk_rst_reason (6.10) every reset seen here comes from a socket: refusals are
    // counted by `mf_refused` instead. From 6.10 on, a reset sent with no socket answers a
    // segment to a port nobody has: a SYN is a refused connection, anything else a stray
    // segment of a connection the host no longer has (a reset sent, like the others). Without
    // the sk_buff offsets, or if the segment cannot be read, it counts as a refusal.
    let no_socket = l.send_reset_reason != NO_FIELD
        && unsafe { ctx.read_at::<u32>(l.send_reset_reason as usize)? == l.reason_no_socket };
    let refused = no_socket
        && (l.skb_head == NO_FIELD
            || unsafe { ctx.read_at::<u64>(l.send_reset_skbaddr as usize) }
                .ok()
                .and_then(|skb| tcp_segment(skb, &l).ok().flatten())
                .is_none_or(|(_, flags)| flags & (TCP_SYN | TCP_ACK) == TCP_SYN));
    bump(u32::from(port), |c| {
        if refused {
            c.refused += 1;
        } else {
            c.resets_sent += 1;
        }
    });
    Ok(())
}

/// Kernels before 6.10: a SYN to a watched TCP port that no socket took (the kernel answers it
/// with a reset and drops it for `NO_SOCKET`) is a refused connection. Every other drop leaves
/// at the first comparison.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn mf_refused(ctx: TracePointContext) -> u32 {
    let _ = try_refused(&ctx);
    0
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn try_refused(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // SAFETY: offsets from this kernel's format file.
    if unsafe { ctx.read_at::<u32>(l.drop_reason as usize)? } != l.drop_no_socket {
        return Ok(());
    }
    let skb = unsafe { ctx.read_at::<u64>(l.drop_skbaddr as usize)? };
    // A stray segment of an old connection is answered with a reset too, but is no refusal.
    if let Some((dport, flags)) = tcp_segment(skb, &l)?
        && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        bump(u32::from(dport), |c| c.refused += 1);
    }
    Ok(())
}

/// The destination port (host order) and flags byte of the TCP segment in the `sk_buff` at
/// `skb`, read through the member offsets from the kernel's BTF; `None` if it is not TCP over
/// IPv4 or IPv6 (without extension headers) or its headers are not set.
#[inline(always)]
fn tcp_segment(skb: u64, l: &TracepointLayout) -> Result<Option<(u16, u8)>, i32> {
    // SAFETY: `sk_buff` member offsets from this kernel's BTF; probe reads fail, not fault.
    let (head, nh, th) = unsafe {
        (
            bpf_probe_read_kernel((skb + u64::from(l.skb_head)) as *const u64)?,
            bpf_probe_read_kernel((skb + u64::from(l.skb_network_header)) as *const u16)?,
            bpf_probe_read_kernel((skb + u64::from(l.skb_transport_header)) as *const u16)?,
        )
    };
    if head == 0 || th == u16::MAX || nh == u16::MAX {
        return Ok(None);
    }
    let ip = head + u64::from(nh);
    // SAFETY: reads inside the packet's buffer, checked by the helper.
    let first = unsafe { bpf_probe_read_kernel(ip as *const u8)? };
    let proto_at = match first >> 4 {
        4 => 9, // IPv4 `protocol`
        6 => 6, // IPv6 `next header` (TCP right after the fixed header: no extension headers)
        _ => return Ok(None),
    };
    if unsafe { bpf_probe_read_kernel((ip + proto_at) as *const u8)? } != 6 {
        return Ok(None);
    }
    let tcp = head + u64::from(th);
    let (dport, flags) = unsafe {
        (
            bpf_probe_read_kernel((tcp + 2) as *const u16)?,
            bpf_probe_read_kernel((tcp + 13) as *const u8)?,
        )
    };
    Ok(Some((u16::from_be(dport), flags)))
}
