//! cgroup_skb ingress/egress on the cgroup v2 root: per watched local port, L3 bytes, payload
//! bytes and packets. `__sk_buff.local_port` is the socket's own port in host order, so no
//! transport header is needed to find the port; headers are read only for watched ports.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use moonfrp_common::{EGRESS, INGRESS, PeerCounters, PeerKey, Proto, WatchEntry};

use crate::maps::{PEERS, TRAFFIC, WATCH};

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
    let (proto, l4_hdr, syn) = match l4proto {
        IPPROTO_TCP => {
            let at = (ip_hdr & 0x3f) as usize;
            let doff = u32::from(byte_at(ctx, at + 12)? >> 4) * 4;
            // SYN without ACK: a connection attempt.
            let flags = byte_at(ctx, at + 13)?;
            (Proto::Tcp, doff, flags & 0x12 == 0x02)
        }
        IPPROTO_UDP => (Proto::Udp, 8, false),
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
    if !crate::maps::peer_tracking() {
        return Some(());
    }
    count_peer(
        ctx,
        port,
        proto,
        l3proto == ETH_P_IPV6,
        dir,
        wire,
        u64::from(payload),
        u64::from(segs),
        syn,
    );
    Some(())
}

/// Adds the packet to its (port, remote address) entry of the peer table. The remote address
/// comes from the IP header (source on ingress, destination on egress): during a handshake the
/// socket is the listener, which has no remote address yet.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn count_peer(
    ctx: &SkBuffContext,
    port: u32,
    proto: Proto,
    v6: bool,
    dir: usize,
    wire: u64,
    payload: u64,
    segs: u64,
    syn: bool,
) {
    let mut key = PeerKey {
        port: port as u16,
        proto: proto as u8,
        family: 4,
        addr: [0; 16],
    };
    let ingress = dir == INGRESS;
    if v6 {
        let Ok(a) = ctx.load::<[u8; 16]>(if ingress { 8 } else { 24 }) else {
            return;
        };
        key.family = 6;
        key.addr = a;
    } else {
        let Ok(a) = ctx.load::<[u8; 4]>(if ingress { 12 } else { 16 }) else {
            return;
        };
        key.addr[..4].copy_from_slice(&a);
    }
    let add = |c: &mut PeerCounters| {
        let d = &mut c.dir[dir & 1];
        d.bytes += wire;
        d.payload_bytes += payload;
        d.packets += segs;
        c.syns += u64::from(syn);
    };
    if let Some(c) = PEERS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of an entry that exists; LRU may evict it later, not now.
        unsafe { add(&mut *c) };
    } else {
        let mut c = PeerCounters::default();
        add(&mut c);
        let _ = PEERS.insert(&key, &c, 0);
    }
}
