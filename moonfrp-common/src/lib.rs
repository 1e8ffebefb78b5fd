//! Types shared by moonfrp's kernel programs and its agent.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding: the same bytes are
//! written by the kernel side and read by userspace. Map and global names are constants used by
//! both sides, so a rename cannot silently break the link between them.
#![no_std]

/// Map names (kernel object names are limited to 15 characters).
pub mod names {
    /// `Array<u32>` indexed by local port: the watch table (see [`super::WatchEntry`]).
    pub const WATCH: &str = "WATCH";
    /// `PerCpuArray<TrafficCounters>` indexed by slot.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// `PerCpuArray<TcpCounters>` indexed by slot.
    pub const TCP_STATS: &str = "TCP_STATS";
    /// `Array<ConnStart>` of [`super::CONN_WAYS`]-way sets: open connections' monotonic open
    /// times, for durations (see [`super::ConnStart`]).
    pub const CONN_START: &str = "CONN_START";
    /// `LruPerCpuHashMap<PeerKey, PeerCounters>`: traffic per (watched port, remote address).
    pub const PEERS: &str = "PEERS";
    /// `PerCpuArray<PeerCache>` indexed by slot: each slot's current peer, counted here before
    /// [`PEERS`] (see [`super::PeerCache`]).
    pub const PEER_CACHE: &str = "PEER_CACHE";
    /// Global [`super::TracepointLayout`], set at load time from tracefs `format` files.
    pub const LAYOUT: &str = "LAYOUT";
    /// Global `u32`: 1 to count peers in [`PEERS`], 0 to skip it (set at load time).
    pub const PEER_TRACKING: &str = "PEER_TRACKING";
    /// Global `u32`: how many sets [`CONN_START`] has (set at load time).
    pub const CONN_SETS: &str = "CONN_SETS";
}

/// Program names as they appear in the object file (and, truncated to 15 bytes, in the kernel).
pub mod programs {
    pub const SKB_INGRESS: &str = "mf_skb_ingress";
    pub const SKB_EGRESS: &str = "mf_skb_egress";
    pub const SOCK_STATE: &str = "mf_sock_state";
    pub const RETRANSMIT: &str = "mf_retransmit";
    pub const SEND_RESET: &str = "mf_send_reset";
    pub const RECV_RESET: &str = "mf_recv_reset";
    pub const REFUSED: &str = "mf_refused";
}

/// Number of entries in the watch table: one per possible local port.
pub const WATCH_ENTRIES: u32 = 65_536;
/// Default number of counter slots; one slot serves one (port, protocol) pair.
pub const DEFAULT_SLOTS: u32 = 4_096;
/// Hard ceiling on slots: a slot number (+1) must fit in 16 bits of a [`WatchEntry`].
pub const MAX_SLOTS: u32 = 65_535;
/// Default capacity of the open-connection table used for durations.
pub const DEFAULT_TRACKED_CONNECTIONS: u32 = 65_536;

/// Entries per set of the open-connection table.
pub const CONN_WAYS: u32 = 4;

/// An open connection in `CONN_START`: its socket's address (0: the entry is free) and when it
/// was established (ns since boot).
///
/// The table is an array of sets of [`CONN_WAYS`] entries; a socket's set comes from its address
/// ([`conn_set`]). A connection takes a free entry of its set, else the one open longest (whose
/// duration is then not known when it closes); closing frees its entry. A lookup is two inlined
/// array accesses instead of a hash table's insert and delete (≈ 90 ns per state change on
/// average, measured).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStart {
    pub sk: u64,
    pub start_ns: u64,
}

/// The first entry of socket address `sk`'s set in a table of `sets` sets.
#[inline(always)]
pub const fn conn_set(sk: u64, sets: u32) -> u32 {
    // Slab addresses differ in their middle bits: a multiplicative hash spreads them.
    let h = (sk >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    let sets = if sets == 0 { 1 } else { sets as u64 };
    (h % sets) as u32 * CONN_WAYS
}

/// Version of what the kernel maps hold (their types, sizes and meaning). Maps pinned by an
/// agent of another version are replaced, not reused: bump it with any change to a map's
/// definition or to what a program writes into it.
pub const PIN_LAYOUT: u32 = 3;

/// Default capacity of the peer table (LRU: the least recently seen peers make room).
pub const DEFAULT_PEERS: u32 = 16_384;

/// A remote address talking to a watched (port, protocol). IPv4 addresses are stored in the first
/// four bytes of `addr` (network order) with `family` 4; IPv6 with `family` 6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub port: u16,
    /// [`Proto`] as u8.
    pub proto: u8,
    pub family: u8,
    pub addr: [u8; 16],
}

/// What one peer exchanged with one watched port ([`INGRESS`], [`EGRESS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub dir: [DirCounters; 2],
    /// TCP segments with SYN and without ACK: connection attempts (from the peer on ingress,
    /// to it on egress), retransmitted SYNs included.
    pub syns: u64,
}

impl PeerCounters {
    /// Element-wise sum, used to fold per-CPU values.
    #[must_use]
    pub fn merged(mut self, o: &Self) -> Self {
        for (a, b) in self.dir.iter_mut().zip(o.dir.iter()) {
            a.bytes = a.bytes.wrapping_add(b.bytes);
            a.payload_bytes = a.payload_bytes.wrapping_add(b.payload_bytes);
            a.packets = a.packets.wrapping_add(b.packets);
        }
        self.syns = self.syns.wrapping_add(o.syns);
        self
    }
}

/// Per slot and CPU, the peer the slot's last packets came from or went to, counted here instead
/// of in the peer table: a packet of that peer costs no hash lookup. The program moves
/// (flushes) the counters into the table every [`PEER_CACHE_FLUSH`] packets, which also keeps the
/// peer's table entry recently used. A packet of another peer is counted in the table, unless at
/// least [`PEER_CACHE_MISSES`] packets of other peers came in a row and this one's peer also sent
/// the one before it, or [`PEER_CACHE_STALE`] came in a row: then the entry is flushed and taken
/// by that peer (a new bulk flow takes it over; packets of many peers taking turns leave it where
/// it is, but not for ever). A peer's total is its table entry plus every cache entry holding its
/// key.
///
/// `flushes` is a sequence count for readers: odd while a flush is under way, +2 per flush. A
/// reader that sees the same even count before and after reading the table entry and the cache
/// has a consistent pair (nothing moved between the two in the meantime).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCache {
    /// The cached peer; `family` 0 while the entry is empty.
    pub key: PeerKey,
    /// Packets counted in `counters` since the last flush.
    pub pending: u32,
    /// Packets in a row of other peers since the last packet of this one.
    pub misses: u32,
    /// Fingerprint of the last other peer's address: the entry changes hands only to a peer whose
    /// two last packets came in a row (not to every passer-by of a many-peer port).
    pub other: u32,
    pub counters: PeerCounters,
    /// After `counters`, so that a copy of the entry (which reads in address order) reads the
    /// count after the counters.
    pub flushes: u64,
}

/// Packets a [`PeerCache`] entry counts before moving them into the peer table.
pub const PEER_CACHE_FLUSH: u32 = 64;
/// Packets of other peers in a row after which a [`PeerCache`] entry changes hands anyway (its
/// peer has gone quiet; keeps a one-off sender from holding it on a port of many peers).
pub const PEER_CACHE_STALE: u32 = 1_024;
/// Packets of other peers in a row before a [`PeerCache`] entry may change hands.
pub const PEER_CACHE_MISSES: u32 = 16;

impl PeerCounters {
    /// Adds one packet (`segs` segments, `wire` IP-layer and `payload` transport bytes) in
    /// direction `dir`; `syn` for a connection attempt.
    #[inline(always)]
    pub fn add_packet(&mut self, dir: usize, wire: u64, payload: u64, segs: u64, syn: bool) {
        let d = &mut self.dir[dir & 1];
        d.bytes = d.bytes.wrapping_add(wire);
        d.payload_bytes = d.payload_bytes.wrapping_add(payload);
        d.packets = d.packets.wrapping_add(segs);
        self.syns = self.syns.wrapping_add(u64::from(syn));
    }
}

/// Transport protocol of a watched port.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp = 0,
    Udp = 1,
}

impl Proto {
    /// IANA protocol number (as in the IP header).
    pub const fn ip_number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// Label value used in metrics and configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A watch-table entry, packed in a `u32`: `tcp slot + 1` in the low 16 bits, `udp slot + 1` in
/// the high 16 bits; 0 means "not watched". One lookup by port answers for both protocols, so an
/// unwatched packet costs a single array access and no header parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEntry(pub u32);

impl WatchEntry {
    /// The counter slot for `proto`, if that protocol is watched on this port.
    #[inline(always)]
    pub const fn slot(self, proto: Proto) -> Option<u32> {
        let raw = match proto {
            Proto::Tcp => self.0 & 0xffff,
            Proto::Udp => self.0 >> 16,
        };
        if raw == 0 { None } else { Some(raw - 1) }
    }

    /// This entry with `proto` mapped to `slot` (or unmapped with `None`).
    #[must_use]
    pub const fn with_slot(self, proto: Proto, slot: Option<u32>) -> Self {
        let raw = match slot {
            Some(s) => (s + 1) & 0xffff,
            None => 0,
        };
        match proto {
            Proto::Tcp => Self((self.0 & 0xffff_0000) | raw),
            Proto::Udp => Self((self.0 & 0x0000_ffff) | (raw << 16)),
        }
    }
}

/// Direction index into [`TrafficCounters::dir`]: into the local socket.
pub const INGRESS: usize = 0;
/// Direction index into [`TrafficCounters::dir`]: out of the local socket.
pub const EGRESS: usize = 1;

/// Counters for one direction of one watched (port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirCounters {
    /// IP-layer bytes (headers included, one set per GSO segment).
    pub bytes: u64,
    /// Transport payload bytes (IP and TCP/UDP headers excluded).
    pub payload_bytes: u64,
    /// Packets, counting each GSO/GRO segment.
    pub packets: u64,
}

/// Traffic counters of one slot, per direction ([`INGRESS`], [`EGRESS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub dir: [DirCounters; 2],
}

impl TrafficCounters {
    /// Element-wise sum, used to fold per-CPU values.
    #[must_use]
    pub fn merged(mut self, other: &Self) -> Self {
        for (a, b) in self.dir.iter_mut().zip(other.dir.iter()) {
            a.bytes = a.bytes.wrapping_add(b.bytes);
            a.payload_bytes = a.payload_bytes.wrapping_add(b.payload_bytes);
            a.packets = a.packets.wrapping_add(b.packets);
        }
        self
    }
}

/// Number of log2 buckets of the connection-duration histogram.
///
/// Bucket `b` counts connections whose duration in whole milliseconds `d` has bit length `b`
/// (`d < 2^b` ms, and `d >= 2^(b-1)` ms for `b > 0`); the last bucket also takes everything longer.
pub const DURATION_BUCKETS: usize = 28;

/// TCP connection and error counters of one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCounters {
    /// SYN_RECV → ESTABLISHED: connections accepted on the port.
    pub opened_passive: u64,
    /// SYN_SENT → ESTABLISHED: connections made from a socket bound to the port.
    pub opened_active: u64,
    /// Established (or closing) connections that reached CLOSE.
    pub closed: u64,
    /// RST sent because nobody listens on the port (a refused connection).
    pub refused: u64,
    /// Other RSTs sent by sockets on the port.
    pub resets_sent: u64,
    /// RSTs received by sockets on the port.
    pub resets_received: u64,
    /// Segments retransmitted by sockets on the port.
    pub retransmits: u64,
    /// Sum of the durations of closed connections whose open was seen, in nanoseconds.
    pub duration_sum_ns: u64,
    /// Closed connections whose open was seen, by duration (see [`DURATION_BUCKETS`]).
    pub duration_buckets: [u64; DURATION_BUCKETS],
}

impl Default for TcpCounters {
    fn default() -> Self {
        Self {
            opened_passive: 0,
            opened_active: 0,
            closed: 0,
            refused: 0,
            resets_sent: 0,
            resets_received: 0,
            retransmits: 0,
            duration_sum_ns: 0,
            duration_buckets: [0; DURATION_BUCKETS],
        }
    }
}

impl TcpCounters {
    /// Element-wise sum, used to fold per-CPU values.
    #[must_use]
    pub fn merged(mut self, o: &Self) -> Self {
        self.opened_passive = self.opened_passive.wrapping_add(o.opened_passive);
        self.opened_active = self.opened_active.wrapping_add(o.opened_active);
        self.closed = self.closed.wrapping_add(o.closed);
        self.refused = self.refused.wrapping_add(o.refused);
        self.resets_sent = self.resets_sent.wrapping_add(o.resets_sent);
        self.resets_received = self.resets_received.wrapping_add(o.resets_received);
        self.retransmits = self.retransmits.wrapping_add(o.retransmits);
        self.duration_sum_ns = self.duration_sum_ns.wrapping_add(o.duration_sum_ns);
        for (a, b) in self
            .duration_buckets
            .iter_mut()
            .zip(o.duration_buckets.iter())
        {
            *a = a.wrapping_add(*b);
        }
        self
    }
}

/// Bucket index for a duration of `ms` whole milliseconds: its bit length, capped.
#[inline(always)]
pub const fn duration_bucket(ms: u64) -> usize {
    let bits = (64 - ms.leading_zeros()) as usize;
    if bits >= DURATION_BUCKETS {
        DURATION_BUCKETS - 1
    } else {
        bits
    }
}

/// Marker for an offset that the running kernel's tracepoint does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Field offsets of the tracepoints the programs read, taken from tracefs `format` files at start
/// (layouts differ between kernels). All `u32` so the struct has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointLayout {
    /// `sock/inet_sock_set_state`
    pub state_skaddr: u32,
    pub state_oldstate: u32,
    pub state_newstate: u32,
    pub state_sport: u32,
    pub state_protocol: u32,
    /// 1 if `inet_sock_set_state` has the usual order from `skaddr` on (skaddr, oldstate,
    /// newstate, sport, dport, family, protocol with no gaps, as on 6.18): then one read of
    /// [`SockStateRecord`] at `state_skaddr` gets them all; 0: each field is read on its own.
    pub state_packed: u32,
    /// `tcp/tcp_retransmit_skb`: local port (host order).
    pub retrans_sport: u32,
    /// `tcp/tcp_receive_reset`: local port (host order).
    pub recv_reset_sport: u32,
    /// `tcp/tcp_send_reset`: `enum sk_rst_reason`, or [`NO_FIELD`] on kernels before 6.10.
    pub send_reset_reason: u32,
    /// `tcp/tcp_send_reset`: offset of the local port.
    pub send_reset_port: u32,
    /// 1 if the port at `send_reset_port` is big-endian (inside a `sockaddr`), 0 if host order.
    pub send_reset_port_be: u32,
    /// Value of `SK_RST_REASON_NO_SOCKET` on this kernel, from the format's print fmt.
    pub reason_no_socket: u32,
    /// `tcp/tcp_send_reset` (6.10+): the address of the segment a reset answers. With the
    /// `sk_buff` offsets below, a reset sent with no socket is a refusal only if it answers a
    /// SYN; without them ([`NO_FIELD`] in `skb_head`) every such reset counts as one.
    pub send_reset_skbaddr: u32,
    /// `skb/kfree_skb` (used on kernels 5.17–6.9, where `tcp_send_reset` has no reason and a
    /// refused connection shows only as a SYN dropped for `NO_SOCKET`): the packet's address.
    pub drop_skbaddr: u32,
    /// `skb/kfree_skb`: `enum skb_drop_reason`.
    pub drop_reason: u32,
    /// Value of `SKB_DROP_REASON_NO_SOCKET` on this kernel, from the format's print fmt.
    pub drop_no_socket: u32,
    /// `struct sk_buff` member offsets, from the kernel's BTF: `head`, `network_header`,
    /// `transport_header` ([`NO_FIELD`] in `skb_head` where the BTF could not be read).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
}

impl TracepointLayout {
    /// The layout of kernel 6.18 (x86_64), used only as the program's compiled-in default; the
    /// agent always overrides it with what the running kernel says.
    pub const DEFAULT: Self = Self {
        state_skaddr: 8,
        state_oldstate: 16,
        state_newstate: 20,
        state_sport: 24,
        state_protocol: 30,
        state_packed: 1,
        retrans_sport: 28,
        recv_reset_sport: 16,
        send_reset_reason: 28,
        send_reset_port: 34,
        send_reset_port_be: 1,
        reason_no_socket: 1,
        send_reset_skbaddr: 8,
        drop_skbaddr: 8,
        drop_reason: 36,
        drop_no_socket: 3,
        skb_head: 192,
        skb_network_header: 180,
        skb_transport_header: 178,
    };
}

/// The fields of `sock/inet_sock_set_state` from `skaddr` on, in their usual order
/// ([`TracepointLayout::state_packed`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateRecord {
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
}

impl SockStateRecord {
    /// Whether a layout's offsets are this record's, from `state_skaddr` on.
    pub const fn matches(l: &TracepointLayout) -> bool {
        let base = l.state_skaddr;
        l.state_oldstate == base + 8
            && l.state_newstate == base + 12
            && l.state_sport == base + 16
            && l.state_protocol == base + 22
    }
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;

    /// States from which a move to CLOSE ends a connection that had been established.
    #[inline(always)]
    pub const fn was_established(state: i32) -> bool {
        matches!(
            state,
            ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made only of integers, with no padding
    // (checked by the size assertions below).
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::TcpCounters {}
    unsafe impl aya::Pod for super::TracepointLayout {}
    // SAFETY: as above: plain repr(C) integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::PeerCounters {}
    unsafe impl aya::Pod for super::PeerCache {}

    const _: () = assert!(size_of::<super::TrafficCounters>() == 6 * 8);
    const _: () = assert!(size_of::<super::TcpCounters>() == (8 + super::DURATION_BUCKETS) * 8);
    const _: () = assert!(size_of::<super::TracepointLayout>() == 19 * 4);
    const _: () = assert!(size_of::<super::PeerKey>() == 20);
    const _: () = assert!(size_of::<super::ConnStart>() == 16);
    const _: () = assert!(core::mem::offset_of!(super::PeerCache, counters) == 32);
    const _: () = assert!(size_of::<super::PeerCache>() == 20 + 3 * 4 + 8 + 7 * 8);
    const _: () = assert!(super::SockStateRecord::matches(
        &super::TracepointLayout::DEFAULT
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_entry_packs_both_protocols_independently() {
        let e = WatchEntry::default();
        assert_eq!(e.slot(Proto::Tcp), None);
        let e = e
            .with_slot(Proto::Tcp, Some(0))
            .with_slot(Proto::Udp, Some(4094));
        assert_eq!(e.slot(Proto::Tcp), Some(0));
        assert_eq!(e.slot(Proto::Udp), Some(4094));
        let e = e.with_slot(Proto::Tcp, None);
        assert_eq!(e.slot(Proto::Tcp), None);
        assert_eq!(e.slot(Proto::Udp), Some(4094));
        let e = e.with_slot(Proto::Udp, Some(MAX_SLOTS - 1));
        assert_eq!(e.slot(Proto::Udp), Some(MAX_SLOTS - 1));
        assert_eq!(e.with_slot(Proto::Udp, None), WatchEntry(0));
    }

    #[test]
    fn sockets_in_one_slab_spread_over_the_connection_sets() {
        // 1,000 sockets as a slab allocator lays them out: 2,304-byte objects in 32 KiB slabs
        // scattered over memory. In 16,384 sets of four none may overflow (an overflow costs a
        // duration).
        let sets = DEFAULT_TRACKED_CONNECTIONS / CONN_WAYS;
        let mut used = [0u8; (DEFAULT_TRACKED_CONNECTIONS / CONN_WAYS) as usize];
        for i in 0..1_000u64 {
            let slab = 0xffff_8880_0000_0000 + (i / 14).wrapping_mul(0x1_2345_8000) % (1 << 34);
            let sk = slab + (i % 14) * 2_304;
            let first = conn_set(sk, sets);
            assert_eq!(first % CONN_WAYS, 0);
            assert!(first < sets * CONN_WAYS);
            used[(first / CONN_WAYS) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n <= 4), "a set overflowed");
        assert!(
            used.iter().filter(|&&n| n > 1).count() < 100,
            "clustered sets"
        );
        // A table of one set, and a zero from an unset global, still index in range.
        assert_eq!(conn_set(0xffff_8880_1234_5678, 1), 0);
        assert_eq!(conn_set(0xffff_8880_1234_5678, 0), 0);
    }

    #[test]
    fn duration_bucket_is_bit_length_capped() {
        assert_eq!(duration_bucket(0), 0);
        assert_eq!(duration_bucket(1), 1);
        assert_eq!(duration_bucket(2), 2);
        assert_eq!(duration_bucket(3), 2);
        assert_eq!(duration_bucket(1023), 10);
        assert_eq!(duration_bucket(1024), 11);
        assert_eq!(duration_bucket(u64::MAX), DURATION_BUCKETS - 1);
    }

    #[test]
    fn established_states() {
        assert!(tcp_state::was_established(tcp_state::ESTABLISHED));
        assert!(tcp_state::was_established(tcp_state::LAST_ACK));
        assert!(!tcp_state::was_established(tcp_state::SYN_SENT));
        assert!(!tcp_state::was_established(tcp_state::SYN_RECV));
        assert!(!tcp_state::was_established(tcp_state::LISTEN));
        assert!(!tcp_state::was_established(tcp_state::TIME_WAIT));
    }
}
