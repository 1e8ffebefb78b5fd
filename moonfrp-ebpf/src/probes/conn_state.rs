//! `sock/inet_sock_set_state`: connections opened (passive and active apart) and closed per
//! watched local port, and how long each one lived (log2 millisecond buckets).
use aya_ebpf::{
    EbpfContext as _, helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext,
};
use moonfrp_common::{CONN_WAYS, Proto, SockStateRecord, duration_bucket, tcp_state};

use crate::maps::{CONN_START, TCP_STATS, conn_set, layout, slot_of};

const IPPROTO_TCP: u16 = 6;
/// Where the record's fields begin on every kernel we know of (after the 8-byte common header).
const RECORD_AT: u32 = 8;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn mf_sock_state(ctx: TracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

/// Reads a `T` at `RECORD_AT + off` of the tracepoint record, in place: a load the verifier allows
/// for a tracepoint's context at a constant offset, where the helper `read_at` uses is a call.
///
/// # Safety
/// `off` is a field's offset in [`SockStateRecord`] and `T` its type.
#[inline(always)]
unsafe fn field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: per the contract, inside the record the kernel passed in.
    unsafe {
        core::ptr::read(
            ctx.as_ptr()
                .cast::<u8>()
                .add(RECORD_AT as usize + off)
                .cast::<T>(),
        )
    }
}

#[inline(always)]
fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let l = layout();
    // Every TCP state change on the host comes here: the port decides first. Where the fields lie
    // in their usual order at their usual place they are read in place; where they lie in their
    // usual order elsewhere, with one helper call; otherwise one call each.
    let direct = l.state_packed != 0 && l.state_skaddr == RECORD_AT;
    // SAFETY: offsets come from this kernel's format file for this tracepoint (`direct`: the
    // record's own, which the layout matched).
    let (sport, record) = unsafe {
        if direct {
            (
                field::<u16>(ctx, core::mem::offset_of!(SockStateRecord, sport)),
                None,
            )
        } else if l.state_packed != 0 {
            let r = ctx.read_at::<SockStateRecord>(l.state_skaddr as usize)?;
            (r.sport, Some(r))
        } else {
            (ctx.read_at::<u16>(l.state_sport as usize)?, None)
        }
    };
    let Some(slot) = slot_of(u32::from(sport), Proto::Tcp) else {
        return Ok(());
    };
    // SAFETY: as above.
    let (protocol, old, new, sk) = unsafe {
        match record {
            Some(r) => (r.protocol, r.oldstate, r.newstate, r.skaddr),
            None if direct => (
                field::<u16>(ctx, core::mem::offset_of!(SockStateRecord, protocol)),
                field::<i32>(ctx, core::mem::offset_of!(SockStateRecord, oldstate)),
                field::<i32>(ctx, core::mem::offset_of!(SockStateRecord, newstate)),
                field::<u64>(ctx, core::mem::offset_of!(SockStateRecord, skaddr)),
            ),
            None => (
                ctx.read_at::<u16>(l.state_protocol as usize)?,
                ctx.read_at::<i32>(l.state_oldstate as usize)?,
                ctx.read_at::<i32>(l.state_newstate as usize)?,
                ctx.read_at::<u64>(l.state_skaddr as usize)?,
            ),
        }
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
        opened(sk);
    } else if new == tcp_state::CLOSE && tcp_state::was_established(old) {
        // SAFETY: this CPU's per-CPU value.
        unsafe { (*c).closed += 1 };
        if let Some(took) = closed(sk) {
            // SAFETY: as above.
            unsafe {
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

/// Notes when socket `sk` was established: in a free entry of its set (or its own, left from
/// an earlier socket at the same address), else in place of the set's oldest.
#[inline(always)]
fn opened(sk: u64) {
    let first = conn_set(sk);
    // The way to take, kept as an index and looked up again below: a pointer carried out of the
    // loop loses its type in older verifiers (5.10 rejects the store as to a scalar).
    let mut take = None;
    let mut oldest = u64::MAX;
    for way in 0..CONN_WAYS {
        let Some(e) = CONN_START.get_ptr(first + way) else {
            continue;
        };
        // SAFETY: an entry of the array; entries are plain integers.
        let (held, since) = unsafe { ((*e).sk, (*e).start_ns) };
        if held == 0 || held == sk {
            take = Some(way);
            break;
        }
        if since < oldest {
            oldest = since;
            take = Some(way);
        }
    }
    if let Some(e) = take.and_then(|way| CONN_START.get_ptr_mut(first + way)) {
        // SAFETY: as above. The time goes in before the address: a reader that finds the address
        // finds its time (two sockets open at once never share an address).
        unsafe {
            core::ptr::write_volatile(&raw mut (*e).start_ns, bpf_ktime_get_ns());
            core::ptr::write_volatile(&raw mut (*e).sk, sk);
        }
    }
}

/// How long socket `sk` was established (ns), if its entry is still in its set; frees it.
#[inline(always)]
fn closed(sk: u64) -> Option<u64> {
    let first = conn_set(sk);
    for way in 0..CONN_WAYS {
        let Some(e) = CONN_START.get_ptr_mut(first + way) else {
            continue;
        };
        // SAFETY: an entry of the array; entries are plain integers.
        unsafe {
            if (*e).sk == sk {
                let took = bpf_ktime_get_ns().saturating_sub((*e).start_ns);
                (*e).sk = 0;
                return Some(took);
            }
        }
    }
    None
}
