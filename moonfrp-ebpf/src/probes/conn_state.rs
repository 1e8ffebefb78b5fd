//! `sock/inet_sock_set_state`: connections opened (passive and active apart) and closed per
//! watched local port, and how long each one lived (log2 millisecond buckets).
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use moonfrp_common::{Proto, SockStateRecord, duration_bucket, tcp_state};

use crate::maps::{CONN_START, TCP_STATS, layout, slot_of};

const IPPROTO_TCP: u16 = 6;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn mf_sock_state(ctx: TracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // Every TCP state change on the host comes here: the port decides first, with one read —
    // of every field at once where they lie in their usual order (each read is a helper call).
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let (sport, record) = unsafe {
        if l.state_packed != 0 {
            let r = ctx.read_at::<SockStateRecord>(l.state_skaddr as usize)?;
            (r.sport, Some(r))
        } else {
            (ctx.read_at::<u16>(l.state_sport as usize)?, None)
        }
    };
    let Some(slot) = slot_of(u32::from(sport), Proto::Tcp) else {
        return Ok(());
    };
    let (protocol, old, new, sk) = match record {
        Some(r) => (r.protocol, r.oldstate, r.newstate, r.skaddr),
        // SAFETY: as above.
        None => unsafe {
            (
                ctx.read_at::<u16>(l.state_protocol as usize)?,
                ctx.read_at::<i32>(l.state_oldstate as usize)?,
                ctx.read_at::<i32>(l.state_newstate as usize)?,
                ctx.read_at::<u64>(l.state_skaddr as usize)?,
            )
        },
    };
    // MPTCP and SCTP sockets use this tracepoint too.
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let Some(c) = TCP_STATS.get_ptr_mut(slot) else {
        return Ok(());
    };

    if new == tcp_state::ESTABLISHED && (old == tcp_state::SYN_RECV || old == tcp_state::SYN_SENT) {
        // SAFETY: this CPU's per-CPU value.
        unsafe {
            if old == tcp_state::SYN_RECV {
                (*c).opened_passive += 1;
            } else {
                (*c).opened_active += 1;
            }
        }
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = CONN_START.insert(&sk, &now, 0);
    } else if new == tcp_state::CLOSE && tcp_state::was_established(old) {
        // SAFETY: this CPU's per-CPU value; the map value is read before it is removed.
        unsafe {
            (*c).closed += 1;
            if let Some(start) = CONN_START.get(&sk) {
                let took = bpf_ktime_get_ns().saturating_sub(*start);
                let _ = CONN_START.remove(&sk);
                (*c).duration_sum_ns += took;
                let b = duration_bucket(took / 1_000_000);
                if let Some(bucket) = (*c).duration_buckets.get_mut(b) {
                    *bucket += 1;
                }
            }
        }
    }
    Ok(())
}
