//! Host, process and service collectors against the real machine, a real Prometheus and a real
//! node_exporter.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, Daemon, agent_bin, free_port, http_get, poll, send_tcp};

fn meminfo_kb(key: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
}

#[test]
fn collectors_agree_with_the_kernel() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let m = agent.metrics();
    assert_eq!(
        m.get("moonfrp_system_memory_total_bytes", &[]),
        Some(meminfo_kb("MemTotal") * 1024.0)
    );
    let cpus = thread::available_parallelism().unwrap().get() as f64;
    assert_eq!(m.get("moonfrp_system_cpus", &[]), Some(cpus));
    let lo_before = m
        .get(
            "moonfrp_system_network_receive_bytes_total",
            &[("device", "lo")],
        )
        .unwrap();
    let opens_before = m
        .get("moonfrp_system_tcp_passive_opens_total", &[])
        .unwrap();

    send_tcp(port, 1 << 20);
    let m = agent.wait_snapshots(2);
    let lo_after = m
        .get(
            "moonfrp_system_network_receive_bytes_total",
            &[("device", "lo")],
        )
        .unwrap();
    assert!(
        lo_after - lo_before >= f64::from(1 << 20),
        "lo grew by {} only",
        lo_after - lo_before
    );
    assert!(
        m.get("moonfrp_system_tcp_passive_opens_total", &[])
            .unwrap()
            > opens_before
    );
    // The kernel counted the same MiB on the tunnel.
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total"),
        f64::from(1 << 20)
    );

    // Root filesystem: the same size as df says.
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size", "/"])
        .output()
        .unwrap();
    let size: f64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        m.get(
            "moonfrp_system_filesystem_size_bytes",
            &[("mountpoint", "/")]
        ),
        Some(size)
    );
    let ratio = m.get("moonfrp_system_cpu_usage_ratio", &[]).unwrap();
    assert!((0.0..=1.0).contains(&ratio));
    m.assert_each(
        "moonfrp_agent_collector_success",
        "collector",
        &[
            "kernel",
            "cpu",
            "memory",
            "host",
            "netdev",
            "disk",
            "filesystem",
            "netstat",
            "processes",
        ],
        1.0,
    );
    // Runs of the attached programs are counted (statistics are sampled: 1 s windows after each
    // collection, which at a 1 s interval leave them on nearly all the time).
    assert!(
        m.get(
            "moonfrp_agent_bpf_runs_total",
            &[("probe", "traffic_ingress")]
        )
        .unwrap()
            > 0.0
    );
}

#[test]
fn a_real_prometheus_scrapes_the_agent() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    send_tcp(port, 123_456);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: moonfrp\n    static_configs: [{{targets: ['{}']}}]\n",
            agent.addr
        ),
    )
    .unwrap();
    let prom_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let data = dir.path().join("data");
    let prometheus = Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            &format!("--web.listen-address={prom_addr}"),
        ],
    );
    let query = |q: &str| -> Option<f64> {
        let path = format!(
            "/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        let (status, _, body) = http_get(prom_addr, &path, None).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let up = poll("up == 1 in Prometheus", Duration::from_mins(1), || {
        query("up{job=\"moonfrp\"}").filter(|v| *v == 1.0)
    });
    assert_eq!(up, 1.0, "{}", prometheus.log());
    let bytes = poll(
        "the tunnel counter in Prometheus",
        Duration::from_secs(30),
        || {
            query("moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\"}")
                .filter(|v| *v == 123_456.0)
        },
    );
    assert_eq!(bytes, 123_456.0);
    let mem = poll(
        "a system series in Prometheus",
        Duration::from_secs(30),
        || query("moonfrp_system_memory_total_bytes"),
    );
    assert_eq!(mem, meminfo_kb("MemTotal") * 1024.0);
    // An info-typed family arrives under its sample name.
    let info = poll("the build info", Duration::from_secs(30), || {
        query("moonfrp_agent_build_info")
    });
    assert_eq!(info, 1.0);
}

#[test]
fn node_exporter_serves_the_textfile_and_readers_never_see_half_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("moonfrp.prom");
    let port = free_port();
    let agent = Agent::start(&[
        "-t",
        &format!("web={port}"),
        "--textfile",
        file.to_str().unwrap(),
    ]);
    let ne_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let _ne = Daemon::start(
        "prometheus-node-exporter",
        &[
            "--collector.disable-defaults",
            "--collector.textfile",
            &format!("--collector.textfile.directory={}", dir.path().display()),
            &format!("--web.listen-address={ne_addr}"),
        ],
    );
    let body = poll(
        "node_exporter serving the agent's series",
        Duration::from_secs(30),
        || {
            let (_, _, body) = http_get(ne_addr, "/metrics", None).ok()?;
            (body.contains("moonfrp_tunnel_info{") && body.contains("node_textfile_scrape_error 0"))
                .then_some(body)
        },
    );
    assert!(body.contains("moonfrp_system_memory_total_bytes"), "{body}");

    // Read as fast as possible while the agent rewrites the file every second: every read is
    // whole (ends with the last family), and the content did change under us.
    let mut versions = std::collections::BTreeSet::new();
    // Until three rewrites have been seen (about 3 s; up to 20 s on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reads = 0;
    while versions.len() < 3 && Instant::now() < deadline {
        let text = std::fs::read_to_string(&file).unwrap();
        let last = text.lines().last().unwrap_or_default();
        assert!(
            text.ends_with('\n') && last.starts_with("process_start_time_seconds"),
            "partial file ({} bytes), last line `{last}`",
            text.len()
        );
        let seq = text
            .lines()
            .find(|l| l.starts_with("moonfrp_agent_snapshots_total"))
            .unwrap()
            .to_owned();
        versions.insert(seq);
        reads += 1;
    }
    assert!(
        versions.len() >= 3,
        "only {} versions in {reads} reads",
        versions.len()
    );
    drop(agent);
}

#[test]
fn frp_processes_are_seen_and_restarts_counted() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("frps");
    std::fs::write(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.to_str().unwrap().to_owned();
    let config = "/etc/frp/frps.toml";
    let agent = Agent::start(&["-t", &format!("web={}", free_port())]);
    let labels = [("process", "frps"), ("config", config)];

    let first = Daemon::start(&script, &["-c", config]);
    let m = agent.wait_for("frps to be seen", |m| {
        m.get("moonfrp_process_up", &labels) == Some(1.0)
    });
    assert_eq!(m.get("moonfrp_process_restarts_total", &labels), Some(0.0));
    assert!(m.get("moonfrp_process_threads", &labels).unwrap() >= 1.0);
    assert!(
        m.get("moonfrp_process_start_time_seconds", &labels)
            .unwrap()
            > 1.6e9
    );
    first.kill();
    agent.wait_for("frps to be gone", |m| {
        m.get("moonfrp_process_up", &labels) == Some(0.0)
    });
    let _second = Daemon::start(&script, &["-c", config]);
    let m = agent.wait_for("the restart", |m| {
        m.get("moonfrp_process_restarts_total", &labels) == Some(1.0)
    });
    assert_eq!(m.get("moonfrp_process_up", &labels), Some(1.0));
}

#[test]
fn textfile_in_a_missing_or_read_only_directory_stops_the_start() {
    let out = std::process::Command::new(agent_bin())
        .args([
            "run",
            "-t",
            "web=8080",
            "--textfile",
            "/nonexistent/moonfrp/metrics.prom",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/nonexistent/moonfrp") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        !err.contains("probe attached"),
        "it loaded programs before checking: {err}"
    );

    // Root ignores permission bits: make the directory a read-only mount in a private namespace.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let bin = agent_bin();
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("mount -t tmpfs -o ro none {d} && exec \"$0\" \"$@\""),
        ])
        .arg(&bin)
        .args([
            "run",
            "-t",
            "web=8080",
            "--textfile",
            &format!("{d}/moonfrp.prom"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write in") && err.contains("Read-only"),
        "{err}"
    );
}

#[test]
fn a_hung_systemctl_costs_its_collector_not_the_interval() {
    // A host that looks like systemd's (in a private mount namespace) whose `systemctl` hangs,
    // as it does when D-Bus is stuck: killed at its deadline, every interval on time.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("systemctl"), "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let setup = format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && export PATH={}:$PATH",
        bin.display()
    );
    let agent = moonfrp_tests::AgentCmd::new(&["-t", &format!("web={}", free_port())])
        .in_private_mounts(&setup)
        .start();
    let m = agent.wait_snapshots(6);
    assert_eq!(
        m.get(
            "moonfrp_agent_collector_success",
            &[("collector", "systemd")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.get(
            "moonfrp_agent_collector_success",
            &[("collector", "memory")]
        ),
        Some(1.0)
    );
    let ts = agent.snapshot_times();
    for w in ts[1..].windows(2) {
        assert!(
            (0.9..=1.1).contains(&(w[1] - w[0])),
            "a collection interval of {:.3} s: {ts:?}",
            w[1] - w[0]
        );
    }
    let log = agent.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("collector failed") && l.contains("collector=\"systemd\""))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(
        failed[0].contains("did not finish within 250ms"),
        "{}",
        failed[0]
    );
    // No `sleep` was left behind.
    let out = std::process::Command::new("pgrep")
        .args(["-f", "sleep 60", "-P", &agent.pid().to_string()])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_collector_that_fails_is_skipped_counted_and_logged_once() {
    // /proc/loadavg replaced by garbage in a private mount namespace: the host collector fails.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("loadavg");
    std::fs::write(&garbage, "not a load average\n").unwrap();
    let wrap = format!("mount --bind {} /proc/loadavg", garbage.display());
    let port = free_port();
    let agent = Agent::spawn_in_private_mounts(&wrap, &["-t", &format!("web={port}")]);
    agent.wait_ready();
    let m = agent.wait_snapshots(3);
    assert_eq!(
        m.get("moonfrp_agent_collector_success", &[("collector", "host")]),
        Some(0.0)
    );
    assert!(
        m.get(
            "moonfrp_agent_collection_errors_total",
            &[("source", "host")]
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        m.get("moonfrp_system_load1", &[]).is_none(),
        "series of a failed collector must be absent"
    );
    // Everything else is still there.
    assert!(m.get("moonfrp_system_memory_total_bytes", &[]).is_some());
    assert!(
        m.get("moonfrp_tunnel_connections_active", &[("tunnel", "web")])
            .is_some()
    );
    assert_eq!(
        m.get(
            "moonfrp_agent_collector_success",
            &[("collector", "memory")]
        ),
        Some(1.0)
    );
    let log = agent.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("collector failed") && l.contains("collector=\"host\""))
        .count();
    assert_eq!(
        failures, 1,
        "logged {failures} times instead of once:\n{log}"
    );
    assert!(log.contains("/proc/loadavg"), "{log}");
}
