//! `status` text and `top` frames from fixture data, against golden files
//! (`tests/fixtures/view/`; `MOONFRP_UPDATE_GOLDEN=1` rewrites them).
use std::{collections::HashMap, path::PathBuf};

use ratatui::{Terminal, backend::TestBackend};

use super::{
    FetchError, status,
    top::{App, Sort, render, sparkline},
};
use crate::api::{
    status::{
        AlertRow, ContainerRow, FilesystemRow, NetworkRow, ProcessRow, Resources, ServiceRow,
        Status, SystemRow,
    },
    tunnels::TunnelRow,
};

const LONG: &str = "a-tunnel-with-a-sixty-character-name-for-the-layout-to-cope-";

pub fn fixture() -> Status {
    let tunnel = |name: &str, port, up, rx: f64, conns, errors| TunnelRow {
        tunnel: name.into(),
        port: Some(port),
        proto: "tcp".into(),
        up,
        reason: (!up).then(|| "nothing listens on 6001/tcp".into()),
        receive_bytes_per_second: Some(rx),
        transmit_bytes_per_second: Some(rx / 4.0),
        connections_active: Some(conns),
        connections_refused_total: Some(0),
        retransmits_total: Some(errors),
        refused_last_hour: Some(0.0),
        errors_last_hour: Some(errors as f64),
        ..TunnelRow::default()
    };
    Status {
        time: 1_795_353_600.0,
        interval_seconds: 60.0,
        version: "0.1.0".into(),
        tunnels: vec![
            tunnel("ssh", 6000, true, 12_500.0, 3, 0),
            tunnel(LONG, 6001, false, 0.0, 0, 7),
            tunnel("game", 27015, true, 2_400_000.0, 42, 1),
            TunnelRow {
                tunnel: "home.web".into(),
                kind: "http".into(),
                up: true,
                ..TunnelRow::default()
            },
        ],
        processes: vec![ProcessRow {
            process: "frps".into(),
            config: "/etc/frp/frps.toml".into(),
            running: 1,
            restarts: 2,
            cpu_seconds: Some(12.5),
            resident_bytes: Some(21 << 20),
        }],
        services: vec![ServiceRow {
            unit: "frps.service".into(),
            state: "active".into(),
            restarts: 1,
            resources: Resources {
                cpu_cores: Some(0.25),
                cpu_seconds: Some(120.0),
                memory_bytes: Some(48 << 20),
                memory_peak_bytes: Some(64 << 20),
                pids: Some(9),
                oom_kills: Some(0),
                ..Resources::default()
            },
        }],
        containers: vec![ContainerRow {
            container: "frpc-office".into(),
            id: "4f3e2d1c0b0a".into(),
            resources: Resources {
                cpu_cores: Some(0.5),
                memory_bytes: Some(12 << 20),
                pids: Some(3),
                oom_kills: Some(1),
                ..Resources::default()
            },
        }],
        system: SystemRow {
            cpu_usage_ratio: Some(0.123),
            memory_used_bytes: Some(3 << 30),
            memory_total_bytes: Some(16 << 30),
            load1: Some(0.52),
            cpus: Some(2),
            filesystems: vec![FilesystemRow {
                mountpoint: "/".into(),
                used_bytes: 12 << 30,
                size_bytes: 50 << 30,
            }],
            network: vec![NetworkRow {
                device: "eth0".into(),
                receive_bytes_per_second: Some(1_200.0),
                transmit_bytes_per_second: Some(300.0),
            }],
        },
        alerts: vec![AlertRow {
            alertname: "TunnelDown".into(),
            severity: "critical".into(),
            state: "firing".into(),
            value: 0.0,
            since: 1_795_353_000.0,
            summary: format!("tunnel {LONG} (6001/tcp) is down"),
        }],
    }
}

fn golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/view")
        .join(name);
    if std::env::var_os("MOONFRP_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == got,
        "{name} differs from the golden file; rerun with MOONFRP_UPDATE_GOLDEN=1 and review the diff\n--- got:\n{got}"
    );
}

/// The frame as text, one line per row.
fn frame(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render(f, app)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn app(status: Result<Status, FetchError>) -> App {
    App {
        addr: "127.0.0.1:9477".into(),
        status,
        sort: Sort::Bandwidth,
        refresh: std::time::Duration::from_secs(2),
        sparks: HashMap::from([
            ("game".to_owned(), (0..60).map(f64::from).collect()),
            ("ssh".to_owned(), vec![5.0; 60]),
        ]),
        selected: 0,
        peers: None,
    }
}

#[test]
fn top_frames_at_80x24_and_160x48() {
    let a = app(Ok(fixture()));
    let small = frame(&a, 80, 24);
    // Sorted by bandwidth: game, ssh, then the idle ones.
    let game = small.find("game").unwrap();
    let ssh = small.find("ssh ").unwrap();
    assert!(game < ssh, "{small}");
    assert!(small.contains("DOWN"), "{small}");
    assert!(small.contains("2.4 MB/s"), "{small}");
    golden("top-80x24.txt", &small);
    let big = frame(&a, 160, 48);
    assert!(big.contains("LAST HOUR"), "{big}");
    assert!(
        big.contains(LONG),
        "the long name fits at 160 columns:\n{big}"
    );
    assert!(big.contains(&sparkline(&(0..60).map(f64::from).collect::<Vec<_>>(), 30)));
    golden("top-160x48.txt", &big);
    let mut by_name = app(Ok(fixture()));
    by_name.sort = Sort::Name;
    let f = frame(&by_name, 80, 24);
    assert!(
        f.find(&LONG[..10]).unwrap() < f.find("game").unwrap(),
        "{f}"
    );
    assert!(f.contains("sort: name"));
}

#[test]
fn top_peers_view() {
    let mut a = app(Ok(fixture()));
    a.peers = Some((
        "game".into(),
        serde_json::json!({
            "peers_total": 2,
            "peers": [
                {"address": "203.0.113.7", "receive_bytes": 9_000_000, "transmit_bytes": 1_000, "packets": 7000, "connection_attempts": 3},
                {"address": "2001:db8::1", "receive_bytes": 4_000, "transmit_bytes": 80, "packets": 9, "connection_attempts": 1},
            ]
        }),
    ));
    let f = frame(&a, 80, 24);
    assert!(f.contains("peers of game (2 of 2)"), "{f}");
    assert!(f.find("203.0.113.7").unwrap() < f.find("2001:db8::1").unwrap());
    assert!(f.contains("9.0 MB"), "{f}");
    golden("top-peers-80x24.txt", &f);
}

#[test]
fn top_with_zero_tunnels_no_snapshot_and_no_agent() {
    let mut empty = fixture();
    empty.tunnels.clear();
    empty.alerts.clear();
    let f = frame(&app(Ok(empty)), 80, 24);
    assert!(f.contains("tunnels: none watched"), "{f}");
    assert!(f.contains("none active"), "{f}");
    golden("top-no-tunnels-80x24.txt", &f);
    let f = frame(&app(Err(FetchError::NoSnapshot)), 80, 24);
    assert!(f.contains("no snapshot yet"), "{f}");
    golden("top-no-snapshot-80x24.txt", &f);
    let f = frame(
        &app(Err(FetchError::NotRunning(
            "cannot connect to 127.0.0.1:9477: Connection refused".into(),
        ))),
        80,
        24,
    );
    assert!(f.contains("not running"), "{f}");
}

#[test]
fn status_text_is_plain_and_grouped() {
    let t = status::render(&fixture());
    assert!(!t.contains('\x1b'), "no escape codes");
    for section in [
        "TUNNELS (4)",
        "FRP PROCESSES",
        "SERVICES",
        "SYSTEM",
        "ALERTS (1)",
    ] {
        assert!(t.contains(section), "{section} missing:\n{t}");
    }
    assert!(
        t.contains("a-tunnel-with-a-sixty-c…"),
        "long names are cut:\n{t}"
    );
    assert!(
        t.contains("CONTAINERS (1)") && t.contains("frpc-office"),
        "{t}"
    );
    golden("status.txt", &t);
    let mut empty = fixture();
    empty.tunnels.clear();
    assert!(status::render(&empty).contains("none watched"));
}

#[test]
fn status_alerts_lists_the_active_and_the_log() {
    use crate::api::alerts::{AlertEventRow, AlertLog};
    let event = |time: f64, event: &str| AlertEventRow {
        time,
        alertname: "TunnelDown".into(),
        event: event.into(),
        severity: "critical".into(),
        value: Some(0.0),
        labels: std::collections::BTreeMap::from([(
            "tunnel".to_owned(),
            "ssh\u{1b}[2J".to_owned(),
        )]),
        summary: "tunnel ssh is down".into(),
        active_since: 1_795_353_000.0,
    };
    let log = AlertLog {
        limit: 50,
        events: vec![
            event(1_795_353_300.0, "resolved"),
            event(1_795_353_060.0, "firing"),
        ],
    };
    let t = status::render_alerts(&fixture(), &log, "24h");
    assert!(!t.contains('\x1b'), "no escape codes:\n{t}");
    assert!(
        t.contains("ALERTS (1)") && t.contains("ALERT LOG (last 24h, newest first: 2 events)"),
        "{t}"
    );
    golden("status-alerts.txt", &t);
}

#[test]
fn sparklines_scale_to_their_maximum() {
    assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0], 10), "▁▃▅█");
    assert_eq!(sparkline(&[0.0; 3], 2), "▁▁");
    assert_eq!(sparkline(&[], 5), "");
}
