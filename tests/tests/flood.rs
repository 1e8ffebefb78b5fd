//! HTTP floods and file descriptors: 1,000 clients asking `/api/v1/status` at once and 2,000
//! idle connections, against an agent started with the usual soft limit of 1,024 open files.
//! Collections keep their 1 s interval, no collector fails, refused requests are counted.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{AgentCmd, free_port};

/// Raises this test process's own soft open-files limit: it holds 3,000 sockets.
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
    }
    assert!(
        lim.rlim_max >= 4096,
        "the hard open-files limit is {}",
        lim.rlim_max
    );
    lim.rlim_max
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    busy: AtomicU64,
    /// Closed or reset without an answer, or no answer in time.
    dropped: AtomicU64,
}

/// One client: `GET /api/v1/status` again and again until `until`.
fn client(addr: SocketAddr, until: Instant, tally: &Tally) {
    while Instant::now() < until {
        let answer = (|| -> std::io::Result<u16> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(
                b"GET /api/v1/status HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
            )?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head)?;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            Ok(std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0))
        })();
        match answer {
            Ok(200) => tally.ok.fetch_add(1, Relaxed),
            Ok(503) => tally.busy.fetch_add(1, Relaxed),
            _ => tally.dropped.fetch_add(1, Relaxed),
        };
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_request_flood_and_idle_connections_leave_collections_alone() {
    let hard = raise_own_nofile();
    let port = free_port();
    let agent = AgentCmd::new(&["-t", &format!("web={port}")])
        .wrapper(&["prlimit", &format!("--nofile=1024:{hard}"), "--"])
        .log_level("info")
        .start();
    let before = agent.metrics();
    assert_eq!(
        before.get("process_max_fds", &[]),
        Some(hard as f64),
        "the agent raises its soft limit to the hard one"
    );
    assert!(agent.log().contains("raised the open-files limit"));

    let flood_for = Duration::from_secs(15);
    let started = Instant::now();
    let until = started + flood_for;
    let idle: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(agent.addr).ok())
        .collect();
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let (t, addr) = (tally.clone(), agent.addr);
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || client(addr, until, &t))
                .unwrap()
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    drop(idle);
    let flood_ended = started.elapsed().as_secs_f64();

    let m = agent.wait_snapshots(2);
    let (ok, busy, dropped) = (
        tally.ok.load(Relaxed),
        tally.busy.load(Relaxed),
        tally.dropped.load(Relaxed),
    );
    eprintln!("flood: {ok} answered, {busy} 503, {dropped} dropped, {flood_ended:.1} s");
    assert!(
        busy > 0,
        "no request was refused with 503: {ok} ok, {dropped} dropped"
    );
    assert!(m.limit("http_requests") >= busy as f64, "503s are counted");
    assert!(
        m.limit("http_connections") > 0.0,
        "connections over the cap are counted"
    );
    // No collector failed, for want of file descriptors or anything else.
    let failures: Vec<_> = m
        .samples
        .iter()
        .filter(|s| {
            (s.name == "moonfrp_agent_collector_success" && s.value != 1.0)
                || (s.name == "moonfrp_agent_collection_errors_total" && s.value > 0.0)
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}\n{}", agent.log());
    // Collections kept their interval through the flood.
    let ts = agent.snapshot_times();
    let gaps: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(ts.len() >= 15, "{ts:?}");
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    assert!(
        worst <= 1.5,
        "a collection interval of {worst:.3} s: {gaps:?}"
    );
    let log = agent.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("server.max_connections"))
            .count()
            <= 1 + flood_ended as usize / 60,
        "refused connections are logged at most once a minute:\n{log}"
    );
}
