//! Typed access to the kernel maps: the watch table (written) and the counters (read, summed
//! over CPUs).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
    },
};

use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use moonfrp_common::{
    PeerCache, PeerCounters, PeerKey, Proto, TcpCounters, TrafficCounters, WatchEntry, names,
};

use super::{LoadError, syscall::percpu_array_batch};
use crate::snapshot::Slots;

/// The maps the agent reads and writes every interval.
pub struct KernelMaps {
    watch: Array<MapData, u32>,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    tcp: PerCpuArray<MapData, TcpCounters>,
    /// Batch reads still worth trying (cleared, with a warning, when the kernel refuses one).
    batch: AtomicBool,
    /// Read on request only (the API), never per interval.
    pub peers: Arc<PeerTable>,
}

/// The kernel's (watched port, remote address) table and the per-slot peer caches in front of
/// it (see [`PeerCache`]): a peer's traffic is its table entry plus the cache entries holding
/// it.
pub struct PeerTable {
    maps: Mutex<PeerMaps>,
    /// Slots below this have been in use (the highest `end` of [`KernelMaps::all`]): only their
    /// caches can hold anything.
    slots_used: AtomicU32,
}

struct PeerMaps {
    table: PerCpuHashMap<MapData, PeerKey, PeerCounters>,
    cache: PerCpuArray<MapData, PeerCache>,
}

/// One remote address of one watched port, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub counters: PeerCounters,
}

impl Peer {
    fn total(&self) -> u64 {
        self.counters.dir[0].bytes + self.counters.dir[1].bytes
    }
}

/// Reads of one slot's cache and table entries that the program's flushes did not cut through,
/// before the last read is taken as it is.
const CONSISTENT_READ_TRIES: usize = 16;

/// The flush sequence counts of one slot's per-CPU cache entries, if none was mid-flush.
fn sequence(entries: &[PeerCache]) -> Option<Vec<u64>> {
    entries
        .iter()
        .map(|e| e.flushes.is_multiple_of(2).then_some(e.flushes))
        .collect()
}

fn fold(values: &PerCpuValues<PeerCounters>) -> PeerCounters {
    values
        .iter()
        .fold(PeerCounters::default(), PeerCounters::merged)
}

impl PeerMaps {
    /// Every CPU's cache entry of slots `0..end`, slot-major; one system call where the kernel
    /// has batch reads.
    fn caches(&self, end: u32, cpus: usize) -> Vec<PeerCache> {
        if end == 0 {
            return Vec::new();
        }
        if let Ok(v) = percpu_array_batch::<PeerCache>(self.cache.map().fd().as_fd(), end, cpus) {
            return v;
        }
        (0..end)
            .flat_map(|slot| match self.cache.get(&slot, 0) {
                Ok(v) => v.iter().copied().collect::<Vec<_>>(),
                Err(_) => vec![PeerCache::default(); cpus],
            })
            .collect()
    }

    /// A consistent reading of one slot: the current table values of `keys` and of the keys its
    /// cache holds, and the cache entries, with no flush from this slot's entries in between
    /// (the sequence counts the same and even before and after).
    fn slot(
        &self,
        slot: u32,
        keys: &[PeerKey],
    ) -> (Vec<(PeerKey, Option<PeerCounters>)>, Vec<PeerCache>) {
        let read = |slot| {
            self.cache
                .get(&slot, 0)
                .map(|v| v.iter().copied().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut last = (Vec::new(), Vec::new());
        for _ in 0..CONSISTENT_READ_TRIES {
            let before = read(slot);
            let mut all: Vec<PeerKey> = keys.to_vec();
            for e in &before {
                if e.key.family != 0 && !all.contains(&e.key) {
                    all.push(e.key);
                }
            }
            let bases = all
                .into_iter()
                .map(|k| (k, self.table.get(&k, 0).ok().map(|v| fold(&v))))
                .collect();
            let after = read(slot);
            let same = sequence(&before).is_some_and(|b| Some(b) == sequence(&after));
            last = (bases, after);
            if same {
                break;
            }
        }
        last
    }
}

impl PeerTable {
    /// Every peer's traffic: the table's entries, and for the keys a cache holds (or held when
    /// the read began) the table entry read again with that slot's cache entries added. How
    /// many entries the table holds now.
    ///
    /// A program moves a cache entry's counters into the table while this reads; without the
    /// second, per-slot reading a moved amount could be missed (in neither place as read) and a
    /// peer's bytes go backwards between two reads. The sequence counts are read around it; the
    /// program's stores are seen in order on x86-64 (TSO).
    fn totals(&self) -> (HashMap<PeerKey, PeerCounters>, usize) {
        let maps = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
        let end = self.slots_used.load(Relaxed).min(maps.cache.len());
        let held = maps.caches(end, cpus);
        let mut totals = HashMap::new();
        let mut entries = 0;
        for item in &maps.table {
            // An entry evicted between the key walk and its lookup is simply gone.
            let Ok((key, values)) = item else { continue };
            entries += 1;
            totals.insert(key, fold(&values));
        }
        let mut cached = Vec::new();
        for (slot, entries) in (0..end).zip(held.chunks(cpus)) {
            let keys: Vec<PeerKey> = entries
                .iter()
                .filter(|e| e.key.family != 0)
                .map(|e| e.key)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let (bases, now) = maps.slot(slot, &keys);
            for (key, base) in bases {
                match base {
                    Some(v) => totals.insert(key, v),
                    None => totals.remove(&key),
                };
            }
            cached.extend(now.into_iter().filter(|e| e.key.family != 0));
        }
        for e in cached {
            let t = totals.entry(e.key).or_default();
            *t = t.merged(&e.counters);
        }
        totals.retain(|_, c| *c != PeerCounters::default());
        (totals, entries)
    }

    /// Every entry's peers grouped by (port, protocol number), most bytes first, and how many
    /// entries the table holds now.
    fn grouped(&self) -> (HashMap<(u16, u8), Vec<Peer>>, usize) {
        let (totals, entries) = self.totals();
        let mut out: HashMap<(u16, u8), Vec<Peer>> = HashMap::new();
        for (key, counters) in totals {
            let address = if key.family == 4 {
                IpAddr::V4(Ipv4Addr::new(
                    key.addr[0],
                    key.addr[1],
                    key.addr[2],
                    key.addr[3],
                ))
            } else {
                IpAddr::V6(Ipv6Addr::from(key.addr))
            };
            out.entry((key.port, key.proto))
                .or_default()
                .push(Peer { address, counters });
        }
        for peers in out.values_mut() {
            peers.sort_by(|a, b| b.total().cmp(&a.total()).then(a.address.cmp(&b.address)));
        }
        (out, entries)
    }

    /// The peers of (`port`, `proto`), most bytes first, and how many entries the whole table
    /// holds now.
    pub fn of(&self, port: u16, proto: Proto) -> (Vec<Peer>, usize) {
        let (mut all, entries) = self.grouped();
        (
            all.remove(&(port, proto as u8)).unwrap_or_default(),
            entries,
        )
    }

    /// The `n` busiest peers of every (port, protocol).
    pub fn top(&self, n: usize) -> HashMap<(u16, u8), Vec<Peer>> {
        let (mut all, _) = self.grouped();
        for peers in all.values_mut() {
            peers.truncate(n);
        }
        all
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| LoadError::Map(name, "not in the object".into()))?;
    T::try_from(map).map_err(|e| LoadError::Map(name, e.to_string()))
}

impl KernelMaps {
    /// Takes ownership of the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            watch: take(ebpf, names::WATCH)?,
            traffic: take(ebpf, names::TRAFFIC)?,
            tcp: take(ebpf, names::TCP_STATS)?,
            batch: AtomicBool::new(true),
            peers: Arc::new(PeerTable {
                maps: Mutex::new(PeerMaps {
                    table: take(ebpf, names::PEERS)?,
                    cache: take(ebpf, names::PEER_CACHE)?,
                }),
                slots_used: AtomicU32::new(0),
            }),
        })
    }

    /// Every port with a watch entry (the table a previous agent left in pinned maps).
    pub fn watched(&self) -> Vec<(u16, WatchEntry)> {
        (0..moonfrp_common::WATCH_ENTRIES)
            .filter_map(|port| {
                let entry = self.watch.get(&port, 0).ok()?;
                (entry != 0).then_some((port as u16, WatchEntry(entry)))
            })
            .collect()
    }

    /// Number of counter slots the maps were created with.
    pub fn slots(&self) -> u32 {
        self.traffic.len()
    }

    /// Traffic counters of `slot`, summed over CPUs.
    pub fn traffic(&self, slot: u32) -> Result<TrafficCounters, MapError> {
        let per_cpu = self.traffic.get(&slot, 0)?;
        Ok(per_cpu
            .iter()
            .fold(TrafficCounters::default(), TrafficCounters::merged))
    }

    /// Traffic and TCP counters of every slot below `end`, summed over CPUs: one system call per
    /// map. `None` when the kernel refuses batch reads (warned once): read slot by slot then.
    pub fn all(&self, end: u32) -> Option<Slots> {
        self.peers.slots_used.fetch_max(end, Relaxed);
        if !self.batch.load(Relaxed) {
            return None;
        }
        let read = || -> std::io::Result<Slots> {
            if end == 0 {
                return Ok(Slots::default());
            }
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            let traffic =
                percpu_array_batch::<TrafficCounters>(self.traffic.map().fd().as_fd(), end, cpus)?;
            let tcp = percpu_array_batch::<TcpCounters>(self.tcp.map().fd().as_fd(), end, cpus)?;
            Ok(Slots {
                traffic: traffic
                    .chunks(cpus)
                    .map(|c| {
                        c.iter()
                            .fold(TrafficCounters::default(), TrafficCounters::merged)
                    })
                    .collect(),
                tcp: tcp
                    .chunks(cpus)
                    .map(|c| c.iter().fold(TcpCounters::default(), TcpCounters::merged))
                    .collect(),
            })
        };
        match read() {
            Ok(slots) => Some(slots),
            Err(e) => {
                self.batch.store(false, Relaxed);
                tracing::warn!(error = %e, "the kernel refused a batch read of the counters (BPF_MAP_LOOKUP_BATCH, Linux 5.6+): reading them one slot at a time from now on");
                None
            }
        }
    }

    /// TCP counters of `slot`, summed over CPUs.
    pub fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError> {
        let per_cpu = self.tcp.get(&slot, 0)?;
        Ok(per_cpu
            .iter()
            .fold(TcpCounters::default(), TcpCounters::merged))
    }
}

impl crate::watch::WatchBackend for KernelMaps {
    fn set_entry(&mut self, port: u16, entry: WatchEntry) -> Result<(), MapError> {
        self.watch.set(u32::from(port), entry.0, 0)
    }

    fn opened_closed(&self, slot: u32) -> (u64, u64) {
        self.tcp(slot)
            .map(|c| (c.opened_passive + c.opened_active, c.closed))
            .unwrap_or_default()
    }

    fn reset_slot(&mut self, slot: u32) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
        let traffic = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])?;
        let tcp = PerCpuValues::try_from(vec![TcpCounters::default(); cpus])?;
        self.traffic.set(slot, traffic, 0)?;
        self.tcp.set(slot, tcp, 0)
    }
}
