//! What the per-packet path must hold beyond single transfers: a long-lived connection's bytes
//! while it stays open, a thousand connections inside one interval, a connection older than the
//! agent, counters that never go backwards under heavy churn, and a tunnel served from another
//! network namespace.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, AgentCmd, Metrics, free_port, host_retrans_segs};

const RX_PAYLOAD: &str = "moonfrp_tunnel_receive_payload_bytes_total";
const TX_PAYLOAD: &str = "moonfrp_tunnel_transmit_payload_bytes_total";

/// Reads every connection accepted on `listener` to its end, in the background; the total read.
fn sink(listener: TcpListener) -> Arc<AtomicU64> {
    let total = Arc::new(AtomicU64::new(0));
    let t = total.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let t = t.clone();
            thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    t.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    total
}

/// Exact when nothing on the host was retransmitted meanwhile, else within one segment per
/// retransmission.
fn assert_bytes(got: f64, want: u64, retrans: u64, what: &str) {
    let got = got as u64;
    if retrans == 0 {
        assert_eq!(got, want, "{what}");
    } else {
        assert!(
            got >= want && got - want <= retrans * 65_535,
            "{what}: {got} vs {want} with {retrans} retransmissions on the host"
        );
    }
}

fn inbound_opened(m: &Metrics, tunnel: &str) -> Option<f64> {
    m.get(
        "moonfrp_tunnel_connections_opened_total",
        &[("tunnel", tunnel), ("direction", "inbound")],
    )
}

#[test]
fn a_long_lived_connections_bytes_appear_while_it_stays_open() {
    let port = free_port();
    let listener = moonfrp_tests::bind_tcp(port);
    let read = sink(listener);
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let before = host_retrans_segs();
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut sent = 0u64;
    for round in 1..=3u64 {
        let chunk = vec![7u8; 250_000 * round as usize];
        c.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
        moonfrp_tests::poll("the sink to read it", moonfrp_tests::TIMEOUT, || {
            (read.load(Ordering::Relaxed) == sent).then_some(())
        });
        // The connection stays open: its bytes are in the next snapshot (1 s interval), not at
        // its close.
        let written = Instant::now();
        let m = agent.wait_for("the bytes of the open connection", |m| {
            m.get(RX_PAYLOAD, &[("tunnel", "web")]) >= Some(sent as f64)
        });
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "round {round}: took {:?}",
            written.elapsed()
        );
        assert_bytes(
            m.tunnel("web", RX_PAYLOAD),
            sent,
            host_retrans_segs() - before,
            "receive payload while open",
        );
        assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 1.0);
    }
    drop(c);
}

#[test]
fn a_thousand_connections_inside_one_interval_are_counted_exactly() {
    const CONNS: u64 = 1_000;
    const UP: usize = 1_500;
    const DOWN: usize = 700;
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).unwrap();
    let agent = AgentCmd::new(&["-t", &format!("web={port}")])
        .interval("10s")
        .start();
    let server = thread::spawn(move || {
        for _ in 0..CONNS {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0; UP];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&[b'd'; DOWN]).unwrap();
            // The client closes first: every byte is through both ways before the next.
            assert_eq!(s.read(&mut [0; 1]).unwrap(), 0);
        }
    });
    let snaps = |m: &Metrics| m.get("moonfrp_agent_snapshots_total", &[]).unwrap_or(0.0);
    let seen = snaps(&agent.metrics());
    let before = host_retrans_segs();
    let started = Instant::now();
    for _ in 0..CONNS {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&[b'u'; UP]).unwrap();
        let mut buf = [0; DOWN];
        c.read_exact(&mut buf).unwrap();
    }
    server.join().unwrap();
    let took = started.elapsed();
    let retrans = host_retrans_segs() - before;
    let m = agent.wait_for("1,000 closed connections", |m| {
        m.get(
            "moonfrp_tunnel_connections_closed_total",
            &[("tunnel", "web")],
        ) == Some(CONNS as f64)
    });
    eprintln!(
        "{CONNS} connections in {took:?}; snapshots during them: {}",
        snaps(&m) - seen - 1.0
    );
    assert!(
        took < Duration::from_secs(10),
        "not inside one interval: {took:?}"
    );
    assert_eq!(inbound_opened(&m, "web"), Some(CONNS as f64));
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 0.0);
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connection_duration_seconds_count"),
        CONNS as f64
    );
    assert_bytes(
        m.tunnel("web", RX_PAYLOAD),
        CONNS * UP as u64,
        retrans,
        "receive payload",
    );
    assert_bytes(
        m.tunnel("web", TX_PAYLOAD),
        CONNS * DOWN as u64,
        retrans,
        "transmit payload",
    );
}

#[test]
fn a_connection_open_before_the_agent_counts_only_what_flows_after() {
    let port = free_port();
    let listener = moonfrp_tests::bind_tcp(port);
    let read = sink(listener);
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    c.write_all(&vec![1u8; 400_000]).unwrap();
    moonfrp_tests::poll("the early bytes read", moonfrp_tests::TIMEOUT, || {
        (read.load(Ordering::Relaxed) == 400_000).then_some(())
    });
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let m = agent.wait_snapshots(1);
    assert_eq!(
        m.tunnel("web", RX_PAYLOAD),
        0.0,
        "bytes from before the start"
    );
    let before = host_retrans_segs();
    c.write_all(&vec![2u8; 123_457]).unwrap();
    moonfrp_tests::poll("the late bytes read", moonfrp_tests::TIMEOUT, || {
        (read.load(Ordering::Relaxed) == 400_000 + 123_457).then_some(())
    });
    let m = agent.wait_for("the bytes sent after the start", |m| {
        m.get(RX_PAYLOAD, &[("tunnel", "web")]) >= Some(123_457.0)
    });
    assert_bytes(
        m.tunnel("web", RX_PAYLOAD),
        123_457,
        host_retrans_segs() - before,
        "receive payload after the start",
    );
    assert_eq!(inbound_opened(&m, "web"), Some(0.0));
}

/// Every sample of `tunnel` from a scrape, by name and labels.
fn tunnel_samples(m: &Metrics, tunnel: &str) -> Vec<(String, f64)> {
    m.with_label("tunnel", tunnel)
        .into_iter()
        .filter(|s| {
            s.name.ends_with("_total")
                || s.name.ends_with("_bucket")
                || s.name.ends_with("_count")
                || s.name.ends_with("_sum")
        })
        .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
        .collect()
}

#[test]
fn a_watched_ports_counters_never_decrease_under_heavy_churn() {
    const FOR: Duration = Duration::from_mins(1);
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let server = {
        let stop = stop.clone();
        thread::spawn(move || {
            // The server writes a little and closes first: TIME_WAIT stays on its side.
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"hello");
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(50));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })
    };
    // Two clients, paced together to at most 10,000 connections a second.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, made) = (stop.clone(), made.clone());
            thread::spawn(move || {
                let start = Instant::now();
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = TcpStream::connect(addr) else {
                        continue;
                    };
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                    let n = made.fetch_add(1, Ordering::Relaxed) + 1;
                    let due = Duration::from_secs_f64(n as f64 / 10_000.0);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        thread::sleep(wait);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut last: Vec<(String, f64)> = Vec::new();
    let mut checks = 0;
    let mut seen_seq = 0.0;
    while started.elapsed() < FOR {
        let m = agent.metrics();
        let seq = m.get("moonfrp_agent_snapshots_total", &[]).unwrap_or(0.0);
        if seq != seen_seq {
            seen_seq = seq;
            let now = tunnel_samples(&m, "web");
            for (key, v) in &now {
                if let Some((_, old)) = last.iter().find(|(k, _)| k == key) {
                    assert!(v >= old, "{key} went from {old} to {v} at snapshot {seq}");
                }
            }
            assert!(!now.is_empty(), "no series of web");
            last = now;
            checks += 1;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
    let made = made.load(Ordering::Relaxed);
    let rate = made as f64 / started.elapsed().as_secs_f64();
    eprintln!("{made} connections, {rate:.0}/s, {checks} snapshots checked");
    assert!(checks >= 40, "only {checks} snapshots in {FOR:?}");
    // On a loaded 2-core runner the clients may not reach the pace; they must churn hard still.
    assert!(rate > 2_000.0, "only {rate:.0} connections/s");
    let m = agent.wait_for("every connection counted", |m| {
        inbound_opened(m, "web") == Some(made as f64)
    });
    assert_eq!(
        m.tunnel("web", "moonfrp_tunnel_connections_closed_total"),
        made as f64
    );
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: an ioctl on a fresh datagram socket with a zeroed, named ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut req),
            0,
            "SIOCSIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

#[test]
fn a_tunnel_served_from_another_network_namespace_is_counted() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    // A thread of its own in a new network namespace (as a container's frps would be): server
    // and client talk over that namespace's loopback, which the agent's namespace cannot see.
    let (up, down) = (321_000usize, 45_678usize);
    let inside = thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        loopback_up();
        let listener = moonfrp_tests::bind_tcp(port);
        let before = host_retrans_segs();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0; up];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&vec![b'd'; down]).unwrap();
            assert_eq!(s.read(&mut [0; 1]).unwrap(), 0);
        });
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        c.write_all(&vec![b'u'; up]).unwrap();
        let mut buf = vec![0; down];
        c.read_exact(&mut buf).unwrap();
        drop(c);
        server.join().unwrap();
        // Read from this thread's namespace: the retransmissions of this one.
        host_retrans_segs() - before
    });
    let retrans = inside.join().unwrap();
    let m = agent.wait_for("the other namespace's connection closed", |m| {
        m.get(
            "moonfrp_tunnel_connections_closed_total",
            &[("tunnel", "web")],
        ) == Some(1.0)
    });
    assert_bytes(
        m.tunnel("web", RX_PAYLOAD),
        up as u64,
        retrans,
        "receive payload",
    );
    assert_bytes(
        m.tunnel("web", TX_PAYLOAD),
        down as u64,
        retrans,
        "transmit payload",
    );
    assert_eq!(inbound_opened(&m, "web"), Some(1.0));
}
