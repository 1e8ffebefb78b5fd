//! The fleet examples: a real Prometheus runs `deploy/prometheus/fleet.yml` (file_sd pointing at
//! an agent with traffic) with its recording and alert rules, and every panel query of the
//! Grafana dashboard `deploy/grafana/moonfrp.json`, its variables substituted, returns data.
use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::Duration,
};

use moonfrp_tests::{
    Agent, Daemon, free_port, grafana, outcome, poll, prometheus_query as query, workspace,
};

/// Traffic on `port` until dropped: a connection every 100 ms with a few KiB, from loopback.
struct Traffic(Arc<AtomicBool>);

impl Traffic {
    fn start(port: u16) -> Self {
        let listener = moonfrp_tests::bind_tcp(port);
        thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(mut c) = c else { break };
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut std::io::sink());
                });
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Relaxed) {
                if let Ok(mut c) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                    let _ = c.write_all(&[5u8; 4_096]);
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Self(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// Prometheus with the shipped fleet config, its rule files, and a targets file naming `agent`.
fn fleet_prometheus(dir: &std::path::Path, agent: SocketAddr) -> (Daemon, SocketAddr) {
    let deploy = workspace().join("deploy/prometheus");
    // The shipped intervals are the agent's default minute; the test's agent snapshots every
    // second.
    let config = std::fs::read_to_string(deploy.join("fleet.yml"))
        .unwrap()
        .replace("scrape_interval: 60s", "scrape_interval: 1s")
        .replace("evaluation_interval: 60s", "evaluation_interval: 1s");
    std::fs::write(dir.join("fleet.yml"), config).unwrap();
    for f in ["recording_rules.yml", "alerts.yml"] {
        std::fs::copy(deploy.join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir(dir.join("targets")).unwrap();
    std::fs::write(
        dir.join("targets/moonfrp.yml"),
        format!("- targets: ['{agent}']\n"),
    )
    .unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let daemon = Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", dir.join("fleet.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address={addr}"),
        ],
    );
    (daemon, addr)
}

#[test]
fn the_shipped_prometheus_files_pass_promtool() {
    let deploy = workspace().join("deploy/prometheus");
    // `check config` also checks the rule files it names (recording and alert rules).
    let (ok, text) = outcome(
        std::process::Command::new("promtool")
            .args(["check", "config"])
            .arg(deploy.join("fleet.yml")),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("8 rules found") && !text.contains("WARNING"),
        "{text}"
    );
}

#[test]
fn the_fleet_config_rules_and_every_dashboard_query_work_on_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(&config, "[kernel]\nexport_peers = 3\n").unwrap();
    let agent = Agent::start(&["-c", config.to_str().unwrap(), "-t", &format!("web={port}")]);
    let _traffic = Traffic::start(port);
    let prom_dir = tempfile::tempdir().unwrap();
    let (prom, addr) = fleet_prometheus(prom_dir.path(), agent.addr);

    // The relabelled instance is the host alone, as remote_write's default external label.
    poll(
        "the agent scraped through file_sd",
        Duration::from_mins(1),
        || query(addr, "up{job=\"moonfrp\",instance=\"127.0.0.1\"} == 1").filter(|r| !r.is_empty()),
    );
    // The recording rules evaluate (rates need a few scrapes).
    for rule in [
        "instance:moonfrp_tunnels_up:sum",
        "instance:moonfrp_tunnel_receive_bytes:rate5m",
        "instance:moonfrp_tunnel_errors:rate5m",
        "fleet:moonfrp_tunnels_down:sum",
        "fleet:moonfrp_tunnel_bytes:rate5m",
    ] {
        poll(rule, Duration::from_secs(30), || {
            query(addr, rule).filter(|r| !r.is_empty())
        });
    }

    let exprs = grafana::queries("127.0.0.1", "web");
    assert!(exprs.len() >= 30, "{} queries", exprs.len());
    for (title, q) in &exprs {
        poll(
            &format!("panel \"{title}\": {q}"),
            Duration::from_secs(30),
            || query(addr, q).filter(|r| !r.is_empty()),
        );
    }
    drop(prom);
}
