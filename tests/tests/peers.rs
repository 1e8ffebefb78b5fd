//! Per-port peers: three clients (127.0.0.2–4) ranked with exact payload bytes, an ad-hoc port
//! watched only while `inspect` looks at it, the peer table staying within its bound when
//! 100,000 distinct peers send, and a busy peer's counts (kept in front of the table, moved into
//! it while being read) never going backwards.
use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    os::fd::FromRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, AgentCmd, free_port, http_get, poll};
use serde_json::Value;

/// Accepts connections on 127.0.0.1:`port` and reads them to the end, in the background.
fn sink(port: u16) {
    let listener = moonfrp_tests::bind_tcp(port);
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 16_384];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

/// A TCP connection to 127.0.0.1:`port` from `from` (any 127/8 address works on `lo`).
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls with valid, sized address structs; the fd is owned by the
    // returned stream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let local = addr(from, 0);
        assert_eq!(
            libc::bind(fd, (&raw const local).cast(), len),
            0,
            "bind {from}"
        );
        let remote = addr(Ipv4Addr::LOCALHOST, port);
        assert_eq!(
            libc::connect(fd, (&raw const remote).cast(), len),
            0,
            "connect from {from}"
        );
        TcpStream::from_raw_fd(fd)
    }
}

fn send_from(from: Ipv4Addr, port: u16, bytes: usize) {
    let mut c = connect_from(from, port);
    c.write_all(&vec![1u8; bytes]).unwrap();
}

fn peers(agent: &Agent, path: &str) -> Value {
    let (status, _, body) = http_get(agent.addr, path, None).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["data"].clone()
}

/// Each listed peer's (address, receive payload bytes, packets), in the answer's order.
fn received(d: &Value) -> Vec<(String, u64, u64)> {
    d["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap().to_owned(),
                p["receive_payload_bytes"].as_u64().unwrap(),
                p["packets"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn inspect(agent: &Agent, args: &[&str]) -> (i32, String, String) {
    let listen = agent.addr.to_string();
    moonfrp_tests::agent_command(&[&["inspect", "--listen", &listen], args].concat())
}

/// An agent watching TCP `web` on `port` (a sink reads what it gets), with `[kernel]` settings.
fn agent_with_kernel(kernel: &str) -> (tempfile::TempDir, u16, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    sink(port);
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(
        &config,
        format!("[kernel]\n{kernel}\n[[tunnels]]\nname = \"web\"\nport = {port}\n"),
    )
    .unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()]).start();
    (dir, port, agent)
}

/// An agent watching UDP tunnel `name` on a free port, with `[kernel]` settings.
fn udp_agent(name: &str, kernel: &str) -> (tempfile::TempDir, u16, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(
        &config,
        format!(
            "[kernel]\n{kernel}\n[[tunnels]]\nname = \"{name}\"\nport = {port}\nproto = \"udp\"\n"
        ),
    )
    .unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()]).start();
    (dir, port, agent)
}

#[test]
fn three_peers_ranked_with_exact_payload_bytes() {
    let port = free_port();
    sink(port);
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    for (last, bytes) in [(2, 30_000), (3, 10_000), (4, 20_000)] {
        send_from(Ipv4Addr::new(127, 0, 0, last), port, bytes);
    }
    let d = poll("three peers", moonfrp_tests::TIMEOUT, || {
        let d = peers(&agent, "/api/v1/tunnels/web/peers");
        let got: Vec<(String, u64)> = received(&d).into_iter().map(|(a, b, _)| (a, b)).collect();
        (got == [
            ("127.0.0.2".to_owned(), 30_000),
            ("127.0.0.4".to_owned(), 20_000),
            ("127.0.0.3".to_owned(), 10_000),
        ])
        .then_some(d)
    });
    for p in d["peers"].as_array().unwrap() {
        assert_eq!(p["connection_attempts"], 1, "{p}");
        assert_eq!(p["transmit_payload_bytes"], 0, "{p}");
    }
    assert_eq!(d["tunnel"], "web");
    assert_eq!(d["peers_total"], 3);
    // The table's own entries: a peer may still be only in a CPU's cache entry of the tunnel.
    let entries = d["table"]["entries"].as_u64().unwrap();
    assert!((1..=3).contains(&entries), "{entries} table entries");
    // Peers never reach /metrics.
    let m = agent.metrics();
    assert!(m.with_label("peer", "127.0.0.2").is_empty());
    // The command shows the same ranking; the connections closed, so durations are there too.
    let (code, out, err) = inspect(&agent, &["--tunnel", "web"]);
    assert_eq!(code, 0, "{err}");
    let order: Vec<usize> = ["127.0.0.2", "127.0.0.4", "127.0.0.3"]
        .iter()
        .map(|a| out.find(a).unwrap_or_else(|| panic!("{a} missing:\n{out}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(out.contains(" 30000 "), "{out}");
    let (code, _, err) = inspect(&agent, &["--tunnel", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no watched tunnel named `nope`"), "{err}");
}

#[test]
fn an_ad_hoc_port_is_watched_only_while_inspected() {
    let port = free_port();
    sink(port);
    let agent = Agent::start(&["-t", &format!("other={}", free_port())]);
    let name = format!("inspect-{port}-tcp");
    let sender = thread::spawn(move || {
        // Inside the 4 s window.
        thread::sleep(Duration::from_millis(1_500));
        send_from(Ipv4Addr::new(127, 0, 0, 5), port, 12_345);
    });
    let (code, out, err) = inspect(&agent, &["--port", &port.to_string(), "--seconds", "4"]);
    sender.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("watching {port}/tcp for 4 s")),
        "{err}"
    );
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("127.0.0.5"))
        .unwrap_or_else(|| panic!("no peer row:\n{out}"));
    assert!(row.contains(" 12345 "), "{row}");
    // Let go: the port's series are gone after the next snapshot.
    let m = agent.wait_snapshots(2);
    assert!(
        m.with_label("tunnel", &name).is_empty(),
        "{name} still watched"
    );
    let d = peers(&agent, &format!("/api/v1/peers?port={port}"));
    assert_eq!(d["tunnel"], Value::Null);
}

#[test]
fn the_peer_table_stays_within_its_bound_with_100k_peers() {
    let (_dir, port, agent) = udp_agent("dns", "peers = 1024");
    let rx = moonfrp_tests::bind_udp(port);
    rx.set_nonblocking(true).unwrap();
    let mut sent = 0u32;
    for i in 0..100_000u32 {
        let from = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let s = UdpSocket::bind((from, 0)).unwrap();
        s.send_to(b"x", (Ipv4Addr::LOCALHOST, port)).unwrap();
        sent += 1;
        if i % 256 == 0 {
            let mut buf = [0u8; 16];
            while rx.recv(&mut buf).is_ok() {}
        }
    }
    assert_eq!(sent, 100_000);
    let d = peers(
        &agent,
        &format!("/api/v1/peers?port={port}&proto=udp&limit=5"),
    );
    let entries = d["table"]["entries"].as_u64().unwrap();
    assert!(entries <= 1024, "{entries} entries in a 1024-entry table");
    assert!(
        entries > 500,
        "the table holds the most recent peers: {entries}"
    );
    assert_eq!(d["table"]["capacity"], 1024);
    assert_eq!(d["peers"].as_array().unwrap().len(), 5);
    // The most recent peer is there; the first ones were evicted.
    let all = peers(
        &agent,
        &format!("/api/v1/peers?port={port}&proto=udp&limit=2000"),
    );
    let addrs: Vec<&str> = all["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    assert!(
        addrs.contains(&"127.2.134.159"),
        "the last sender (99,999th) is kept"
    );
    assert!(
        !addrs.contains(&"127.1.0.0"),
        "the first sender was evicted"
    );
    let m = agent.wait_snapshots(1);
    assert_eq!(
        m.get("moonfrp_agent_bpf_map_max_entries", &[("map", "PEERS")]),
        Some(1024.0)
    );
}

#[test]
fn a_busy_peers_bytes_never_go_backwards_while_they_move_into_the_table() {
    // 127.0.0.6 floods a UDP port; 127.0.0.7 cuts in with 20 datagrams after every 200: the
    // slot's cache entry changes hands both ways (16 of another peer's in a row take it, its
    // counts moved into the table each time), and every 64 datagrams of the flood are moved there
    // too, all while the API is read as fast as it answers. A read that missed an amount in
    // flight would show a peer's bytes going down.
    let (_dir, port, agent) = udp_agent("flood", "");
    let rx = moonfrp_tests::bind_udp(port);
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let _ = rx.recv(&mut buf);
            }
        })
    };
    let reader = {
        let (stop, addr) = (Arc::clone(&stop), agent.addr);
        thread::spawn(move || {
            let mut last: HashMap<String, (u64, u64)> = HashMap::new();
            let (mut reads, mut backwards) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) =
                    http_get(addr, "/api/v1/tunnels/flood/peers", None).unwrap();
                assert_eq!(status, 200, "{body}");
                let d: Value = serde_json::from_str(&body).unwrap();
                for p in d["data"]["peers"].as_array().unwrap() {
                    let now = (
                        p["receive_bytes"].as_u64().unwrap(),
                        p["packets"].as_u64().unwrap(),
                    );
                    let addr = p["address"].as_str().unwrap().to_owned();
                    let before = last.insert(addr.clone(), now).unwrap_or_default();
                    if now.0 < before.0 || now.1 < before.1 {
                        backwards.push(format!("{addr}: {before:?} -> {now:?}"));
                    }
                }
                reads += 1;
            }
            (reads, backwards)
        })
    };
    let a = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 6), 0)).unwrap();
    let b = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 7), 0)).unwrap();
    let payload = [7u8; 100];
    let (mut na, mut nb) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for _ in 0..200 {
            a.send_to(&payload, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        for _ in 0..20 {
            b.send_to(&payload, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        (na, nb) = (na + 200, nb + 20);
    }
    // Let the reader see the last amounts move before it stops.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (reads, backwards) = reader.join().unwrap();
    drain.join().unwrap();
    assert!(
        backwards.is_empty(),
        "{} of {reads} reads went backwards: {backwards:?}",
        backwards.len()
    );
    assert!(
        reads >= 20,
        "only {reads} reads of the API during the flood"
    );
    // Exact at the end: each datagram once, wherever it was counted.
    let d = peers(&agent, "/api/v1/tunnels/flood/peers");
    assert_eq!(
        received(&d),
        [
            ("127.0.0.6".to_owned(), na * 100, na),
            ("127.0.0.7".to_owned(), nb * 100, nb)
        ],
        "{reads} reads during the flood"
    );
}

#[test]
fn opted_in_top_peers_reach_metrics_with_a_cap() {
    let (dir, port, agent) = agent_with_kernel("export_peers = 2");
    let config = dir.path().join("over-the-cap.toml");
    for (last, bytes) in [(2, 30_000), (3, 10_000), (4, 20_000)] {
        send_from(Ipv4Addr::new(127, 0, 0, last), port, bytes);
    }
    let m = agent.wait_for("the two busiest peers on /metrics", |m| {
        m.with_label("peer", "127.0.0.2").len() == 2 && m.with_label("peer", "127.0.0.4").len() == 2
    });
    assert!(
        m.with_label("peer", "127.0.0.3").is_empty(),
        "only the top 2"
    );
    let rx = m
        .get(
            "moonfrp_tunnel_peer_receive_bytes_total",
            &[("tunnel", "web"), ("peer", "127.0.0.2")],
        )
        .unwrap();
    assert!(rx > 30_000.0, "IP-layer bytes include the headers: {rx}");
    // Over the cap: refused at start, naming the key.
    std::fs::write(&config, "[kernel]\nexport_peers = 50\n").unwrap();
    let (code, _, err) =
        moonfrp_tests::agent_command(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`kernel.export_peers`") && err.contains("cap of 10"),
        "{err}"
    );
}

#[test]
fn peer_counting_can_be_switched_off() {
    let (_dir, port, agent) = agent_with_kernel("peers = 0");
    send_from(Ipv4Addr::new(127, 0, 0, 2), port, 5_000);
    agent.wait_for("the bytes counted per tunnel", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 5_000.0
    });
    let (status, _, body) = http_get(agent.addr, "/api/v1/tunnels/web/peers", None).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("peer counting is off"), "{body}");
}
