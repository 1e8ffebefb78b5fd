//! cgroup_skb ingress/egress on the cgroup v2 root: per watched local port, L3 bytes, payload
//! bytes and packets. `__sk_buff.local_port` is the socket's own port in host order, so no
//! transport header is needed to find the port: an unwatched packet costs one inlined array
//! access. Headers are read only for watched ports, in place (direct packet access) when they
//! are in the skb's linear part — on every path we know of — and through the load helper
//! otherwise.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use moonfrp_common::{
    EGRESS, INGRESS, PEER_CACHE_FLUSH, PEER_CACHE_MISSES, PEER_CACHE_STALE, PeerCache,
    PeerCounters, PeerKey, Proto, WatchEntry,
};

use crate::maps::{PEER_CACHE, PEERS, TRAFFIC, WATCH};

/// Every cgroup_skb program must let the packet through: 1 = allow.
const PASS: i32 = 1;
/// `__sk_buff.protocol` holds the big-endian ethertype in a u32.
const ETH_P_IP: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86DDu16.to_be() as u32;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 header length (extension headers are not walked: their packets fall through as "not
/// TCP/UDP").
const IPV6_HDR: u32 = 40;
/// Bytes of a TCP header the program reads: up to the flags byte.
const TCP_READ: usize = 14;

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

/// What the headers of a watched packet say.
#[derive(Clone, Copy)]
struct Headers {
    v6: bool,
    /// IP header length (bytes).
    ip_hdr: u32,
    proto: Proto,
    /// Transport header length (bytes).
    l4_hdr: u32,
    /// TCP SYN without ACK: a connection attempt.
    syn: bool,
}

impl Headers {
    /// The headers from the IP part and, for TCP, the data-offset and flags bytes; `None` for
    /// a transport other than TCP and UDP.
    #[inline(always)]
    fn new(v6: bool, ip_hdr: u32, l4proto: u8, tcp: Option<(u8, u8)>) -> Option<Self> {
        let (proto, l4_hdr, syn) = match (l4proto, tcp) {
            (IPPROTO_TCP, Some((doff, flags))) => {
                (Proto::Tcp, u32::from(doff >> 4) * 4, flags & 0x12 == 0x02)
            }
            (IPPROTO_UDP, _) => (Proto::Udp, 8, false),
            _ => return None,
        };
        Some(Self {
            v6,
            ip_hdr,
            proto,
            l4_hdr,
            syn,
        })
    }
}

/// Reads one byte at `p` of the packet.
///
/// # Safety
/// The caller has checked `p < data_end` (the verifier checks it again).
#[inline(always)]
unsafe fn byte(p: usize) -> u8 {
    // SAFETY: per the contract.
    unsafe { *(p as *const u8) }
}

/// The skb's linear part: (start, end) of the bytes readable in place from the network header.
#[derive(Clone, Copy)]
struct Linear {
    data: usize,
    end: usize,
}

impl Linear {
    #[inline(always)]
    fn of(ctx: &SkBuffContext) -> Self {
        // SAFETY: reading fields of the context the kernel passed in.
        unsafe {
            Self {
                data: (*ctx.skb.skb).data as usize,
                end: (*ctx.skb.skb).data_end as usize,
            }
        }
    }
}

/// The headers read in place. `None` when they are not all in the linear part (then the load
/// helper reads them); `Some(None)` for a packet that is not TCP/UDP over IPv4/IPv6.
#[inline(always)]
fn headers_direct(lin: Linear, l3proto: u32) -> Option<Option<Headers>> {
    let Linear { data, end } = lin;
    let (v6, ip_hdr, l4proto) = if l3proto == ETH_P_IP {
        if data + 20 > end {
            return None;
        }
        // SAFETY: 20 bytes from `data` checked above.
        let (vihl, l4) = unsafe { (byte(data), byte(data + 9)) };
        (false, u32::from(vihl & 0x0f) * 4, l4)
    } else if l3proto == ETH_P_IPV6 {
        if data + IPV6_HDR as usize > end {
            return None;
        }
        // SAFETY: 40 bytes from `data` checked above.
        (true, IPV6_HDR, unsafe { byte(data + 6) })
    } else {
        return Some(None);
    };
    let tcp = if l4proto == IPPROTO_TCP {
        // IHL is at most 60: the mask lets the verifier see the bound.
        let l4 = data + (ip_hdr & 0x3c) as usize;
        if l4 + TCP_READ > end {
            return None;
        }
        // SAFETY: TCP_READ bytes from `l4` checked above.
        Some(unsafe { (byte(l4 + 12), byte(l4 + 13)) })
    } else {
        None
    };
    Some(Headers::new(v6, ip_hdr, l4proto, tcp))
}

/// The headers through the load helper, which copes with non-linear skbs.
#[inline(always)]
fn headers_loaded(ctx: &SkBuffContext, l3proto: u32) -> Option<Headers> {
    let byte_at = |off: usize| ctx.load::<u8>(off).ok();
    let (v6, ip_hdr, l4proto) = if l3proto == ETH_P_IP {
        (false, u32::from(byte_at(0)? & 0x0f) * 4, byte_at(9)?)
    } else if l3proto == ETH_P_IPV6 {
        (true, IPV6_HDR, byte_at(6)?)
    } else {
        return None;
    };
    let tcp = if l4proto == IPPROTO_TCP {
        let at = (ip_hdr & 0x3c) as usize;
        Some((byte_at(at + 12)?, byte_at(at + 13)?))
    } else {
        None
    };
    Headers::new(v6, ip_hdr, l4proto, tcp)
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
    let lin = Linear::of(ctx);
    let h = match headers_direct(lin, l3proto) {
        Some(h) => h?,
        None => headers_loaded(ctx, l3proto)?,
    };
    let slot = entry.slot(h.proto)?;
    let counters = TRAFFIC.get_ptr_mut(slot)?;

    // A GSO/GRO skb carries one set of headers for `gso_segs` segments on the wire.
    let segs = if gso_segs == 0 { 1 } else { gso_segs };
    let hdrs = h.ip_hdr + h.l4_hdr;
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
    let key = peer_key(ctx, lin, port, &h, dir)?;
    count_peer(
        slot,
        &key,
        dir,
        wire,
        u64::from(payload),
        u64::from(segs),
        h.syn,
    );
    Some(())
}

/// Counts one packet for its peer: in the slot's cache entry when it holds that peer (no hash
/// lookup), else in the peer table; see [`moonfrp_common::PeerCache`] for when the entry is
/// flushed into the table or changes hands.
#[inline(always)]
fn count_peer(slot: u32, key: &PeerKey, dir: usize, wire: u64, payload: u64, segs: u64, syn: bool) {
    let Some(c) = PEER_CACHE.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: this CPU's entry of the slot; programs on one CPU do not run concurrently on it.
    let c = unsafe { &mut *c };
    if !same_peer(&c.key, key) {
        let held = c.key.family != 0;
        let other = fingerprint(key);
        let takes = c.misses + 1 >= PEER_CACHE_STALE
            || (c.misses + 1 >= PEER_CACHE_MISSES && c.other == other);
        if held && !takes {
            // Another peer's packet: the table, as without the cache.
            c.misses = c.misses.saturating_add(1);
            c.other = other;
            if let Some(t) = PEERS.get_ptr_mut(key) {
                // SAFETY: this CPU's value of an entry that exists; LRU may evict it later, not now.
                unsafe { (*t).add_packet(dir, wire, payload, segs, syn) };
            } else {
                let mut one = PeerCounters::default();
                one.add_packet(dir, wire, payload, segs, syn);
                let _ = PEERS.insert(key, &one, 0);
            }
            return;
        }
        if held {
            flush(c);
        }
        c.key = *key;
        c.misses = 0;
    } else if c.misses != 0 {
        c.misses = 0;
    }
    c.counters.add_packet(dir, wire, payload, segs, syn);
    c.pending += 1;
    if c.pending >= PEER_CACHE_FLUSH {
        flush(c);
    }
}

/// Moves a cache entry's counters into the peer table (sequence count odd meanwhile).
#[inline(always)]
fn flush(c: &mut PeerCache) {
    bump(&mut c.flushes);
    add_to_table(&c.key, &c.counters);
    clear(&mut c.counters);
    c.pending = 0;
    bump(&mut c.flushes);
}

/// Adds one to the sequence count, volatile: the compiler keeps it in order with the volatile
/// stores of [`clear`] (a reader must not see the count even while the moved amount is still
/// in the entry).
#[inline(always)]
fn bump(n: &mut u64) {
    // SAFETY: a reference to a field of this CPU's entry.
    unsafe { volatile_add(n, 1) };
}

/// `*p += v`, volatile.
///
/// # Safety
/// `p` is valid for reads and writes.
#[inline(always)]
unsafe fn volatile_add(p: *mut u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(v)) };
}

/// Zeroes counters field by field (volatile, so the stores are not merged into a byte-wise
/// memset call).
#[inline(always)]
fn clear(c: &mut PeerCounters) {
    // SAFETY: writes through references to fields of `c`.
    unsafe {
        for d in &mut c.dir {
            core::ptr::write_volatile(&raw mut d.bytes, 0);
            core::ptr::write_volatile(&raw mut d.payload_bytes, 0);
            core::ptr::write_volatile(&raw mut d.packets, 0);
        }
        core::ptr::write_volatile(&raw mut c.syns, 0);
    }
}

/// Adds a cache entry's counters to its table entry. The additions are volatile, so the compiler
/// keeps them before the flush's second (volatile) sequence bump: a reader that sees the count
/// even again finds the amount in the table.
#[inline(always)]
fn add_to_table(key: &PeerKey, add: &PeerCounters) {
    if let Some(c) = PEERS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of an entry that exists; LRU may evict it later, not now.
        unsafe {
            for (d, a) in (*c).dir.iter_mut().zip(add.dir.iter()) {
                volatile_add(&raw mut d.bytes, a.bytes);
                volatile_add(&raw mut d.payload_bytes, a.payload_bytes);
                volatile_add(&raw mut d.packets, a.packets);
            }
            volatile_add(&raw mut (*c).syns, add.syns);
        }
    } else {
        let _ = PEERS.insert(key, add, 0);
    }
}

/// The address words of a key folded into one (equal keys, equal fingerprints).
#[inline(always)]
fn fingerprint(k: &PeerKey) -> u32 {
    // SAFETY: as in `same_peer`.
    let w = unsafe { core::mem::transmute::<PeerKey, [u32; 5]>(*k) };
    w[1] ^ w[2] ^ w[3] ^ w[4]
}

/// Key equality as five 32-bit compares (a byte-wise compare would be a call the BPF target
/// does not have).
#[inline(always)]
fn same_peer(a: &PeerKey, b: &PeerKey) -> bool {
    // SAFETY: PeerKey is 20 bytes of plain integers (checked in moonfrp-common).
    let (a, b) = unsafe {
        (
            core::mem::transmute::<PeerKey, [u32; 5]>(*a),
            core::mem::transmute::<PeerKey, [u32; 5]>(*b),
        )
    };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// The (port, remote address) key of the peer table. The remote address comes from the IP
/// header (source on ingress, destination on egress): during a handshake the socket is the
/// listener, which has no remote address yet.
#[inline(always)]
fn peer_key(
    ctx: &SkBuffContext,
    lin: Linear,
    port: u32,
    h: &Headers,
    dir: usize,
) -> Option<PeerKey> {
    let Linear { data, end } = lin;
    // Built as the key's five 32-bit words (port, protocol and family in the first, the address
    // in the others as its bytes lie in the header): no byte-wise zeroing or copying, which the
    // BPF target would make a call of.
    let family: u32 = if h.v6 { 6 } else { 4 };
    let mut w = [
        (port & 0xffff) | (u32::from(h.proto as u8) << 16) | (family << 24),
        0,
        0,
        0,
        0,
    ];
    let ingress = dir == INGRESS;
    if h.v6 {
        let off = if ingress { 8 } else { 24 };
        let a = if data + 40 <= end {
            // SAFETY: the whole IPv6 header is in the linear part (checked above).
            unsafe { core::ptr::read_unaligned((data + off) as *const [u32; 4]) }
        } else {
            ctx.load::<[u32; 4]>(off).ok()?
        };
        (w[1], w[2], w[3], w[4]) = (a[0], a[1], a[2], a[3]);
    } else {
        let off = if ingress { 12 } else { 16 };
        w[1] = if data + 20 <= end {
            // SAFETY: the IPv4 header's fixed part is in the linear part (checked above).
            unsafe { core::ptr::read_unaligned((data + off) as *const u32) }
        } else {
            ctx.load::<u32>(off).ok()?
        };
    }
    // SAFETY: PeerKey is 20 bytes of plain integers (checked in moonfrp-common); the first word
    // is `port`, `proto`, `family` in memory order on this little-endian target.
    Some(unsafe { core::mem::transmute::<[u32; 5], PeerKey>(w) })
}
