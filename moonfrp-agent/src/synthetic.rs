//! Synthetic tunnels and counters for benchmarks: every tunnel busy, every traffic counter moving
//! each round, connections opening and closing. No kernel involved.
use std::time::{Duration, SystemTime};

use aya::maps::MapError;
use moonfrp_common::{DURATION_BUCKETS, Proto, TcpCounters, TrafficCounters, WatchEntry};

use crate::{
    collect::SystemSample,
    snapshot::{AgentSample, CounterSource, Snapshot, read_tunnels},
    tunnel::{TunnelSource, TunnelSpec},
    watch::{WatchBackend, WatchTable},
};

/// `n` tunnels named `tunnel-<i>` on ports `base_port + i`, one in ten UDP.
pub fn specs(n: u16, base_port: u16) -> Vec<TunnelSpec> {
    (0..n)
        .map(|i| TunnelSpec {
            name: format!("tunnel-{i}"),
            port: base_port + i,
            proto: if i % 10 == 0 { Proto::Udp } else { Proto::Tcp },
            source: TunnelSource::ConfigFile,
        })
        .collect()
}

/// Counters as of round `round` (one round per interval).
#[derive(Clone, Copy, Debug, Default)]
pub struct Synthetic {
    pub round: u64,
}

impl WatchBackend for Synthetic {
    fn set_entry(&mut self, _: u16, _: WatchEntry) -> Result<(), MapError> {
        Ok(())
    }
    fn reset_slot(&mut self, _: u32) -> Result<(), MapError> {
        Ok(())
    }
}

impl CounterSource for Synthetic {
    fn traffic(&self, slot: u32) -> Result<TrafficCounters, MapError> {
        let (s, r) = (u64::from(slot), self.round + 1);
        let mut t = TrafficCounters::default();
        for (i, d) in t.dir.iter_mut().enumerate() {
            let per_round = 1_000_003 * (s % 17 + 1) / (i as u64 + 1);
            d.bytes = per_round * r;
            d.payload_bytes = per_round * r * 9 / 10;
            d.packets = per_round * r / 1_400 + 1;
        }
        Ok(t)
    }

    fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError> {
        let (s, r) = (u64::from(slot), self.round + 1);
        let mut c = TcpCounters {
            opened_passive: r * (s % 5 + 1),
            closed: r * (s % 5 + 1) - 1,
            retransmits: r / 7,
            ..TcpCounters::default()
        };
        c.duration_buckets[usize::try_from(s).unwrap_or(0) % DURATION_BUCKETS] = c.closed;
        Ok(c)
    }
}

/// A snapshot of the watched tunnels with the given host sample, taken at `taken_at`.
pub fn snapshot(
    source: &impl CounterSource,
    watch: &WatchTable,
    system: SystemSample,
    taken_at: SystemTime,
    seq: u64,
) -> Snapshot {
    let mut failures = 0;
    Snapshot {
        seq,
        taken_at,
        build_duration: Duration::from_millis(3),
        tunnels: read_tunnels(source, watch, &mut failures),
        probes: Vec::new(),
        process: None,
        portless: Vec::new(),
        system,
        agent: AgentSample {
            slots_capacity: watch.capacity(),
            slots_used: u32::try_from(watch.len()).unwrap_or(u32::MAX),
            config_ok: true,
            web_config_ok: true,
            ..AgentSample::default()
        },
    }
}
