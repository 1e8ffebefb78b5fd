//! The per-interval `Snapshot`: what the kernel, /proc and FRP said at one collection. Its
//! series ([`crate::metrics`]) and the API read it; nothing downstream touches the kernel or
//! /proc itself.
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use aya::maps::MapError;
use moonfrp_common::{Proto, TcpCounters, TrafficCounters};

use crate::{
    collect::{CollectorRun, SystemSample},
    ebpf::{ProbeStatus, ProgramStats},
    frp::{
        discovery::{ApiStats, Role},
        health::Health,
    },
    process::ProcessSample,
    tunnel::TunnelSpec,
    watch::WatchTable,
};

/// Everything known at the end of one collection.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// 1 for the first snapshot of this process, then +1 per interval.
    pub seq: u64,
    pub taken_at: SystemTime,
    /// How long building this snapshot took.
    pub build_duration: Duration,
    /// Sorted by tunnel name.
    pub tunnels: Vec<TunnelSample>,
    pub probes: Vec<ProbeStatus>,
    pub process: Option<ProcessSample>,
    /// FRP tunnels without a port of their own.
    pub portless: Vec<PortlessTunnel>,
    /// Host, FRP processes, services.
    pub system: SystemSample,
    pub agent: AgentSample,
}

/// The agent's own state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSample {
    pub slots_capacity: u32,
    pub slots_used: u32,
    /// Tunnels that want a slot and have none (all in use).
    pub unwatched: u32,
    /// Whether the last configuration (re)load was accepted.
    pub config_ok: bool,
    /// The config file changes keys that only a restart applies.
    pub restart_pending: bool,
    /// Whether the last change of the web config file loaded (true without one).
    pub web_config_ok: bool,
    /// How often each limit on outside input was reached since start ([`crate::untrusted::Limit`]).
    pub limits: Vec<(&'static str, u64)>,
    /// Failed collections since start, by source (`kernel`, `process`, `config`, `sockets`,
    /// `textfile`, and each host collector).
    pub errors: BTreeMap<&'static str, u64>,
    /// How each collector did this interval.
    pub collectors: Vec<CollectorRun>,
    /// Run-time statistics of each attached program (when kernel statistics are on).
    pub bpf: Vec<ProgramStats>,
    /// How long the kernel's statistics have been on (`None` when they are not kept): `bpf`
    /// grows only then (see [`crate::ebpf::stats`]).
    pub bpf_stats_on: Option<Duration>,
    /// Maps and their capacity (max entries).
    pub maps: Vec<(&'static str, u32)>,
}

/// One tunnel's counters (cumulative since its port started being watched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSample {
    pub spec: TunnelSpec,
    pub traffic: TrafficCounters,
    /// TCP tunnels only.
    pub tcp: Option<TcpSample>,
    pub meta: TunnelMeta,
    /// The busiest peers, when `kernel.export_peers` asks for them (else empty).
    pub peers: Vec<crate::ebpf::maps::Peer>,
}

/// What FRP says about a tunnel, and its health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelMeta {
    /// frp proxy type (`tcp`, `http`…), `transport`, `vhost`, or empty for explicit tunnels.
    pub kind: String,
    pub role: Option<Role>,
    /// FRP's own status word, when an API answered.
    pub frp_status: Option<String>,
    pub health: Health,
    /// up → down transitions seen.
    pub failures: u64,
    /// frps's own counters for the proxy.
    pub api: Option<ApiStats>,
    /// The latest reason the tunnel was down (kept after it recovers).
    pub last_error: Option<LastError>,
}

/// Why a tunnel was last down, and when that was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    pub reason: String,
    pub at: SystemTime,
}

/// A tunnel FRP knows that has no port of its own to count (http/https/tcpmux proxies share the
/// vhost port; P2P types have none; a client proxy whose service is on another machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortlessTunnel {
    pub name: String,
    pub meta: TunnelMeta,
}

/// Connection state of a TCP tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSample {
    pub counters: TcpCounters,
    /// Connections open now: those open when watching started, plus opened, minus closed.
    pub active: u64,
}

/// Where per-slot counters come from (the kernel maps, or a fake in tests and benches).
pub trait CounterSource {
    fn traffic(&self, slot: u32) -> Result<TrafficCounters, MapError>;
    fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError>;
    /// Every slot below `end` at once where the source can; `None`: read them one by one.
    fn all(&self, _end: u32) -> Option<Slots> {
        None
    }
}

/// The counters of slots `0..n`, by slot.
#[derive(Debug, Default)]
pub struct Slots {
    pub traffic: Vec<TrafficCounters>,
    pub tcp: Vec<TcpCounters>,
}

impl CounterSource for crate::ebpf::KernelMaps {
    fn traffic(&self, slot: u32) -> Result<TrafficCounters, MapError> {
        Self::traffic(self, slot)
    }

    fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError> {
        Self::tcp(self, slot)
    }

    fn all(&self, end: u32) -> Option<Slots> {
        Self::all(self, end)
    }
}

/// Reads every watched slot once. A slot that cannot be read is left out and counted in
/// `failures`; the others are still reported.
pub fn read_tunnels(
    source: &impl CounterSource,
    watch: &WatchTable,
    failures: &mut u64,
) -> Vec<TunnelSample> {
    let mut out = Vec::with_capacity(watch.len());
    // One read of every slot in use (slots are handed out from 0), else one per slot.
    let all = source
        .all(watch.iter().map(|w| w.slot + 1).max().unwrap_or(0))
        .unwrap_or_default();
    for w in watch.iter() {
        let slot = w.slot as usize;
        let traffic = match all
            .traffic
            .get(slot)
            .map_or_else(|| source.traffic(w.slot), |t| Ok(*t))
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(tunnel = %w.spec, error = %e, "cannot read traffic counters");
                *failures += 1;
                continue;
            }
        };
        let tcp = if w.spec.proto == Proto::Tcp {
            match all
                .tcp
                .get(slot)
                .map_or_else(|| source.tcp(w.slot), |c| Ok(*c))
            {
                Ok(c) => Some(TcpSample {
                    active: active(w.seed_active, &c),
                    counters: c,
                }),
                Err(e) => {
                    tracing::warn!(tunnel = %w.spec, error = %e, "cannot read TCP counters");
                    *failures += 1;
                    continue;
                }
            }
        } else {
            None
        };
        out.push(TunnelSample {
            spec: w.spec.clone(),
            traffic,
            tcp,
            meta: TunnelMeta::default(),
            peers: Vec::new(),
        });
    }
    out.sort_by(|a, b| {
        (&a.spec.name, a.spec.port, a.spec.proto).cmp(&(&b.spec.name, b.spec.port, b.spec.proto))
    });
    out
}

/// Open connections: seeded + opened − closed. Never negative: a connection seen closing that
/// was opened before the seed was read (a tiny race at start) must not wrap the gauge.
fn active(seed: u64, c: &TcpCounters) -> u64 {
    (seed + c.opened_passive + c.opened_active).saturating_sub(c.closed)
}

/// The latest snapshot (and the one before, for rates), shared between the collector and the
/// readers.
#[derive(Debug, Default)]
pub struct Latest(RwLock<Pair>);

/// The latest snapshot and the one before it.
type Pair = (Option<Arc<Snapshot>>, Option<Arc<Snapshot>>);

impl Latest {
    pub fn publish(&self, s: Snapshot) {
        self.publish_arc(Arc::new(s));
    }

    pub fn publish_arc(&self, s: Arc<Snapshot>) {
        let mut pair = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pair.1 = pair.0.replace(s);
    }

    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.pair().0
    }

    /// The latest snapshot and the one before it.
    pub fn pair(&self) -> Pair {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use moonfrp_common::WatchEntry;

    use super::*;
    use crate::{tunnel::TunnelSource, watch::WatchBackend};

    struct Fake;

    impl WatchBackend for Fake {
        fn set_entry(&mut self, _: u16, _: WatchEntry) -> Result<(), MapError> {
            Ok(())
        }
        fn reset_slot(&mut self, _: u32) -> Result<(), MapError> {
            Ok(())
        }
    }

    impl CounterSource for Fake {
        fn traffic(&self, slot: u32) -> Result<TrafficCounters, MapError> {
            if slot == 2 {
                return Err(MapError::KeyNotFound);
            }
            let mut t = TrafficCounters::default();
            t.dir[0].bytes = u64::from(slot) * 100;
            Ok(t)
        }
        fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError> {
            Ok(TcpCounters {
                opened_passive: 5,
                opened_active: 1,
                closed: 4 + u64::from(slot),
                ..TcpCounters::default()
            })
        }
    }

    #[test]
    fn reads_sorted_by_name_skips_failed_slots_and_computes_active() {
        let spec = |name: &str, port, proto| TunnelSpec {
            name: name.into(),
            port,
            proto,
            source: TunnelSource::Cli,
        };
        let mut w = WatchTable::new(8);
        let tunnels = [
            spec("zeta", 1000, Proto::Tcp),
            spec("alpha", 2000, Proto::Udp),
            spec("broken", 3000, Proto::Tcp),
        ];
        w.apply(&mut Fake, &tunnels, |_| HashMap::from([(1000, 3)]))
            .unwrap();
        let mut failures = 0;
        let got = read_tunnels(&Fake, &w, &mut failures);
        assert_eq!(failures, 1);
        let names: Vec<&str> = got.iter().map(|t| t.spec.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert!(got[0].tcp.is_none());
        assert_eq!(got[0].traffic.dir[0].bytes, 100);
        // zeta: slot 0, seed 3 + 6 opened − 4 closed.
        assert_eq!(got[1].tcp.as_ref().unwrap().active, 5);
    }

    #[test]
    fn active_never_wraps() {
        let c = TcpCounters {
            closed: 3,
            ..TcpCounters::default()
        };
        assert_eq!(active(1, &c), 0);
    }
}
