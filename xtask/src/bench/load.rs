//! Load generators on loopback: bulk TCP, small-packet UDP, and connection churn, each flat out
//! or at a fixed rate, bounded in time, from our own code; and bulk TCP and small-packet UDP from
//! iperf3 (Debian's), so that no figure rests on our load code alone. They report what got
//! through per second.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

/// The three kinds of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One TCP stream of 64 KiB writes; reported in Gbit/s of payload.
    TcpBulk,
    /// 64-byte UDP datagrams; reported in datagrams received per second.
    UdpSmall,
    /// Connect, server closes, client closes; reported in connections per second.
    TcpChurn,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::TcpBulk, Self::UdpSmall, Self::TcpChurn];

    pub const fn unit(self) -> &'static str {
        match self {
            Self::TcpBulk => "Gbit/s",
            Self::UdpSmall => "datagrams/s",
            Self::TcpChurn => "connections/s",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpBulk => "tcp bulk",
            Self::UdpSmall => "udp 64 B",
            Self::TcpChurn => "tcp churn",
        }
    }

    /// The agent's `--tunnel` value watching this kind of load on `port`, as tunnel `name`.
    pub fn tunnel_flag(self, name: &str, port: u16) -> String {
        match self {
            Self::UdpSmall => format!("{name}={port}/udp"),
            Self::TcpBulk | Self::TcpChurn => format!("{name}={port}"),
        }
    }
}

/// Which program makes the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// The generators of this file.
    Builtin,
    /// iperf3 (bulk TCP, and UDP with 64-byte datagrams; no churn).
    Iperf3,
}

impl Generator {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Builtin => "built-in",
            Self::Iperf3 => "iperf3",
        }
    }

    /// The kinds of load this generator makes.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Self::Builtin => &Kind::ALL,
            Self::Iperf3 => &[Kind::TcpBulk, Kind::UdpSmall],
        }
    }
}

/// Where a load runs: the server's port, and the client's where it is fixed (bulk TCP and UDP:
/// then both ends of every packet can be watched); churn's clients take ephemeral ports.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub server: u16,
    pub client: Option<u16>,
}

/// Runs `kind` against 127.0.0.1:`ports.server` for `dur`; `rate` is units per second (bytes
/// for TCP bulk), `None` for flat out (iperf3 runs flat out only). Returns the achieved rate in
/// the kind's unit.
pub fn run(
    generator: Generator,
    kind: Kind,
    ports: Ports,
    dur: Duration,
    rate: Option<f64>,
) -> anyhow::Result<f64> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.server));
    match (generator, kind) {
        (Generator::Builtin, Kind::TcpBulk) => {
            tcp_bulk(addr, ports.client, dur, rate).map(|bps| bps * 8.0 / 1e9)
        }
        (Generator::Builtin, Kind::UdpSmall) => udp_small(addr, ports.client, dur, rate),
        (Generator::Builtin, Kind::TcpChurn) => tcp_churn(addr, dur, rate),
        (Generator::Iperf3, _) => iperf3(kind, ports, dur),
    }
}

/// A TCP connection to `addr` from 127.0.0.1:`from` (any port when `None`).
fn connect_from(addr: SocketAddr, from: Option<u16>) -> anyhow::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let Some(from) = from else {
        return Ok(TcpStream::connect(addr)?);
    };
    let sin = |port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls with valid, sized address structs; the fd is owned by the
    // returned stream (or closed on error).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let local = sin(from);
        anyhow::ensure!(
            libc::bind(fd, (&raw const local).cast(), len) == 0,
            "bind 127.0.0.1:{from}: {}",
            std::io::Error::last_os_error()
        );
        let remote = sin(addr.port());
        anyhow::ensure!(
            libc::connect(fd, (&raw const remote).cast(), len) == 0,
            "connect {addr} from port {from}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Whether something listens on TCP 127.0.0.1:`port` (from /proc/net/tcp).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
        })
    })
}

/// One iperf3 run (server and client on loopback, the client's data socket on `ports.client`),
/// whole seconds only (iperf3's `-t`). UDP: datagrams the server received per second; TCP:
/// Gbit/s of payload received.
fn iperf3(kind: Kind, ports: Ports, dur: Duration) -> anyhow::Result<f64> {
    use std::process::{Command, Stdio};
    let port = ports.server.to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 (Debian package iperf3)")?;
    let started = Instant::now();
    while !listening(ports.server) {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            let _ = server.wait();
            anyhow::bail!("iperf3 -s did not listen on 127.0.0.1:{port} within 10 s");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let secs = dur.as_secs().max(1).to_string();
    let mut client = Command::new("iperf3");
    client.args(["-c", "127.0.0.1", "-p", &port, "-t", &secs, "-J"]);
    if let Some(c) = ports.client {
        client.args(["--cport", &c.to_string()]);
    }
    if kind == Kind::UdpSmall {
        client.args(["-u", "-l", "64", "-b", "0"]);
    }
    let out = client.output().context("cannot run iperf3 -c")?;
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 -c printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("iperf3: {e}");
    }
    let end = &v["end"];
    match kind {
        Kind::UdpSmall => {
            let sum = &end["sum"];
            let got = sum["packets"].as_f64().unwrap_or(0.0)
                - sum["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = sum["seconds"]
                .as_f64()
                .context("iperf3: no end.sum.seconds")?;
            Ok(got / secs)
        }
        _ => end["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3: no end.sum_received.bits_per_second"),
    }
}

/// Sleeps as needed so that `done` units by `start + elapsed` do not exceed `rate`.
fn pace(start: Instant, done: f64, rate: Option<f64>) {
    if let Some(rate) = rate {
        let due = Duration::from_secs_f64(done / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
}

fn tcp_bulk(
    addr: SocketAddr,
    from: Option<u16>,
    dur: Duration,
    rate: Option<f64>,
) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    let server = thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0; 256 * 1024];
        let mut total = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut c = connect_from(addr, from)?;
    let chunk = vec![0x5a; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0.0;
    while start.elapsed() < dur {
        c.write_all(&chunk)?;
        sent += chunk.len() as f64;
        pace(start, sent, rate);
    }
    drop(c);
    let got = server.join().expect("server thread")?;
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

fn udp_small(
    addr: SocketAddr,
    from: Option<u16>,
    dur: Duration,
    rate: Option<f64>,
) -> anyhow::Result<f64> {
    let rx = UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let server = {
        let (stop, received) = (stop.clone(), received.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match rx.recv(&mut buf) {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, from.unwrap_or(0)))
        .with_context(|| format!("bind udp 127.0.0.1:{}", from.unwrap_or(0)))?;
    tx.connect(addr)?;
    let payload = [0xa5u8; 64];
    let start = Instant::now();
    let mut sent = 0.0;
    while start.elapsed() < dur {
        // A full receive queue makes the send fail or drop: that is the load's ceiling.
        let _ = tx.send(&payload);
        sent += 1.0;
        pace(start, sent, rate);
    }
    let elapsed = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(60));
    stop.store(true, Ordering::Relaxed);
    server.join().expect("udp receiver");
    Ok(received.load(Ordering::Relaxed) as f64 / elapsed)
}

fn tcp_churn(addr: SocketAddr, dur: Duration, rate: Option<f64>) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        thread::spawn(move || {
            // The server closes first, so TIME_WAIT stays on its side and the client's
            // ephemeral ports are free again at once.
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_micros(50));
                    }
                    Err(_) => return,
                }
            }
        })
    };
    let start = Instant::now();
    let mut done = 0.0;
    let mut buf = [0u8; 1];
    while start.elapsed() < dur {
        let mut c = TcpStream::connect(addr)?;
        // Wait for the server's FIN, then close.
        let _ = c.read(&mut buf);
        drop(c);
        done += 1.0;
        pace(start, done, rate);
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    server.join().expect("churn server");
    Ok(done / elapsed)
}
