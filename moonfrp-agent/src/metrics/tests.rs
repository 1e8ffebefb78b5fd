use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use moonfrp_common::{DURATION_BUCKETS, EGRESS, INGRESS, Proto, TcpCounters, TrafficCounters};

use super::{tunnels::duration_buckets, *};
use crate::{
    collect::{CollectorRun, SystemSample, cgroups},
    ebpf::{ProbeStatus, ProgramStats},
    exposition::{Format, render},
    frp::{
        discovery::{ApiStats, Role},
        health::Health,
    },
    process::ProcessSample,
    snapshot::{AgentSample, PortlessTunnel, Snapshot, TcpSample, TunnelMeta, TunnelSample},
    tunnel::{TunnelSource, TunnelSpec},
};

#[expect(clippy::too_many_lines, reason = "one literal of every field")]
fn sample_snapshot() -> Snapshot {
    let mut traffic = TrafficCounters::default();
    traffic.dir[INGRESS].bytes = 1_052;
    traffic.dir[INGRESS].payload_bytes = 1_000;
    traffic.dir[INGRESS].packets = 1;
    traffic.dir[EGRESS].bytes = 52;
    traffic.dir[EGRESS].packets = 1;
    let mut buckets = [0; DURATION_BUCKETS];
    buckets[0] = 2; // < 1 ms
    buckets[3] = 1; // 4..8 ms
    buckets[DURATION_BUCKETS - 1] = 1; // days
    let tcp = TcpCounters {
        opened_passive: 4,
        opened_active: 1,
        closed: 4,
        refused: 2,
        resets_sent: 1,
        resets_received: 3,
        retransmits: 7,
        duration_sum_ns: 1_500_000_000,
        duration_buckets: buckets,
    };
    Snapshot {
        seq: 3,
        taken_at: UNIX_EPOCH + Duration::from_hours(500_000),
        build_duration: Duration::from_micros(250),
        tunnels: vec![
            TunnelSample {
                spec: TunnelSpec {
                    name: "dns".into(),
                    port: 5353,
                    proto: Proto::Udp,
                    source: TunnelSource::Cli,
                },
                traffic,
                tcp: None,
                peers: Vec::new(),
                meta: TunnelMeta {
                    health: Health {
                        up: true,
                        reason: String::new(),
                    },
                    ..TunnelMeta::default()
                },
            },
            TunnelSample {
                spec: TunnelSpec {
                    name: "ssh \"home\"".into(),
                    port: 6000,
                    proto: Proto::Tcp,
                    source: TunnelSource::ConfigFile,
                },
                traffic,
                tcp: Some(TcpSample {
                    counters: tcp,
                    active: 2,
                }),
                peers: Vec::new(),
                meta: TunnelMeta {
                    kind: "tcp".into(),
                    role: Some(Role::Server),
                    frp_status: Some("offline".into()),
                    health: Health {
                        up: false,
                        reason: "frp: offline".into(),
                    },
                    failures: 1,
                    api: Some(ApiStats {
                        today_traffic_in: 100,
                        today_traffic_out: 200,
                        cur_conns: 0,
                    }),
                    last_error: Some(crate::snapshot::LastError {
                        reason: "frp: offline".into(),
                        at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                    }),
                },
            },
        ],
        portless: vec![PortlessTunnel {
            name: "home.web".into(),
            meta: TunnelMeta {
                kind: "http".into(),
                role: Some(Role::Server),
                frp_status: Some("online".into()),
                health: Health {
                    up: true,
                    reason: String::new(),
                },
                failures: 0,
                api: Some(ApiStats {
                    today_traffic_in: 5,
                    today_traffic_out: 6,
                    cur_conns: 1,
                }),
                last_error: None,
            },
        }],
        probes: vec![
            ProbeStatus {
                probe: "traffic_ingress",
                attached: true,
                reason: None,
            },
            ProbeStatus {
                probe: "tcp_send_reset",
                attached: false,
                reason: Some("test".into()),
            },
        ],
        process: Some(ProcessSample {
            cpu_seconds: 1.25,
            resident_bytes: 10_485_760,
            virtual_bytes: 104_857_600,
            open_fds: 12,
            max_fds: Some(1024),
            start_time_seconds: 1_799_999_000.5,
            threads: 3,
        }),
        system: sample_system(),
        agent: AgentSample {
            slots_capacity: 4096,
            slots_used: 2,
            unwatched: 1,
            config_ok: true,
            web_config_ok: true,
            restart_pending: true,
            limits: vec![("name_length", 3), ("http_requests", 0)],
            errors: BTreeMap::from([("kernel", 1)]),
            collectors: vec![
                CollectorRun {
                    name: "kernel",
                    duration: Duration::from_micros(900),
                    ok: true,
                },
                CollectorRun {
                    name: "disk",
                    duration: Duration::from_micros(40),
                    ok: false,
                },
            ],
            bpf: vec![ProgramStats {
                probe: "traffic_ingress",
                run_time: Duration::from_millis(3),
                run_count: 20_000,
            }],
            bpf_stats_on: Some(Duration::from_secs(4)),
            maps: vec![("WATCH", 65_536), ("TRAFFIC", 4096)],
        },
    }
}

/// A host sample with one of everything, and a process that was seen and is gone.
fn sample_system() -> SystemSample {
    use crate::collect::{
        cpu, disk, filesystem, host, memory, netdev, netstat, processes, systemd,
    };
    let running = processes::ProcStats {
        cpu_seconds: 2.5,
        resident_bytes: 20_971_520,
        threads: 8,
        open_fds: 15,
        start_time_seconds: 1_799_990_000.0,
    };
    SystemSample {
        cpu: Some(cpu::CpuSample {
            seconds: BTreeMap::from([("idle", 900.0), ("user", 80.5), ("system", 19.5)]),
            cpus: 2,
            boot_time: 1_799_000_000,
            usage_ratio: Some(0.25),
        }),
        memory: Some(memory::MemorySample {
            total: 4096,
            available: 3072,
            free: 1024,
            used: 1024,
            buffers: 512,
            cached: 1536,
            swap_total: 0,
            swap_free: 0,
        }),
        host: Some(host::HostSample {
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            uptime_seconds: 1000.0,
            open_fds: 300,
            max_fds: 1_000_000,
        }),
        netdev: Some(vec![netdev::NetDev {
            name: "eth0.100".into(),
            rx_bytes: 1000,
            tx_bytes: 2000,
            rx_packets: 10,
            tx_packets: 20,
            ..netdev::NetDev::default()
        }]),
        disks: Some(vec![disk::Disk {
            name: "vda".into(),
            reads: 3,
            writes: 4,
            read_bytes: 1536,
            written_bytes: 2048,
            read_seconds: 0.5,
            write_seconds: 0.25,
            io_seconds: 0.75,
        }]),
        filesystems: Some(vec![filesystem::Filesystem {
            mount: filesystem::Mount {
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                device: "/dev/vda".into(),
            },
            size_bytes: 10_000,
            avail_bytes: 4_000,
            used_bytes: 5_000,
        }]),
        tcp: Some(netstat::HostTcp {
            retrans_segs: 5,
            out_rsts: 6,
            curr_estab: 7,
            listen_overflows: 1,
            listen_drops: 2,
            active_opens: 100,
            passive_opens: 200,
        }),
        processes: Some(vec![
            processes::FrpProcess {
                process: "frpc".into(),
                config: String::new(),
                running: 0,
                restarts: 0,
                stats: None,
            },
            processes::FrpProcess {
                process: "frps".into(),
                config: "/etc/frp/frps.toml".into(),
                running: 1,
                restarts: 2,
                stats: Some(running),
            },
        ]),
        services: Some(systemd::Services {
            units: vec![systemd::Unit {
                name: "moonfrp-server.service".into(),
                active_state: "failed".into(),
                sub_state: "failed".into(),
                restarts: 3,
            }],
        }),
        cgroups: Some(sample_cgroups()),
    }
}

fn sample_cgroups() -> cgroups::CgroupSample {
    cgroups::CgroupSample {
        units: vec![cgroups::Group {
            name: "moonfrp-server.service".into(),
            id: String::new(),
            stats: cgroups::stats::Stats {
                cpu_user_seconds: Some(12.5),
                cpu_system_seconds: Some(2.25),
                memory_bytes: Some(25 << 20),
                memory_peak_bytes: Some(40 << 20),
                memory_waiting_seconds: Some(0.5),
                memory_stalled_seconds: Some(0.25),
                io_read_bytes: Some(4096),
                io_write_bytes: Some(8192),
                pids: Some(9),
                oom_kills: Some(0),
            },
        }],
        containers: vec![cgroups::Group {
            name: "frps-box".into(),
            id: "4f3e2d1c0b0a".into(),
            stats: cgroups::stats::Stats {
                cpu_user_seconds: Some(1.0),
                cpu_system_seconds: Some(0.5),
                memory_bytes: Some(10 << 20),
                memory_peak_bytes: Some(12 << 20),
                memory_waiting_seconds: Some(0.0),
                memory_stalled_seconds: Some(0.0),
                io_read_bytes: Some(0),
                io_write_bytes: Some(512),
                pids: Some(3),
                oom_kills: Some(1),
            },
        }],
        containers_found: 1,
    }
}

fn encoded(s: Option<&Snapshot>, format: Format) -> String {
    render(&series(s, &Extras::default(), &Settings::default()), format)
}

/// Compares with a golden file; `MOONFRP_UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/exposition")
        .join(name);
    if std::env::var_os("MOONFRP_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == got,
        "{name} differs from the golden file; rerun with MOONFRP_UPDATE_GOLDEN=1 and review the diff\n--- got:\n{got}"
    );
}

#[test]
fn openmetrics_exposition_matches_golden() {
    let om = encoded(Some(&sample_snapshot()), Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"));
    golden("openmetrics.txt", &om);
}

#[test]
fn text_004_exposition_matches_golden() {
    let text = encoded(Some(&sample_snapshot()), Format::Text004);
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    golden("text-0.0.4.txt", &text);
}

#[test]
fn series_are_built_the_same_from_the_same_snapshot() {
    let s = sample_snapshot();
    assert_eq!(
        series(Some(&s), &Extras::default(), &Settings::default()),
        series(Some(&s), &Extras::default(), &Settings::default())
    );
}

#[test]
fn before_the_first_snapshot_only_build_info() {
    let om = encoded(None, Format::OpenMetrics);
    assert_eq!(
        om.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["moonfrp_agent_build_info{version=\"0.1.0\"} 1"]
    );
}

#[test]
fn duration_buckets_are_cumulative_up_to_each_chosen_kernel_bucket() {
    let mut k = [0u64; DURATION_BUCKETS];
    for (i, v) in k.iter_mut().enumerate() {
        *v = i as u64 + 1;
    }
    let b = duration_buckets(&k, &[0, 2, 26]);
    assert_eq!(b[0], (0.001, 1)); // kernel bucket 0: < 1 ms
    assert_eq!(b[1], (0.004, 1 + 2 + 3)); // buckets 0..=2: < 4 ms
    assert_eq!(b[2].0, 67_108.864);
    assert_eq!(b[3], (f64::INFINITY, k.iter().sum::<u64>()));
    // The defaults: ≈ 1 s, 1 min, 17 min, 4.7 h.
    let d = duration_buckets(&k, &Settings::default().duration_buckets);
    let bounds: Vec<f64> = d.iter().map(|(le, _)| *le).collect();
    assert_eq!(bounds, [1.024, 65.536, 1048.576, 16777.216, f64::INFINITY]);
}

/// Series per tunnel with the lean default and with every optional family switched off.
#[test]
fn series_per_tunnel() {
    let per_tunnel = |settings: &Settings, proto: &str| {
        let s = series(Some(&sample_snapshot()), &Extras::default(), settings);
        let text = render(&s, Format::Text004);
        text.lines()
            .filter(|l| {
                l.starts_with("moonfrp_tunnel_")
                    && l.contains("port=\"")
                    && l.contains(&format!("proto=\"{proto}\""))
            })
            .count()
    };
    let d = Settings::default();
    assert_eq!(per_tunnel(&d, "tcp"), 24, "a TCP tunnel");
    assert_eq!(per_tunnel(&d, "udp"), 9, "a UDP tunnel");
    let lean = Settings {
        connection_duration: false,
        packets: false,
        payload: false,
        ..Settings::default()
    };
    assert_eq!(per_tunnel(&lean, "tcp"), 13);
    assert_eq!(per_tunnel(&lean, "udp"), 5);
}

#[test]
fn every_exposed_name_is_in_the_known_list() {
    assert!(
        names::KNOWN.windows(2).all(|w| w[0] < w[1]),
        "KNOWN must be sorted"
    );
    let extras = Extras {
        history: Some(Arc::default()),
        alerts: Some(Arc::default()),
        remote_write: vec![Arc::new(crate::remote_write::Stats {
            url: "http://receiver/api/v1/write".into(),
            ..crate::remote_write::Stats::default()
        })],
    };
    let built = series(Some(&sample_snapshot()), &extras, &Settings::default());
    let mut seen = std::collections::BTreeSet::new();
    for (_, p) in built.points() {
        assert!(
            names::is_known(p.name),
            "{} is not in metrics::names::KNOWN",
            p.name
        );
        seen.insert(p.name);
    }
    // And nothing listed that is never exposed (counters and gauges without samples aside).
    for k in names::KNOWN {
        assert!(
            seen.contains(k)
                || [
                    "moonfrp_alerts_active",
                    "moonfrp_alert_notifications_total",
                    "moonfrp_tunnel_peer_receive_bytes_total",
                    "moonfrp_tunnel_peer_transmit_bytes_total",
                ]
                .contains(k),
            "{k} is listed but not exposed"
        );
    }
}
