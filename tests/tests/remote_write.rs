//! remote_write: a real Prometheus receiver (`--web.enable-remote-write-receiver`) gets the
//! series `/metrics` shows, with the external labels; stand-in receivers answering 400, 500 and
//! 429 show the retry rules (no retry, backoff, `Retry-After`).
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use moonfrp_tests::{
    Agent, Daemon, free_port,
    pki::Pki,
    poll, prometheus_query, prometheus_value,
    receiver::{Receiver, Reply},
    send_tcp,
};

fn receiver(dir: &Path) -> (Daemon, SocketAddr) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    (receiver_at(dir, addr), addr)
}

/// A Prometheus remote-write receiver on `addr` keeping its data in `dir` (so it can be
/// stopped and started again with what it had).
fn receiver_at(dir: &Path, addr: SocketAddr) -> Daemon {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global: {scrape_interval: 1m}\n").unwrap();
    Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address={addr}"),
            "--web.enable-remote-write-receiver",
        ],
    )
}

fn config_file(dir: &Path, endpoints: &str) -> String {
    let path = dir.join("moonfrp.toml");
    std::fs::write(&path, endpoints).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_real_prometheus_receives_what_metrics_shows() {
    let dir = tempfile::tempdir().unwrap();
    let (prom, addr) = receiver(dir.path());
    let port = free_port();
    let cfg = config_file(
        dir.path(),
        &format!(
            "[kernel]\nexport_peers = 3\n[[remote_write]]\nurl = \"http://{addr}/api/v1/write\"\nexternal_labels = {{ instance = \"edge-1\", region = \"test\" }}\n[remote_write.queue]\nmax_samples_per_send = 300\n"
        ),
    );
    let agent = Agent::start(&["-c", &cfg, "-t", &format!("web={port}")]);
    send_tcp(port, 98_765);
    agent.wait_for("the bytes counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 98_765.0
    });
    let got = poll("the counter in Prometheus", Duration::from_mins(1), || {
        prometheus_value(
            addr,
            "moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\",instance=\"edge-1\",region=\"test\"}",
        )
        .filter(|v| *v == 98_765.0)
    });
    assert_eq!(got, 98_765.0, "{}", prom.log());

    // Every series of the tunnel as /metrics shows it (stable now: no more traffic) is in
    // Prometheus with the same value and the external labels.
    let m = agent.metrics();
    let mut compared = 0;
    for s in m.samples.iter().filter(|s| {
        s.labels.iter().any(|(k, v)| k == "tunnel" && v == "web")
            && s.name.starts_with("moonfrp_tunnel_")
    }) {
        let mut selector = format!("{}{{instance=\"edge-1\",region=\"test\"", s.name);
        for (k, v) in &s.labels {
            let _ = write!(
                selector,
                ",{k}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        selector.push('}');
        let want = s.value;
        let v = poll(
            &format!("{selector} in Prometheus"),
            Duration::from_secs(30),
            || {
                prometheus_value(addr, &selector)
                    .filter(|v| *v == want || (v.is_nan() && want.is_nan()))
            },
        );
        assert!(v == want || v.is_nan(), "{selector}: {v} != {want}");
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} tunnel series compared");
    // The dashboard works on pushed data too: every query, for the pushed instance, answers.
    send_tcp(port, 1_000);
    for (title, q) in moonfrp_tests::grafana::queries("edge-1", "web") {
        poll(
            &format!("panel \"{title}\" on pushed data: {q}"),
            Duration::from_secs(30),
            || prometheus_query(addr, &q).filter(|r| !r.is_empty()),
        );
    }
    // Host and agent series travel too; the endpoint's own counters say it went well.
    assert!(
        prometheus_value(
            addr,
            "moonfrp_system_memory_total_bytes{instance=\"edge-1\"}"
        )
        .is_some()
    );
    let m = agent.metrics();
    let url = format!("http://{addr}/api/v1/write");
    let count = |result: &str| {
        m.get(
            "moonfrp_remote_write_samples_total",
            &[("url", &url), ("result", result)],
        )
        .unwrap()
    };
    assert!(count("sent") > 0.0);
    assert_eq!(count("failed"), 0.0);
    assert_eq!(count("dropped"), 0.0);
    assert!(
        m.get(
            "moonfrp_remote_write_highest_sent_timestamp_seconds",
            &[("url", &url)]
        )
        .unwrap()
            > 1.7e9
    );
}

#[test]
fn a_400_is_not_retried_a_500_is_with_backoff_and_a_429_waits_its_retry_after() {
    let r = Receiver::start();
    r.reply("/bad", Reply::Status(400));
    r.reply("/down", Reply::Status(500));
    r.reply("/busy", Reply::RetryAfter(429, 2));
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    // Credentials from files: a bearer token for one, basic auth for another.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "pw\n").unwrap();
    let auth = [
        format!("bearer_token_file = \"{}\"\n", token.display()),
        format!(
            "basic_auth = {{ username = \"edge\", password_file = \"{}\" }}\n",
            password.display()
        ),
        String::new(),
    ];
    for (path, auth) in ["/bad", "/down", "/busy"].into_iter().zip(auth) {
        let _ = write!(
            text,
            "[[remote_write]]\nurl = \"{}\"\n{auth}headers = {{ X-Scope-OrgID = \"tenant-7\" }}\n[remote_write.queue]\nmin_backoff = \"100ms\"\nmax_backoff = \"1s\"\n",
            r.url(path)
        );
    }
    let cfg = config_file(dir.path(), &text);
    let agent = Agent::start(&["-c", &cfg, "-t", &format!("web={}", free_port())]);
    std::thread::sleep(Duration::from_secs(6));
    let m = agent.metrics();
    let snapshots = m.get("moonfrp_agent_snapshots_total", &[]).unwrap();

    // The protocol's headers, and the extra one.
    let bad = r.received("/bad");
    let h = &bad[0].headers;
    for (k, v) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
        ("x-scope-orgid", "tenant-7"),
    ] {
        assert!(h.iter().any(|(hk, hv)| hk == k && hv == v), "{k}: {h:?}");
    }
    let authorization = |path: &str| {
        r.received(path)[0]
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        authorization("/bad").as_deref(),
        Some("Bearer s3cr3t-token")
    );
    // edge:pw
    assert_eq!(
        authorization("/down").as_deref(),
        Some("Basic ZWRnZTpwdw==")
    );
    assert_eq!(authorization("/busy"), None);
    // 400: every batch is sent once and counted failed; none is sent again.
    assert!(
        (bad.len() as f64) <= snapshots + 1.0,
        "{} requests for {snapshots} snapshots",
        bad.len()
    );
    let count = |path: &str, result: &str| {
        m.get(
            "moonfrp_remote_write_samples_total",
            &[("url", &r.url(path)), ("result", result)],
        )
        .unwrap()
    };
    assert!(count("/bad", "failed") > 0.0);
    assert_eq!(count("/bad", "retried"), 0.0);

    // 500: retried, the waits doubling from 100 ms up to the 1 s cap.
    let gaps = |path: &str| -> Vec<f64> {
        r.received(path)
            .windows(2)
            .map(|w| (w[1].at - w[0].at).as_secs_f64())
            .collect()
    };
    let down = gaps("/down");
    assert!(down.len() >= 5, "{down:?}");
    for (i, want) in [0.1, 0.2, 0.4, 0.8].into_iter().enumerate() {
        assert!(
            down[i] >= want * 0.9 && down[i] < want * 1.5 + 0.05,
            "gap {i}: {:.3} s, want ≈ {want} s: {down:?}",
            down[i]
        );
    }
    assert!(down[4..].iter().all(|g| *g >= 0.9 && *g < 1.5), "{down:?}");
    assert!(count("/down", "retried") > 0.0);
    assert_eq!(count("/down", "sent"), 0.0);

    // 429 with Retry-After: 2 waits 2 s each time, whatever the backoff says.
    let busy = gaps("/busy");
    assert!(!busy.is_empty(), "{busy:?}");
    assert!(busy.iter().all(|g| *g >= 1.9 && *g < 2.6), "{busy:?}");
    // Nothing is lost to the queue in 6 s of retries.
    assert_eq!(count("/down", "dropped"), 0.0);
}

/// Resident memory of a process now (`VmRSS`), in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Raw samples (Unix ms) Prometheus holds for `selector` over the last `window`.
fn sample_times(addr: SocketAddr, selector: &str, window: &str) -> Vec<i64> {
    let result = prometheus_query(addr, &format!("{selector}[{window}]")).unwrap_or_default();
    result
        .first()
        .and_then(|r| r["values"].as_array())
        .map(|vals| {
            vals.iter()
                .map(|p| (p[0].as_f64().unwrap() * 1000.0).round() as i64)
                .collect()
        })
        .unwrap_or_default()
}

/// A steady stream: 10 KiB every 100 ms to `port`, each on a new connection (a listener there
/// reads them), until [`Stream::finish`].
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    client: std::thread::JoinHandle<()>,
}

impl Stream {
    fn start(port: u16) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = moonfrp_tests::bind_tcp(port);
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(mut c) = c else { break };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut std::io::sink());
                });
            }
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let client = std::thread::spawn(move || {
            use std::io::Write as _;
            while !st.load(SeqCst) {
                let mut c = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
                c.write_all(&[9u8; 10_240]).unwrap();
                se.fetch_add(10_240, SeqCst);
                drop(c);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, sent, client }
    }

    /// Stops sending: the bytes sent.
    fn finish(self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        self.stop.store(true, SeqCst);
        self.client.join().unwrap();
        self.sent.load(SeqCst)
    }
}

#[test]
fn a_two_minute_outage_is_resent_from_history_with_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let prom = receiver_at(&prom_dir, addr);
    let port = free_port();
    // A small queue: two minutes of snapshots cannot stay in memory, history must carry them.
    let cfg = config_file(
        dir.path(),
        &format!(
            "[[remote_write]]\nurl = \"http://{addr}/api/v1/write\"\nexternal_labels = {{ instance = \"edge-1\" }}\n[remote_write.queue]\ncapacity = 2000\nmax_samples_per_send = 500\nmin_backoff = \"100ms\"\nmax_backoff = \"1s\"\n"
        ),
    );
    let agent = Agent::start(&["-c", &cfg, "-t", &format!("web={port}")]);
    let stream = Stream::start(port);
    let selector = "moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\",instance=\"edge-1\"}";
    poll("the stream in Prometheus", Duration::from_mins(1), || {
        prometheus_value(addr, selector).filter(|v| *v > 0.0)
    });

    // The receiver goes away for two minutes; the agent's memory is watched meanwhile.
    let outage_start = now_ms();
    drop(prom);
    let rss_before = rss(agent.pid());
    let mut rss_peak = rss_before;
    for _ in 0..24 {
        std::thread::sleep(Duration::from_secs(5));
        rss_peak = rss_peak.max(rss(agent.pid()));
    }
    let url = format!("http://{addr}/api/v1/write");
    let m = agent.metrics();
    let pending = m
        .get("moonfrp_remote_write_samples_pending", &[("url", &url)])
        .unwrap();
    assert!(pending <= 2_000.0, "pending {pending}");
    println!(
        "agent RSS during a 2 min outage: {:.1} MiB at its start, {:.1} MiB at most",
        rss_before as f64 / 1_048_576.0,
        rss_peak as f64 / 1_048_576.0
    );
    assert!(
        rss_peak < rss_before + 8 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_peak} bytes"
    );

    // Back: everything the agent took meanwhile arrives, from history and the queue.
    let _prom = receiver_at(&prom_dir, addr);
    std::thread::sleep(Duration::from_secs(2));
    let total = stream.finish() as f64;
    agent.wait_for("every byte counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == total
    });
    let last = poll(
        "the final count in Prometheus",
        Duration::from_mins(2),
        || prometheus_value(addr, selector).filter(|v| *v == total),
    );
    assert_eq!(last, total);
    // No gap: every snapshot the agent took since shortly before the outage is a sample there.
    poll(
        "every snapshot of the outage in Prometheus",
        Duration::from_mins(1),
        || {
            let there: std::collections::BTreeSet<i64> =
                sample_times(addr, selector, "10m").into_iter().collect();
            let taken: Vec<i64> = agent
                .snapshot_times()
                .into_iter()
                .map(|t| (t * 1000.0).round() as i64)
                .filter(|t| *t >= outage_start - 5_000)
                .collect();
            let missing: Vec<&i64> = taken.iter().filter(|t| !there.contains(t)).collect();
            (missing.is_empty() && taken.len() > 120).then_some(())
        },
    );
    let m = agent.metrics();
    assert_eq!(
        m.get(
            "moonfrp_remote_write_samples_total",
            &[("url", &url), ("result", "dropped")]
        ),
        Some(0.0)
    );
    // The queue did overflow: what left it came back from history.
    assert!(
        agent.log().contains("caught up with history"),
        "{}",
        agent.log()
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_receiver_behind_mutual_tls_and_basic_auth() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Prometheus' own web config: TLS with client certificates, and a user.
    let hash = bcrypt::hash("push-secret", 4).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  edge: {hash}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem")
        ),
    )
    .unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global: {scrape_interval: 1m}\n").unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let prom = Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address={addr}"),
            &format!("--web.config.file={}", web.display()),
            "--web.enable-remote-write-receiver",
        ],
    );
    let password = dir.path().join("password");
    std::fs::write(&password, "push-secret\n").unwrap();
    let port = free_port();
    let cfg = config_file(
        dir.path(),
        &format!(
            "[[remote_write]]\nurl = \"https://{addr}/api/v1/write\"\nbasic_auth = {{ username = \"edge\", password_file = \"{}\" }}\ntls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\nexternal_labels = {{ instance = \"edge-tls\" }}\n",
            password.display(),
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    let agent = Agent::start(&["-c", &cfg, "-t", &format!("web={port}")]);
    send_tcp(port, 4_321);
    let url = format!("https://{addr}/api/v1/write");
    // Prometheus' query API is behind the same TLS and auth: read the result through curl.
    let got = poll(
        "the counter in the TLS receiver",
        Duration::from_mins(1),
        || {
            let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert", &pki.path("ca.pem")])
            .args(["--cert", &pki.path("client.pem"), "--key", &pki.path("client.key")])
            .args(["-u", "edge:push-secret", "-G"])
            .arg(format!("https://{addr}/api/v1/query"))
            .args([
                "--data-urlencode",
                "query=moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\",instance=\"edge-tls\"}",
            ])
            .output()
            .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
                .filter(|v| *v == 4_321.0)
        },
    );
    assert_eq!(got, 4_321.0, "{}", prom.log());
    let m = agent.metrics();
    assert_eq!(
        m.get(
            "moonfrp_remote_write_samples_total",
            &[("url", &url), ("result", "failed")]
        ),
        Some(0.0)
    );
}
