//! Criterion benches of the userspace hot paths at 1,000 tunnels: reading the kernel maps and
//! summing CPUs (needs root: the programs are loaded for real), building the snapshot, and
//! encoding `/metrics` in both formats; and the host collectors (read + parse). Run with `cargo bench -p moonfrp-agent`.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use aya::maps::MapError;
use criterion::{Criterion, criterion_group, criterion_main};
use moonfrp_agent::{
    collect::{self, CollectOptions, Collectors},
    config::{KernelConfig, TunnelSource, TunnelSpec},
    ebpf, metrics,
    snapshot::{AgentSample, CounterSource, Latest, Snapshot, read_tunnels},
    sys,
    watch::{WatchBackend, WatchTable},
};
use moonfrp_common::{Proto, TcpCounters, TrafficCounters, WatchEntry};

const TUNNELS: u16 = 1_000;

fn specs() -> Vec<TunnelSpec> {
    (0..TUNNELS)
        .map(|i| TunnelSpec {
            name: format!("tunnel-{i}"),
            port: 20_000 + i,
            proto: if i % 10 == 0 { Proto::Udp } else { Proto::Tcp },
            source: TunnelSource::ConfigFile,
        })
        .collect()
}

/// Counters without a kernel: isolates the snapshot's own cost.
struct Synthetic;

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
        let mut t = TrafficCounters::default();
        t.dir[0].bytes = u64::from(slot) * 1_000_003;
        t.dir[1].payload_bytes = u64::from(slot) * 7;
        Ok(t)
    }
    fn tcp(&self, slot: u32) -> Result<TcpCounters, MapError> {
        let mut c = TcpCounters {
            opened_passive: u64::from(slot),
            closed: u64::from(slot) / 2,
            ..TcpCounters::default()
        };
        c.duration_buckets[10] = u64::from(slot);
        Ok(c)
    }
}

fn snapshot_of(source: &impl CounterSource, watch: &WatchTable) -> Snapshot {
    let mut failures = 0;
    Snapshot {
        seq: 1,
        taken_at: SystemTime::now(),
        build_duration: std::time::Duration::ZERO,
        tunnels: read_tunnels(source, watch, &mut failures),
        probes: Vec::new(),
        process: None,
        portless: Vec::new(),
        system: collect::SystemSample::default(),
        agent: AgentSample {
            slots_capacity: 4096,
            slots_used: u32::from(TUNNELS),
            config_ok: true,
            ..AgentSample::default()
        },
    }
}

fn userspace(c: &mut Criterion) {
    let mut watch = WatchTable::new(4096);
    watch
        .apply(&mut Synthetic, &specs(), |_| HashMap::new())
        .unwrap();
    c.bench_function(
        "snapshot: assemble 1000 tunnels (synthetic counters)",
        |b| b.iter(|| snapshot_of(&Synthetic, &watch)),
    );

    let latest = Arc::new(Latest::default());
    latest.publish(snapshot_of(&Synthetic, &watch));
    let registry = metrics::registry(latest);
    c.bench_function("encode: OpenMetrics, 1000 tunnels", |b| {
        b.iter(|| metrics::encode_openmetrics(&registry));
    });
    let om = metrics::encode_openmetrics(&registry);
    c.bench_function("encode: OpenMetrics to text 0.0.4, 1000 tunnels", |b| {
        b.iter(|| metrics::openmetrics_to_text(&om));
    });
}

fn host(c: &mut Criterion) {
    let mut collectors = Collectors::new(&CollectOptions::default());
    c.bench_function("collect: every host collector on this machine", |b| {
        b.iter(|| collectors.collect(&mut BTreeMap::new()));
    });
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap();
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    c.bench_function("parse: /proc/stat, /proc/net/dev, snmp + netstat", |b| {
        b.iter(|| {
            (
                collect::cpu::parse(&stat, 100).unwrap(),
                collect::netdev::parse(&dev).unwrap(),
                collect::netstat::parse(&snmp, &netstat).unwrap(),
            )
        });
    });
}

fn kernel_maps(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the kernel map bench: it loads the programs and needs root");
        return;
    }
    let mounts = sys::current_mounts().unwrap();
    let tracefs = sys::ensure_tracefs(&mounts).unwrap();
    let mut kernel = ebpf::load(
        &KernelConfig::default(),
        &tracefs,
        &sys::cgroup2_root(&mounts).unwrap(),
    )
    .unwrap();
    let mut watch = WatchTable::new(kernel.maps.slots());
    watch
        .apply(&mut kernel.maps, &specs(), |_| HashMap::new())
        .unwrap();
    c.bench_function("kernel: read + sum CPUs, 1000 tunnels", |b| {
        b.iter(|| snapshot_of(&kernel.maps, &watch));
    });
}

criterion_group!(benches, userspace, host, kernel_maps);
criterion_main!(benches);
