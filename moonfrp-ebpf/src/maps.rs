//! Maps and load-time globals shared by every program.
use aya_ebpf::{
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray},
};
use moonfrp_common::{
    CONN_WAYS, ConnStart, DEFAULT_PEERS, DEFAULT_SLOTS, DEFAULT_TRACKED_CONNECTIONS, PeerCache,
    PeerCounters, PeerKey, Proto, TcpCounters, TracepointLayout, TrafficCounters, WATCH_ENTRIES,
    WatchEntry,
};

/// Local port → [`WatchEntry`]; written by the agent at run time.
#[map(name = "WATCH")]
pub static WATCH: Array<u32> = Array::with_max_entries(WATCH_ENTRIES, 0);

/// Per-slot traffic counters (the agent resizes this at load time).
#[map(name = "TRAFFIC")]
pub static TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(DEFAULT_SLOTS, 0);

/// Per-slot TCP connection and error counters (the agent resizes this at load time).
#[map(name = "TCP_STATS")]
pub static TCP_STATS: PerCpuArray<TcpCounters> = PerCpuArray::with_max_entries(DEFAULT_SLOTS, 0);

/// Open times of established connections on watched ports, in sets of [`CONN_WAYS`] entries (the
/// agent sizes it at load time: [`CONN_SETS`] sets).
#[map(name = "CONN_START")]
pub static CONN_START: Array<ConnStart> = Array::with_max_entries(DEFAULT_TRACKED_CONNECTIONS, 0);

/// How many sets [`CONN_START`] has. Set by the agent at load time.
#[unsafe(no_mangle)]
static CONN_SETS: u32 = DEFAULT_TRACKED_CONNECTIONS / CONN_WAYS;

/// The first entry of socket address `sk`'s set in [`CONN_START`].
#[inline(always)]
pub fn conn_set(sk: u64) -> u32 {
    // SAFETY: a plain static the loader rewrites before load; reading it is always valid.
    let sets = unsafe { core::ptr::read_volatile(&raw const CONN_SETS) };
    moonfrp_common::conn_set(sk, sets)
}

/// (watched port, remote address) → traffic; least recently used entries make room (the agent
/// sizes it at load time).
#[map(name = "PEERS")]
pub static PEERS: LruPerCpuHashMap<PeerKey, PeerCounters> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_PEERS, 0);

/// Per slot, this CPU's current peer, counted before PEERS (the agent resizes this at load time
/// with the other per-slot maps).
#[map(name = "PEER_CACHE")]
pub static PEER_CACHE: PerCpuArray<PeerCache> = PerCpuArray::with_max_entries(DEFAULT_SLOTS, 0);

/// 1: count peers in PEERS; 0: skip it (`kernel.peers = 0`). Set by the agent at load time.
#[unsafe(no_mangle)]
static PEER_TRACKING: u32 = 1;

/// Whether peers are counted; read volatile so the compiler cannot fold in the default.
#[inline(always)]
pub fn peer_tracking() -> bool {
    // SAFETY: a plain static the loader rewrites before load; reading it is always valid.
    unsafe { core::ptr::read_volatile(&raw const PEER_TRACKING) != 0 }
}

/// Tracepoint field offsets of the running kernel, set by the agent at load time.
#[unsafe(no_mangle)]
static LAYOUT: TracepointLayout = TracepointLayout::DEFAULT;

/// The tracepoint layout; read volatile so the compiler cannot fold in the compiled default.
#[inline(always)]
pub fn layout() -> TracepointLayout {
    // SAFETY: LAYOUT is a plain static the loader rewrites before load; reading it is always valid.
    unsafe { core::ptr::read_volatile(&raw const LAYOUT) }
}

/// The counter slot of a watched local port, if `proto` is watched on it.
#[inline(always)]
pub fn slot_of(port: u32, proto: Proto) -> Option<u32> {
    let entry = WATCH.get(port)?;
    WatchEntry(*entry).slot(proto)
}
