//! Built-in load generators on loopback: bulk TCP, small-packet UDP, and connection churn, each
//! flat out or at a fixed rate, bounded in time. They report what got through per second.
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

    /// The agent's `--tunnel` value watching this load on `port`.
    pub fn tunnel_flag(self, port: u16) -> String {
        match self {
            Self::UdpSmall => format!("load={port}/udp"),
            Self::TcpBulk | Self::TcpChurn => format!("load={port}"),
        }
    }
}

/// Runs `kind` against 127.0.0.1:`port` for `dur`; `rate` is units per second (bytes for TCP
/// bulk), `None` for flat out. Returns the achieved rate in the kind's unit.
pub fn run(kind: Kind, port: u16, dur: Duration, rate: Option<f64>) -> anyhow::Result<f64> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match kind {
        Kind::TcpBulk => tcp_bulk(addr, dur, rate).map(|bps| bps * 8.0 / 1e9),
        Kind::UdpSmall => udp_small(addr, dur, rate),
        Kind::TcpChurn => tcp_churn(addr, dur, rate),
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

fn tcp_bulk(addr: SocketAddr, dur: Duration, rate: Option<f64>) -> anyhow::Result<f64> {
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
    let mut c = TcpStream::connect(addr)?;
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

fn udp_small(addr: SocketAddr, dur: Duration, rate: Option<f64>) -> anyhow::Result<f64> {
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
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
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
