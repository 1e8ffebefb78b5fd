//! Counters that survive the agent: maps and links pinned in bpffs keep the programs counting
//! while the agent is stopped, and the next agent continues the same counters — checked with a
//! steady stream through a restart and a real Prometheus scraping across it; a layout that no
//! longer fits is replaced, and `cleanup` leaves nothing behind.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    thread,
    time::Duration,
};

use moonfrp_tests::{
    AgentCmd, Daemon, agent_command, bpf_object_exists, free_port, poll, prometheus_value,
};

/// A pin directory of this test only; removed (which detaches what is pinned) when dropped.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/moonfrp-test-{tag}-{}",
            std::process::id()
        )))
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn cleanup(&self) -> (i32, String) {
        let (code, out, err) = agent_command(&["cleanup", "--pin-dir", self.arg()]);
        (code, format!("{out}{err}"))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// A TCP server on 127.0.0.1:`port` that reads everything, and clients that keep sending: one
/// long connection writing 16 KiB every 5 ms, and a new short connection every 50 ms.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
    long: Option<thread::JoinHandle<TcpStream>>,
}

impl Stream {
    fn start(port: u16) -> Self {
        let listener = moonfrp_tests::bind_tcp(port);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let mut threads = vec![thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { break };
                thread::spawn(move || {
                    let mut buf = [0u8; 65_536];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        })];
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (s, n, st) = (sent.clone(), connections.clone(), stop.clone());
        let long = Some(thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            n.fetch_add(1, SeqCst);
            let chunk = [7u8; 16_384];
            while !st.load(SeqCst) {
                c.write_all(&chunk).unwrap();
                s.fetch_add(chunk.len() as u64, SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
            c
        }));
        let (s, n, st) = (sent.clone(), connections.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            while !st.load(SeqCst) {
                let mut c = TcpStream::connect(addr).unwrap();
                n.fetch_add(1, SeqCst);
                c.write_all(&[1u8; 1_000]).unwrap();
                s.fetch_add(1_000, SeqCst);
                drop(c);
                thread::sleep(Duration::from_millis(50));
            }
        }));
        Self {
            stop,
            sent,
            connections,
            threads,
            long,
        }
    }

    /// Stops sending: (bytes sent, connections made, the long connection, still open).
    fn finish(mut self) -> (u64, u64, TcpStream) {
        self.stop.store(true, SeqCst);
        // The short connections' client; the server thread stays blocked in accept and ends
        // with the test.
        for t in self.threads.drain(1..) {
            t.join().unwrap();
        }
        let long = self.long.take().unwrap().join().unwrap();
        (self.sent.load(SeqCst), self.connections.load(SeqCst), long)
    }
}

fn prometheus(dir: &Path, target: SocketAddr) -> (Daemon, SocketAddr) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: moonfrp\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let daemon = Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address={addr}"),
        ],
    );
    (daemon, addr)
}

const TUNNEL_COUNTERS: [&str; 4] = [
    "moonfrp_tunnel_receive_payload_bytes_total",
    "moonfrp_tunnel_receive_bytes_total",
    "moonfrp_tunnel_connections_opened_total",
    "moonfrp_tunnel_connections_closed_total",
];

#[test]
fn counters_survive_a_restart_of_the_agent() {
    let pins = PinDir::new("restart");
    let port = free_port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let data = tempfile::tempdir().unwrap();
    let cmd = AgentCmd::new(&["-t", &format!("web={port}"), "--pin-dir", pins.arg()])
        .listen(listen)
        .data_dir(data.path());
    let first = cmd.clone().start();
    assert!(first.log().contains("probe attached"), "{}", first.log());
    let prom_dir = tempfile::tempdir().unwrap();
    let (prom, prom_addr) = prometheus(prom_dir.path(), listen);
    let stream = Stream::start(port);
    poll("Prometheus sees the stream", Duration::from_mins(1), || {
        prometheus_value(
            prom_addr,
            "moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\"}",
        )
        .filter(|v| *v > 0.0)
    });
    thread::sleep(Duration::from_secs(2));

    // Down for 5 s while the stream goes on; the programs stay attached through their pins.
    let first_progs = first.prog_ids();
    assert!(first.stop().success());
    assert!(
        first_progs.iter().any(|id| bpf_object_exists(*id, false)),
        "every program went with the agent: nothing was pinned"
    );
    thread::sleep(Duration::from_secs(5));

    let second = cmd.start();
    let log = second.log();
    assert!(
        log.contains("continuing the counters pinned by the previous agent")
            && log.contains("continuing the previous agent's counters"),
        "{log}"
    );
    thread::sleep(Duration::from_secs(3));
    let (sent, connections, long_conn) = stream.finish();

    // Everything sent, the 5 s down included, is counted: exact payload bytes on loopback.
    let m = second.wait_for("every byte sent counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == sent as f64
    });
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[("tunnel", "web"), ("direction", "inbound")]
        ),
        Some(connections as f64)
    );
    // Only the long connection is still open (the active gauge spans both agents too).
    let m = second.wait_for("the short connections closed", |m| {
        m.tunnel("web", "moonfrp_tunnel_connections_closed_total") == connections as f64 - 1.0
    });
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 1.0);
    drop(long_conn);
    second.wait_for("the long connection closed", |m| {
        m.tunnel("web", "moonfrp_tunnel_connections_active") == 0.0
    });

    // Prometheus scraped across the restart and saw no counter reset.
    poll(
        "Prometheus has the final count",
        Duration::from_secs(30),
        || {
            prometheus_value(
                prom_addr,
                "moonfrp_tunnel_receive_payload_bytes_total{tunnel=\"web\"}",
            )
            .filter(|v| *v == sent as f64)
        },
    );
    // The scrapes did see the agent down (so the counters were read by two agents)...
    assert_eq!(
        prometheus_value(prom_addr, "min_over_time(up{job=\"moonfrp\"}[10m])"),
        Some(0.0)
    );
    // ...and no counter of the tunnel went back.
    for name in TUNNEL_COUNTERS {
        let q = format!("sum(resets({name}{{tunnel=\"web\"}}[10m]))");
        assert_eq!(
            prometheus_value(prom_addr, &q),
            Some(0.0),
            "{q}: {}",
            prom.log()
        );
    }

    // cleanup: the pins go, and the programs with them once the agent stops.
    let second_progs = second.prog_ids();
    let (code, out) = pins.cleanup();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("removed"), "{out}");
    assert!(!pins.0.exists());
    assert!(second.stop().success());
    // Programs are freed after an RCU grace period: give the kernel a moment.
    poll("every program unloaded", Duration::from_secs(10), || {
        first_progs
            .iter()
            .chain(&second_progs)
            .all(|id| !bpf_object_exists(*id, false))
            .then_some(())
    });
    let (code, out) = pins.cleanup();
    assert_eq!(code, 0);
    assert!(out.contains("nothing pinned"), "{out}");
}

#[test]
fn pinned_maps_of_other_sizes_are_replaced_and_say_so() {
    let pins = PinDir::new("layout");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(&config, "[kernel]\nslots = 64\n").unwrap();
    let cmd = |slots: &str| {
        std::fs::write(&config, format!("[kernel]\nslots = {slots}\n")).unwrap();
        AgentCmd::new(&[
            "-c",
            config.to_str().unwrap(),
            "-t",
            &format!("web={port}"),
            "--pin-dir",
            pins.arg(),
        ])
        .start()
    };
    let first = cmd("64");
    moonfrp_tests::send_tcp(port, 5_000);
    first.wait_for("the bytes counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 5_000.0
    });
    assert!(first.stop().success());

    // Another slot count: the pinned maps cannot be reused; replaced, counters from zero.
    let second = cmd("128");
    let log = second.log();
    assert!(
        log.contains("do not fit this configuration") && log.contains("TRAFFIC"),
        "{log}"
    );
    moonfrp_tests::send_tcp(port, 700);
    second.wait_for("only the new bytes counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 700.0
    });
    assert_eq!(
        second
            .metrics()
            .get("moonfrp_agent_watch_slots_capacity", &[]),
        Some(128.0)
    );
    drop(second);

    // Another layout version's directory beside ours is removed at start, and said.
    let stale = pins.0.join("v0");
    std::fs::create_dir_all(&stale).unwrap();
    let third = cmd("128");
    assert!(
        third.log().contains("another moonfrp layout") && !stale.exists(),
        "{}",
        third.log()
    );
}
