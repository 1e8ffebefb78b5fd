//! cgroup_skb ingress/egress on the cgroup v2 root: per watched local port, L3 bytes, payload
//! bytes and packets. `__sk_buff.local_port` is the socket's own port in host order, so no
//! transport header is needed to find the port; headers are read only for watched ports.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use moonfrp_common::{EGRESS, INGRESS, Proto, WatchEntry};

use crate::maps::{TRAFFIC, WATCH};

/// Every cgroup_skb program must let the packet through: 1 = allow.
const PASS: i32 = 1;
/// `__sk_buff.protocol` holds the big-endian ethertype in a u32.
const ETH_P_IP: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86DDu16.to_be() as u32;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[cgroup_skb]
pub fn mf_skb_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_count(&ctx, INGRESS);
    PASS
}

#[cgroup_skb]
pub fn mf_skb_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_count(&ctx, EGRESS);
    PASS
}

/// One byte of the packet at `off` from the network header. The load helper copes with
/// non-linear skbs and variable offsets, and runs only for packets of watched ports.
#[inline(always)]
fn byte_at(ctx: &SkBuffContext, off: usize) -> Option<u8> {
    ctx.load::<u8>(off).ok()
}

#[inline(always)]
fn try_count(ctx: &SkBuffContext, dir: usize) -> Option<()> {
    let skb = ctx.skb.skb;
    // SAFETY: reading a field of the context the kernel passed in.
    let port = unsafe { (*skb).local_port };
    let entry = WatchEntry(*WATCH.get(port)?);
    if entry.0 == 0 {
        return None;
    }
    // Only watched ports get this far.
    // SAFETY: as above.
    let (l3proto, len, gso_segs) = unsafe { ((*skb).protocol, (*skb).len, (*skb).gso_segs) };

    let (ip_hdr, l4proto) = if l3proto == ETH_P_IP {
        let ihl = u32::from(byte_at(ctx, 0)? & 0x0f) * 4;
        (ihl, byte_at(ctx, 9)?)
    } else if l3proto == ETH_P_IPV6 {
        // Extension headers are not walked: their packets fall through as "not TCP/UDP".
        (40, byte_at(ctx, 6)?)
    } else {
        return None;
    };
    let (proto, l4_hdr) = match l4proto {
        IPPROTO_TCP => {
            let doff = u32::from(byte_at(ctx, (ip_hdr & 0x3f) as usize + 12)? >> 4) * 4;
            (Proto::Tcp, doff)
        }
        IPPROTO_UDP => (Proto::Udp, 8),
        _ => return None,
    };
    let slot = entry.slot(proto)?;
    let counters = TRAFFIC.get_ptr_mut(slot)?;

    // A GSO/GRO skb carries one set of headers for `gso_segs` segments on the wire.
    let segs = if gso_segs == 0 { 1 } else { gso_segs };
    let hdrs = ip_hdr + l4_hdr;
    let payload = len.saturating_sub(hdrs);
    let wire = u64::from(len) + u64::from(segs - 1) * u64::from(hdrs);

    // SAFETY: per-CPU slot of this CPU; programs on one CPU do not run concurrently on it.
    unsafe {
        let d = &mut (*counters).dir[dir & 1];
        d.bytes += wire;
        d.payload_bytes += u64::from(payload);
        d.packets += u64::from(segs);
    }
    Some(())
}
