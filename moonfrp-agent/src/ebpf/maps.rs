//! Typed access to the kernel maps: the watch table (written) and the counters (read, summed
//! over CPUs).
use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuValues},
};
use moonfrp_common::{TcpCounters, TrafficCounters, WatchEntry, names};

use super::LoadError;

/// The maps the agent reads and writes every interval.
pub struct KernelMaps {
    watch: Array<MapData, u32>,
    traffic: PerCpuArray<MapData, TrafficCounters>,
    tcp: PerCpuArray<MapData, TcpCounters>,
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
        })
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

    fn reset_slot(&mut self, slot: u32) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
        let traffic = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])?;
        let tcp = PerCpuValues::try_from(vec![TcpCounters::default(); cpus])?;
        self.traffic.set(slot, traffic, 0)?;
        self.tcp.set(slot, tcp, 0)
    }
}
