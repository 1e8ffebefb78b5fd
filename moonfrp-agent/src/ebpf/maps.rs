//! Typed access to the kernel maps: the watch table (written) and the counters (read, summed
//! over CPUs).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use moonfrp_common::{
    PeerCounters, PeerKey, Proto, TcpCounters, TrafficCounters, WatchEntry, names,
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

/// The kernel's (watched port, remote address) table.
pub struct PeerTable(Mutex<PerCpuHashMap<MapData, PeerKey, PeerCounters>>);

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

impl PeerTable {
    /// Every entry's peers grouped by (port, protocol number), most bytes first, and how many
    /// entries the table holds now. One pass over the table.
    fn grouped(&self) -> (HashMap<(u16, u8), Vec<Peer>>, usize) {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: HashMap<(u16, u8), Vec<Peer>> = HashMap::new();
        let mut entries = 0;
        for item in map.iter() {
            // An entry evicted between the key walk and its lookup is simply gone.
            let Ok((key, values)) = item else { continue };
            entries += 1;
            let counters = values
                .iter()
                .fold(PeerCounters::default(), PeerCounters::merged);
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
            peers: Arc::new(PeerTable(Mutex::new(take(ebpf, names::PEERS)?))),
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
