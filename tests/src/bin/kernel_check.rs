//! The checks `cargo xtask test-kernels` runs inside a VM, next to the agent (std only: it runs in
//! a busybox initramfs): exact payload bytes over TCP and UDP, v4 and v6, connections held then
//! closed, a refused connect; then it reads the agent's `/metrics` and prints one line per check,
//! `CHECK <name> want=<n> got=<n> ok|FAILED`. Exit 0 when every check holds.
//!
//! Usage: `kernel-check <agent addr> [--off-by N]` (N is added to every expectation: the harness's
//! own test that a wrong expectation fails the run).
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

/// Ports the agent is started with (see xtask/src/kernels.rs).
const TCP4: u16 = 6000;
const UDP4: u16 = 6001;
const TCP6: u16 = 6002;
const UDP6: u16 = 6003;
const REFUSED: u16 = 6004;
const TCP_BYTES: usize = 123_456;
const DATAGRAMS: usize = 10;
const DATAGRAM: usize = 100;
const HELD: usize = 5;

fn tcp_transfer(addr: SocketAddr) -> std::io::Result<usize> {
    let l = TcpListener::bind(addr)?;
    let reader = thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = l.accept()?;
        let mut buf = Vec::new();
        c.read_to_end(&mut buf)?;
        Ok(buf.len())
    });
    let mut c = TcpStream::connect(addr)?;
    c.write_all(&vec![7u8; TCP_BYTES])?;
    drop(c);
    reader.join().expect("reader")
}

fn udp_transfer(addr: SocketAddr, from: SocketAddr) -> std::io::Result<usize> {
    let r = UdpSocket::bind(addr)?;
    r.set_read_timeout(Some(Duration::from_secs(2)))?;
    let s = UdpSocket::bind(from)?;
    for _ in 0..DATAGRAMS {
        s.send_to(&[1u8; DATAGRAM], addr)?;
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..DATAGRAMS {
        got += r.recv_from(&mut buf)?.0;
    }
    Ok(got)
}

/// `GET /metrics` with HTTP/1.0.
fn scrape(agent: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(agent)?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {agent}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_owned()))
}

/// The value of the sample `name{…tunnel="t"…}`.
fn value(metrics: &str, name: &str, tunnel: &str) -> Option<f64> {
    let label = format!("tunnel=\"{tunnel}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9477".into());
    let off: f64 = match args.get(2).map(String::as_str) {
        Some("--off-by") => args.get(3).and_then(|n| n.parse().ok()).unwrap_or(0.0),
        _ => 0.0,
    };
    let lo4 = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let lo6 = |p| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    let mut sent = vec![
        ("tcp4", tcp_transfer(lo4(TCP4))),
        ("udp4", udp_transfer(lo4(UDP4), lo4(0))),
        ("tcp6", tcp_transfer(lo6(TCP6))),
        ("udp6", udp_transfer(lo6(UDP6), lo6(0))),
    ];
    // Connections held open on the TCP v4 port, then closed.
    let l = TcpListener::bind(lo4(TCP4)).expect("bind the held port");
    let held: Vec<(TcpStream, TcpStream)> = (0..HELD)
        .map(|_| {
            let c = TcpStream::connect(lo4(TCP4)).expect("connect");
            (c, l.accept().expect("accept").0)
        })
        .collect();
    let refused = TcpStream::connect(lo4(REFUSED)).is_err();
    thread::sleep(Duration::from_millis(2500));
    let during = scrape(&agent).unwrap_or_default();
    drop(held);
    thread::sleep(Duration::from_millis(2500));
    let after = scrape(&agent).unwrap_or_default();

    let mut checks: Vec<(String, f64, Option<f64>)> = Vec::new();
    for (name, result) in sent.drain(..) {
        let want = match result {
            Ok(n) => n as f64,
            Err(e) => {
                println!("CHECK {name}_transfer want=ok got=error:{e} FAILED");
                -1.0
            }
        };
        checks.push((
            format!("{name}_receive_payload_bytes"),
            want,
            value(&after, "moonfrp_tunnel_receive_payload_bytes_total", name),
        ));
    }
    let m = "moonfrp_tunnel_connections";
    checks.push((
        "tcp4_connections_active_held".into(),
        HELD as f64,
        value(&during, &format!("{m}_active"), "tcp4"),
    ));
    checks.push((
        "tcp4_connections_active_after".into(),
        0.0,
        value(&after, &format!("{m}_active"), "tcp4"),
    ));
    checks.push((
        "tcp4_connections_closed".into(),
        (HELD + 1) as f64,
        value(&after, &format!("{m}_closed_total"), "tcp4"),
    ));
    checks.push((
        "refused_connect".into(),
        1.0,
        refused
            .then(|| value(&after, &format!("{m}_refused_total"), "refused"))
            .flatten(),
    ));
    let mut ok = true;
    for (name, want, got) in checks {
        let want = want + off;
        let pass = got == Some(want);
        ok &= pass;
        println!(
            "CHECK {name} want={want} got={} {}",
            got.map_or_else(|| "none".into(), |g| g.to_string()),
            if pass { "ok" } else { "FAILED" }
        );
    }
    for l in after
        .lines()
        .filter(|l| l.starts_with("moonfrp_agent_probe_attached"))
    {
        println!("PROBE {l}");
    }
    std::process::exit(i32::from(!ok));
}
