//! History end to end: the real agent writes a real SQLite file; the API answers from it while
//! real traffic flows; the file survives SIGKILL, restarts, counter resets, damage and a full disk.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, AgentCmd, free_port, send_tcp};
use serde_json::Value;

fn api(agent: &Agent, path_and_query: &str) -> (u16, String, Value) {
    let (status, ctype, body) = agent.get(path_and_query, None).expect("GET the API");
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, ctype, json)
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        dir.join("history.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

/// `[ts, value]` pairs of the first series of an answer.
fn samples(v: &Value) -> Vec<(f64, f64)> {
    v["data"]["series"][0]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no series in {v}"))
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn api_answers_from_the_database_with_real_traffic() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    send_tcp(port, 12_345);
    agent.wait_snapshots(2);
    send_tcp(port, 1_000);
    agent.wait_for("history to hold 4 snapshots", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= 4.0
    });
    let m = agent.wait_snapshots(2);
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(1.0));
    assert_eq!(m.get("moonfrp_history_recoveries_total", &[]), Some(0.0));

    // Raw points: the cumulative payload, ending at exactly what was sent.
    let (status, ctype, v) = api(
        &agent,
        "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=web&since=10m",
    );
    assert_eq!(status, 200, "{v}");
    assert!(ctype.starts_with("application/json"));
    assert_eq!(v["data"]["resolution"], "raw");
    let s = &v["data"]["series"][0];
    assert_eq!(s["labels"]["port"], port.to_string());
    assert_eq!(s["unit"], "bytes");
    assert_eq!(s["type"], "counter");
    let points = samples(&v);
    assert!(points.len() >= 4, "{points:?}");
    assert_eq!(points.last().unwrap().1, 13_345.0);
    assert!(
        points
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
    );
    // Rates: per second, never negative, and they add up to what was sent.
    // Up to the last point read above: a snapshot taken between the two requests is not in it.
    let (_, _, v) = api(
        &agent,
        &format!(
            "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=web&since=10m&rate=true&to={}",
            points.last().unwrap().0
        ),
    );
    let rates = samples(&v);
    assert!(rates.iter().all(|(_, r)| *r >= 0.0));
    let integrated: f64 = rates
        .iter()
        .zip(points.iter().skip(points.len() - rates.len()))
        .enumerate()
        .map(|(i, ((t, r), _))| {
            let before = if i == 0 {
                points[points.len() - rates.len() - 1].0
            } else {
                rates[i - 1].0
            };
            r * (t - before)
        })
        .sum();
    let first = points[points.len() - rates.len() - 1].1;
    assert!(
        (integrated - (13_345.0 - first)).abs() < 1.0,
        "{integrated} vs {}",
        13_345.0 - first
    );

    // CSV: a header naming the label columns, then one row per point.
    let (status, ctype, body) = agent
        .get(
            "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&since=10m&format=csv",
            None,
        )
        .unwrap();
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let mut lines = body.lines();
    assert_eq!(
        lines.next(),
        Some("timestamp,time,metric,port,proto,tunnel,value")
    );
    let last = lines.last().unwrap();
    assert!(
        last.ends_with(&format!(
            ",moonfrp_tunnel_receive_payload_bytes_total,{port},tcp,web,13345"
        )),
        "{last}"
    );

    tunnel_table_and_summary(&agent, port);
    bad_input_names_the_parameter(&agent);
    ranges_older_than_the_data_answer_with_the_data(&agent);
    private_file_readable_with_sql(&agent);
}

fn tunnel_table_and_summary(agent: &Agent, port: u16) {
    let (status, _, v) = api(agent, "/api/v1/tunnels");
    assert_eq!(status, 200);
    let t = &v["data"]["tunnels"][0];
    assert_eq!(t["tunnel"], "web");
    assert_eq!(t["port"], port);
    assert!(t["receive_bytes_total"].as_u64().unwrap() > 13_345);
    assert_eq!(t["receive_bytes_per_second"], 0.0);
    assert_eq!(t["connections_opened_total"], 2);
    let (status, _, v) = api(agent, "/api/v1/summary");
    assert_eq!(status, 200, "{v}");
    let row = &v["data"]["tunnels"][0];
    assert_eq!(row["tunnel"], "web");
    assert!(row["receive_bytes_per_second"]["max"].as_f64().unwrap() > 0.0);
    assert_eq!(row["connections_active"]["now"], 0.0);
    assert!(
        v["data"]["system"]["memory_used_bytes"]["now"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

fn bad_input_names_the_parameter(agent: &Agent) {
    let (status, _, v) = api(agent, "/api/v1/history?metric=moonfrp_nope");
    assert_eq!(status, 404);
    let known = v["known_metrics"].as_array().unwrap();
    assert!(known.contains(&"moonfrp_tunnel_receive_bytes_total".into()));
    let (status, _, v) = api(
        agent,
        "/api/v1/history?metric=moonfrp_system_load1&from=yesterday",
    );
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("parameter `from`"),
        "{v}"
    );
    let (status, _, v) = api(
        agent,
        "/api/v1/history?metric=moonfrp_system_load1&step=0.5s",
    );
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("parameter `step`"),
        "{v}"
    );
    // The limit is judged on the range that has data: a year ahead at 1 s is too many points.
    let in_a_year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 365 * 86_400;
    let (status, _, v) = api(
        agent,
        &format!("/api/v1/history?metric=moonfrp_system_load1&from=now-90d&to={in_a_year}&step=1s"),
    );
    assert_eq!(status, 400);
    assert!(
        v["error"].as_str().unwrap().contains("limit is 11000"),
        "{v}"
    );
}

/// A range reaching back before the database began (`since=25h`, `from=0`) answers with the
/// raw samples there are, not with empty rollup levels (issue 12, item 12).
fn ranges_older_than_the_data_answer_with_the_data(agent: &Agent) {
    for query in ["since=25h", "from=0", "from=now-90d&step=1m"] {
        let (status, _, v) = api(
            agent,
            &format!("/api/v1/history?metric=moonfrp_system_load1&{query}"),
        );
        assert_eq!(status, 200, "{query}: {v}");
        assert!(!samples(&v).is_empty(), "{query}: no points in {v}");
        if !query.contains("step") {
            assert_eq!(v["data"]["resolution"], "raw", "{query}: {v}");
        }
    }
}

/// The file: private, and its documented tables readable with plain SQL (the values are in
/// compressed blocks: `history --csv` reads them, tested below).
fn private_file_readable_with_sql(agent: &Agent) {
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.data_dir), 0o700);
    assert_eq!(mode(&agent.data_dir.join("history.db")), 0o600);
    let (series, snapshots): (i64, i64) = db(&agent.data_dir)
        .query_row(
            "SELECT (SELECT COUNT(*) FROM series WHERE metric = 'moonfrp_tunnel_receive_payload_bytes_total'
               AND json_extract(labels, '$.tunnel') = 'web'),
              (SELECT COUNT(*) FROM snapshots sn JOIN head_blocks h ON h.key >> 20 = sn.id)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(series, 1);
    assert!(snapshots > 0);
}

fn tunnels_config(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(s, "[[tunnels]]\nname = \"t{i}\"\nport = {}\n", 40_000 + i);
    }
    s
}

fn snapshots_of_run(conn: &rusqlite::Connection, run: i64) -> i64 {
    conn.query_row(
        "SELECT COUNT(*) FROM snapshots WHERE run_id = ?1",
        [run],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn sigkill_during_writes_loses_at_most_the_last_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("moonfrp.toml");
    // 500 tunnels: ≈ 11,000 series, so each write takes long enough to be killed inside.
    std::fs::write(&config, tunnels_config(500)).unwrap();
    let mut taken = Vec::new();
    for round in 0..4 {
        let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
            .data_dir(&data)
            .start();
        let m = agent.wait_for("two stored snapshots", |m| {
            m.get("moonfrp_history_writes_total", &[("result", "ok")])
                .unwrap_or(0.0)
                >= 2.0
        });
        assert_eq!(
            m.get("moonfrp_history_recoveries_total", &[]),
            Some(0.0),
            "round {round}: the database was damaged by the previous SIGKILL:\n{}",
            agent.log()
        );
        // Kill right after a snapshot is published: its write is starting or running.
        let before = m.get("moonfrp_agent_snapshots_total", &[]).unwrap();
        let seen = loop {
            let s = agent
                .metrics()
                .get("moonfrp_agent_snapshots_total", &[])
                .unwrap();
            if s > before {
                break s;
            }
            thread::sleep(Duration::from_millis(2));
        };
        agent.signal(libc::SIGKILL);
        while agent.exited().is_none() {
            thread::sleep(Duration::from_millis(10));
        }
        taken.push(seen as i64);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let conn = db(&data);
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
    for (i, seen) in taken.iter().enumerate() {
        let stored = snapshots_of_run(&conn, i64::try_from(i).unwrap() + 1);
        assert!(
            stored >= seen - 1 && stored <= *seen,
            "run {}: {stored} stored of {seen} taken",
            i + 1
        );
    }
}

/// Sends a steady stream of 1,000-byte datagrams to 127.0.0.1:`port` until dropped.
struct Stream {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Stream {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rx = moonfrp_tests::bind_udp(port);
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let s = stop.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let _ = rx.recv(&mut buf);
            }
        });
        let s = stop.clone();
        let writer = thread::spawn(move || {
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            while !s.load(Ordering::Relaxed) {
                tx.send_to(&[1u8; 1000], (Ipv4Addr::LOCALHOST, port))
                    .unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            threads: vec![reader, writer],
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn history_spans_a_restart_and_a_counter_reset_without_negative_rates_or_spikes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("moonfrp.toml");
    let port = free_port();
    let with = format!("[[tunnels]]\nname = \"u\"\nport = {port}\nproto = \"udp\"\n");
    std::fs::write(&config, &with).unwrap();
    let _stream = Stream::start(port);
    let cmd = AgentCmd::new(&["--config", config.to_str().unwrap()]).data_dir(&data);

    let a = cmd.clone().start();
    a.wait_snapshots(4);
    let stopped = Instant::now();
    assert!(a.stop().success());
    thread::sleep(Duration::from_secs(3));
    let b = cmd.start();
    let restart = stopped.elapsed().as_secs_f64();
    b.wait_snapshots(4);
    // A counter reset inside one run: the tunnel goes away and comes back from zero.
    std::fs::write(&config, "").unwrap();
    b.signal(libc::SIGHUP);
    b.wait_for("the tunnel to go", |m| {
        m.with_label("tunnel", "u").is_empty()
    });
    b.wait_snapshots(2);
    std::fs::write(&config, &with).unwrap();
    b.signal(libc::SIGHUP);
    b.wait_for("the tunnel to return", |m| {
        !m.with_label("tunnel", "u").is_empty()
    });
    b.wait_snapshots(4);

    let (_, _, v) = api(
        &b,
        "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=u&since=10m&rate=true",
    );
    let points = samples(&v);
    let rates: Vec<f64> = points.iter().map(|(_, r)| *r).collect();
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        median > 10_000.0,
        "the stream runs at ≈ 100 kB/s: {rates:?}"
    );
    assert!(
        rates.iter().all(|r| *r >= 0.0),
        "a negative rate: {rates:?}"
    );
    assert!(
        rates.iter().all(|r| *r <= 2.5 * median),
        "a spike: {rates:?}"
    );
    // No dip towards 0 B/s at the restart while the stream never stopped: the new run's first
    // sample gives no rate (when its counters began is unknown), the next one the stream's.
    let after_restart = points
        .windows(2)
        .find(|w| w[1].0 - w[0].0 > 1.6)
        .map(|w| w[1].1)
        .expect("the restart leaves a gap");
    assert!(
        after_restart > 0.3 * median,
        "{after_restart} B/s right after the restart, median {median}: {points:?}"
    );
    // The raw values show both resets: after the restart and after the tunnel came back.
    let (_, _, v) = api(
        &b,
        "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=u&since=10m",
    );
    let values = samples(&v);
    let drops = values.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert_eq!(drops, 2, "{values:?}");
    // The new run's first snapshot comes at once (little counted yet); from the next one on the
    // rate is back to the stream's.
    let after = values.windows(2).position(|w| w[1].1 < w[0].1).unwrap() + 2;
    let t_after = values[after].0;
    let rate_after = samples(&api(
        &b,
        "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=u&since=10m&rate=true",
    )
    .2)
    .into_iter()
    .find(|(t, _)| *t == t_after)
    .unwrap()
    .1;
    assert!(rate_after > 0.3 * median, "{rate_after} vs median {median}");

    // Snapshots: one per second, with one gap no longer than the restart took.
    let (_, _, v) = api(
        &b,
        "/api/v1/history?metric=moonfrp_agent_snapshots_total&since=10m",
    );
    let ts: Vec<f64> = samples(&v).into_iter().map(|(t, _)| t).collect();
    let gaps: Vec<f64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 1.6)
        .collect();
    assert_eq!(gaps.len(), 1, "{ts:?}");
    assert!(
        gaps[0] <= restart + 1.5,
        "gap {} for a {restart} s restart",
        gaps[0]
    );
}

#[test]
fn a_damaged_database_is_moved_aside_and_history_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(data.join("history.db"), &garbage).unwrap();
    let agent = AgentCmd::new(&[]).data_dir(&data).start();
    let m = agent.wait_for("a write to the new database", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(m.get("moonfrp_history_recoveries_total", &[]), Some(1.0));
    assert!(agent.log().contains("moved it aside"), "{}", agent.log());
    let moved: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("history.db.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(std::fs::read(&moved[0]).unwrap(), garbage);
    let n: i64 = db(&data)
        .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    assert!(n >= 1);
}

#[test]
fn a_full_disk_costs_history_only_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let d = data.to_str().unwrap();
    let agent = AgentCmd::new(&[])
        .data_dir(&data)
        .in_private_mounts(&format!(
            "mount -t tmpfs -o size=4m,mode=0700 moonfrp-test {d}"
        ))
        .start();
    agent.wait_for("a stored snapshot", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    });
    // The agent's view of the directory (its own mount namespace), filled to the last byte.
    let inside = Path::new(&format!("/proc/{}/root", agent.pid())).join(d.trim_start_matches('/'));
    let filler = inside.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
    }
    let m = agent.wait_for("failed history writes", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "error")])
            .unwrap_or(0.0)
            >= 2.0
    });
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(0.0));
    // Collection and /metrics carry on.
    let before = m.get("moonfrp_agent_snapshots_total", &[]).unwrap();
    let m = agent.wait_snapshots(2);
    assert!(m.get("moonfrp_agent_snapshots_total", &[]).unwrap() >= before + 2.0);
    assert!(agent.log().contains("history: cannot store this interval"));
    std::fs::remove_file(&filler).unwrap();
    let ok = m
        .get("moonfrp_history_writes_total", &[("result", "ok")])
        .unwrap();
    let m = agent.wait_for("writes to resume", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "ok")])
            .unwrap_or(0.0)
            >= ok + 2.0
    });
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(1.0));
    assert!(agent.log().contains("history writes work again"));
}

fn history_cmd(args: &[&str]) -> (i32, String, String) {
    moonfrp_tests::agent_command(&[&["history"], args].concat())
}

#[test]
fn history_command_asks_the_agent_then_reads_the_file_when_it_is_gone() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentCmd::new(&["-t", &format!("web={port}")])
        .data_dir(dir.path())
        .start();
    send_tcp(port, 4_321);
    agent.wait_for("the bytes in history", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 4_321.0
            && m.get("moonfrp_history_writes_total", &[("result", "ok")])
                .unwrap_or(0.0)
                >= 3.0
    });
    agent.wait_snapshots(2);
    let listen = agent.addr.to_string();
    let data = agent.data_dir.to_str().unwrap().to_owned();
    let metric = "moonfrp_tunnel_receive_payload_bytes_total";
    let common = [
        "--metric",
        metric,
        "--tunnel",
        "web",
        "--since",
        "10m",
        "--listen",
        &listen,
        "--data-dir",
        &data,
    ];
    let (code, table, err) = history_cmd(&common);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "the agent answered, no fallback: {err}");
    let head = table.lines().next().unwrap();
    assert!(
        head.starts_with(&format!(
            "{metric}{{port=\"{port}\",proto=\"tcp\",tunnel=\"web\"}} (bytes), raw resolution"
        )),
        "{table}"
    );
    assert!(table.trim_end().ends_with(" 4321"), "{table}");
    let (code, csv, _) = history_cmd(&[&common[..], &["--csv"]].concat());
    assert_eq!(code, 0);
    assert!(csv.starts_with("timestamp,time,metric,port,proto,tunnel,value\n"));
    let (code, _, err) = history_cmd(&["--metric", "nope", "--listen", &listen]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown metric `nope`"), "{err}");

    // The agent stops: the same command reads the file and says so.
    assert!(agent.stop().success());
    let (code, offline, err) = history_cmd(&common);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reading"), "{err}");
    assert!(offline.trim_end().ends_with(" 4321"), "{offline}");
    let (code, _, err) = history_cmd(&[
        "--metric",
        metric,
        "--listen",
        &listen,
        "--data-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no history database at /nonexistent/history.db"),
        "{err}"
    );
}

/// Compaction in the real agent: once 60 snapshots are stored, the oldest become a window and
/// move into chunks a slice per interval. SIGKILL in the middle of that, twice, leaves a sound
/// file in which every snapshot of a series is there exactly once (chunk or raw row), as the
/// `history` command reads it from the file.
#[test]
fn sigkill_during_compaction_keeps_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("moonfrp.toml");
    // 300 tunnels: ≈ 6,600 series, so a window takes the agent many intervals to compact.
    std::fs::write(&config, tunnels_config(300)).unwrap();
    let counter = |m: &moonfrp_tests::Metrics, name: &str| m.get(name, &[]).unwrap_or(0.0);
    for round in 0..3 {
        let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
            .data_dir(&data)
            .start();
        // First run: 60 snapshots, then compaction starts. Later runs: it goes on at once.
        moonfrp_tests::poll("compaction under way", Duration::from_secs(150), || {
            let m = agent.metrics();
            (counter(&m, "moonfrp_history_compacted_samples_total") > 0.0).then_some(())
        });
        if round == 2 {
            assert!(agent.stop().success());
            break;
        }
        // Kill right after a snapshot: its write, and the compaction slice after it, are running.
        let before = counter(&agent.metrics(), "moonfrp_agent_snapshots_total");
        while counter(&agent.metrics(), "moonfrp_agent_snapshots_total") <= before {
            thread::sleep(Duration::from_millis(2));
        }
        thread::sleep(Duration::from_millis(20 * round));
        agent.signal(libc::SIGKILL);
        while agent.exited().is_none() {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let conn = db(&data);
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
    // Blocks of chunks: a row holds the chunks of 16 series.
    let (snapshots, windows, blocks): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM snapshots), (SELECT COUNT(*) FROM windows),
                    (SELECT COUNT(*) FROM chunk_blocks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    eprintln!("{snapshots} snapshots, {windows} windows, {blocks} blocks of chunks");
    assert!(
        windows >= 1 && blocks > 20,
        "{windows} windows, {blocks} blocks of chunks"
    );
    // A tunnel's series from the first tunnel and the last: one point per snapshot, in order.
    let data_dir = data.to_str().unwrap();
    for tunnel in ["t0", "t299"] {
        let (code, csv, err) = history_cmd(&[
            "--metric",
            "moonfrp_tunnel_connections_active",
            "--tunnel",
            tunnel,
            "--from",
            "0",
            "--csv",
            "--data-dir",
            data_dir,
            "--offline",
        ]);
        assert_eq!(code, 0, "{err}");
        let times: Vec<f64> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(i64::try_from(times.len()).unwrap(), snapshots, "{tunnel}");
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{tunnel}: out of order or twice"
        );
    }
}
