//! Criterion benches of the userspace hot paths at 1,000 tunnels: reading the kernel maps and
//! summing CPUs (needs root: the programs are loaded for real), building the snapshot and its
//! series, rendering `/metrics` in both formats (and gzip); and the host collectors (read +
//! parse). Run with `cargo bench -p moonfrp-agent`.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use criterion::{Criterion, criterion_group, criterion_main};
use moonfrp_agent::{
    alert_engine,
    collect::{self, CollectOptions, Collectors},
    ebpf,
    ebpf::KernelConfig,
    exposition::{self, Format},
    metrics,
    snapshot::{CounterSource, Snapshot},
    synthetic::{self, Synthetic},
    sys,
    watch::WatchTable,
};

const TUNNELS: u16 = 1_000;

fn snapshot_of(source: &impl CounterSource, watch: &WatchTable) -> Snapshot {
    synthetic::snapshot(
        source,
        watch,
        collect::SystemSample::default(),
        SystemTime::now(),
        1,
    )
}

fn userspace(c: &mut Criterion) {
    let mut watch = WatchTable::new(4096);
    watch
        .apply(
            &mut Synthetic::default(),
            &synthetic::specs(TUNNELS, 20_000),
            |_| HashMap::new(),
        )
        .unwrap();
    c.bench_function(
        "snapshot: assemble 1000 tunnels (synthetic counters)",
        |b| b.iter(|| snapshot_of(&Synthetic::default(), &watch)),
    );

    let snap = snapshot_of(&Synthetic::default(), &watch);
    let extras = metrics::Extras::default();
    let settings = metrics::Settings::default();
    c.bench_function("series: build from the snapshot, 1000 tunnels", |b| {
        b.iter(|| metrics::series(Some(&snap), &extras, &settings));
    });
    let mut snap = snap;
    for t in &mut snap.tunnels {
        t.meta.health.up = true;
    }
    let series = metrics::series(Some(&snap), &extras, &settings);
    // The same snapshot each interval: counters stand still and every tunnel is up, as on a
    // healthy host (nothing pending or firing).
    let mut engine = alert_engine::Engine::new(alert_engine::builtin(), 4 * 3_600_000, 0);
    let mut now = 0;
    let quiet = engine.evaluate(now, &series);
    assert!(
        quiet.active.is_empty(),
        "a healthy snapshot: {:?}",
        quiet.active.first()
    );
    c.bench_function("alerts: evaluate the built-in rules, 1000 tunnels", |b| {
        b.iter(|| {
            now += 1_000;
            engine.evaluate(now, &series)
        });
    });
    c.bench_function("render: OpenMetrics, 1000 tunnels", |b| {
        b.iter(|| exposition::render(&series, Format::OpenMetrics));
    });
    c.bench_function("render: text 0.0.4, 1000 tunnels", |b| {
        b.iter(|| exposition::render(&series, Format::Text004));
    });
    c.bench_function(
        "render: OpenMetrics + gzip, 1000 tunnels (first rendering: one stream)",
        |b| {
            b.iter(|| {
                exposition::Published::new(Arc::new(series.clone()))
                    .bytes(Format::OpenMetrics, true)
            });
        },
    );
    gzip_after_a_previous_snapshot(c, &snap, &extras, &settings);
    c.bench_function("gzip: OpenMetrics rendering, 1000 tunnels", |b| {
        let raw = exposition::render(&series, Format::OpenMetrics);
        b.iter(|| exposition::compress(raw.as_bytes()));
    });
    c.bench_function("render: text 0.0.4 + gzip, 1000 tunnels", |b| {
        b.iter(|| {
            exposition::Published::new(Arc::new(series.clone())).bytes(Format::Text004, true)
        });
    });
}

/// Renderings as the agent makes them for Prometheus, after the previous snapshot's.
fn gzip_after_a_previous_snapshot(
    c: &mut Criterion,
    snap: &Snapshot,
    extras: &metrics::Extras,
    settings: &metrics::Settings,
) {
    // As the agent renders for Prometheus, after the previous snapshot's rendering: whose runs
    // are taken where nothing changed (an idle host), or where every tunnel moved (each
    // snapshot alternates between two sets of values; too few runs to take: one stream). Each
    // set is built on its own, as each snapshot's are: equal label sets, other allocations.
    let current = exposition::Current::default();
    let same = [(); 2].map(|()| Arc::new(metrics::series(Some(snap), extras, settings)));
    // A connection opened and closed on every tunnel: traffic, connections and the duration
    // histogram move.
    let mut busy = snap.clone();
    for t in &mut busy.tunnels {
        for d in &mut t.traffic.dir {
            d.bytes += 1_500;
            d.payload_bytes += 1_000;
            d.packets += 1;
        }
        if let Some(tcp) = &mut t.tcp {
            tcp.counters.opened_passive += 1;
            tcp.counters.closed += 1;
            tcp.counters.duration_sum_ns += 5_000_000;
            tcp.counters.duration_buckets[3] += 1;
        }
    }
    let moved = [
        same[0].clone(),
        Arc::new(metrics::series(Some(&busy), extras, settings)),
    ];
    for (what, pair) in [
        ("with the same values (runs taken)", same),
        ("where every tunnel moved (one stream)", moved),
    ] {
        let mut turn = 0;
        c.bench_function(
            &format!("render: OpenMetrics + gzip, 1000 tunnels, after a snapshot {what}"),
            |b| {
                b.iter(|| {
                    turn ^= 1;
                    current
                        .publish(pair[turn].clone())
                        .bytes(Format::OpenMetrics, true)
                });
            },
        );
    }
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
        None,
    )
    .unwrap();
    let mut watch = WatchTable::new(kernel.maps.slots());
    watch
        .apply(&mut kernel.maps, &synthetic::specs(TUNNELS, 20_000), |_| {
            HashMap::new()
        })
        .unwrap();
    c.bench_function("kernel: read + sum CPUs, 1000 tunnels", |b| {
        b.iter(|| snapshot_of(&kernel.maps, &watch));
    });
}

criterion_group!(benches, userspace, host, kernel_maps);
criterion_main!(benches);
