//! The checks `cargo xtask test-kernels` runs inside a VM, next to the agent (std and libc only: it
//! runs in a busybox initramfs): exact payload bytes over TCP and UDP, v4 and v6 (for TCP, when
//! the sender sent something twice: between what was read and what was sent), connections held
//! then closed, refused connects (v4 and v6; two stray segments to the same port are not
//! refusals), resets sent and received, every probe attached, the history API's view of the
//! bytes; then it prints one line per check, `CHECK <name> want=<n>|<low>..<high> got=<n>
//! ok|FAILED`, and the exposition between `---- metrics ----` and
//! `---- end metrics ----` (promtool checks it on the host). Exit 0 when every check holds.
//!
//! Usage:
//! - `kernel_check --tunnels`: what the agent under test must watch, one `-t` value a line;
//! - `kernel_check <agent addr> [--lacks drop-reasons] [--off-by N]`: the checks. `--lacks`: the
//!   kernel is known to lack that (drop reasons: before 5.17), so the degradation the README
//!   states is expected instead of the count; N is added to every expectation (the harness's own
//!   test that a wrong expectation fails the run);
//! - `kernel_check <agent addr> --without-btf`, against an agent that cannot read the kernel's
//!   BTF: where refusals need it (5.17–6.9) they are not counted and the probe says why, and
//!   everything else is.
#[path = "../raw.rs"]
mod raw;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

/// The tunnels the agent under test watches (`kernel_check --tunnels` prints them, one `-t`
/// value a line, for whoever starts that agent: `xtask/src/kernels.rs`, `tests/tests/kernels.rs`).
const TUNNELS: [&str; 6] = [
    "tcp4=6000",
    "udp4=6001/udp",
    "tcp6=6002",
    "udp6=6003/udp",
    "refused=6004",
    "resets=6005",
];

/// Their ports.
const TCP4: u16 = 6000;
const UDP4: u16 = 6001;
const TCP6: u16 = 6002;
const UDP6: u16 = 6003;
const REFUSED: u16 = 6004;
const RESETS: u16 = 6005;
const TCP_BYTES: usize = 123_456;
const DATAGRAMS: usize = 10;
const DATAGRAM: usize = 100;
const HELD: usize = 5;

/// A TCP transfer as its two ends saw it: the bytes the reader read, and the data bytes the
/// sender's TCP put on the wire, retransmissions included (`tcpi_bytes_sent`). A segment sent
/// again after it had arrived (a retransmission timer firing early, as on a slow emulated CPU)
/// arrives twice and is counted twice, as the README says; so a watched port's payload count is
/// exact when nothing was sent twice, and between the two otherwise.
#[derive(Clone, Copy)]
struct Transfer {
    read: usize,
    sent: Option<u64>,
}

impl Transfer {
    fn want(self) -> Want {
        let read = self.read as f64;
        Want {
            low: read,
            high: self.sent.map_or(read, |s| (s as f64).max(read)),
        }
    }
}

/// Writes `TCP_BYTES` to `addr`, then waits for the reader's close (by then every byte was
/// acknowledged) and asks the sender's TCP what it sent.
fn tcp_transfer(addr: SocketAddr) -> std::io::Result<Transfer> {
    let l = TcpListener::bind(addr)?;
    let reader = thread::spawn(move || -> std::io::Result<usize> {
        let (mut c, _) = l.accept()?;
        let mut buf = Vec::new();
        c.read_to_end(&mut buf)?;
        Ok(buf.len())
    });
    let mut c = TcpStream::connect(addr)?;
    c.write_all(&vec![7u8; TCP_BYTES])?;
    c.shutdown(std::net::Shutdown::Write)?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = c.read(&mut [0u8; 1])?;
    let sent = bytes_sent(&c);
    Ok(Transfer {
        read: reader.join().expect("reader")?,
        sent,
    })
}

/// `tcpi_bytes_sent` of a TCP socket (Linux 4.19 and later; `None` before, or on error).
fn bytes_sent(s: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    /// Offset of `tcpi_bytes_sent` in `struct tcp_info` (include/uapi/linux/tcp.h).
    const BYTES_SENT: usize = 200;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: a buffer we own and its length; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    (rc == 0 && len as usize >= BYTES_SENT + 8).then(|| {
        u64::from_ne_bytes(
            info[BYTES_SENT..BYTES_SENT + 8]
                .try_into()
                .expect("8 bytes"),
        )
    })
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

/// A connection on `addr` reset by the side on the watched port (`sent`: it closes with data
/// unread) or by the other side (its peer's reset is received on the watched port).
fn reset(addr: SocketAddr, sent: bool) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    let mut c = TcpStream::connect(addr)?;
    let (mut s, _) = l.accept()?;
    let (writer, closer) = if sent { (&mut c, s) } else { (&mut s, c) };
    writer.write_all(b"unread")?;
    thread::sleep(Duration::from_millis(200));
    drop(closer);
    thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// `GET path` with HTTP/1.0: the body.
/// Two stray segments (bare ACKs) to the refused port: answered with resets, but no refusals.
/// How many resets the kernel says it sent meanwhile, at most 2 (on a busy host another reset
/// may fall between the readings).
fn stray_acks() -> Option<f64> {
    let before = out_rsts();
    for from in [REFUSED + 100, REFUSED + 101] {
        raw::stray_ack(Ipv4Addr::LOCALHOST, from, REFUSED);
    }
    out_rsts().zip(before).map(|(b, a)| (b - a).min(2.0))
}

/// The kernel's count of TCP resets sent (`Tcp: OutRsts` in /proc/net/snmp).
fn out_rsts() -> Option<f64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "OutRsts")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn get(agent: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(agent)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {agent}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, b)| b.to_owned()))
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

/// The largest value in the last column of a CSV answer of the history API.
fn history_max(csv: &str) -> Option<f64> {
    csv.lines()
        .skip(1)
        .filter_map(|l| l.rsplit(',').next()?.trim().parse::<f64>().ok())
        .reduce(f64::max)
}

/// The payload bytes the agent's peer view says `tunnel` received from `peer` (its table entry
/// plus its cache entries: the UDP transfer stays in the cache, the TCP one is moved into the
/// table every 64 packets).
fn peer_payload(agent: &str, tunnel: &str, peer: &str) -> Option<f64> {
    let body = get(agent, &format!("/api/v1/tunnels/{tunnel}/peers")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["address"] == peer)?["receive_payload_bytes"]
        .as_f64()
}

/// What the history and peers APIs say of the transfers (`tcp`: the v4 and v6 ones).
fn api_checks(agent: &str, tcp: [Want; 2]) -> Vec<Check> {
    let history = get(
        agent,
        "/api/v1/history?metric=moonfrp_tunnel_receive_payload_bytes_total&tunnel=tcp4&since=10m&format=csv",
    )
    .unwrap_or_default();
    let mut checks = vec![(
        "history_tcp4_receive_payload_bytes".into(),
        tcp[0],
        history_max(&history),
    )];
    let udp = Want::from((DATAGRAMS * DATAGRAM) as f64);
    for (tunnel, want, peer) in [
        ("tcp4", tcp[0], "127.0.0.1"),
        ("udp4", udp, "127.0.0.1"),
        ("tcp6", tcp[1], "::1"),
        ("udp6", udp, "::1"),
    ] {
        checks.push((
            format!("peer_{tunnel}_receive_payload_bytes"),
            want,
            peer_payload(agent, tunnel, peer),
        ));
    }
    checks
}

/// Prints the verdicts; whether all hold.
fn report(checks: Vec<Check>, off: f64) -> bool {
    let mut ok = true;
    for (name, want, got) in checks {
        let want = Want {
            low: want.low + off,
            high: want.high + off,
        };
        let pass = got.is_some_and(|g| want.low <= g && g <= want.high);
        ok &= pass;
        println!(
            "CHECK {name} want={want} got={} {}",
            got.map_or_else(|| "none".into(), |g| g.to_string()),
            if pass { "ok" } else { "FAILED" }
        );
    }
    ok
}

/// `moonfrp_agent_probe_attached` by probe.
fn probes(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("moonfrp_agent_probe_attached{probe=\""))
        .filter_map(|l| {
            let (probe, rest) = l.split_once('"')?;
            Some((probe.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Against an agent without the kernel's BTF: a refused connect is not miscounted, the probes
/// that need no BTF run, and `tcp_refused` (only listed where it is needed) is not attached.
fn without_btf(agent: &str) -> bool {
    let lo4 = SocketAddr::from((Ipv4Addr::LOCALHOST, REFUSED));
    let refused = TcpStream::connect(lo4).is_err();
    let tcp = tcp_transfer(SocketAddr::from((Ipv4Addr::LOCALHOST, TCP4))).ok();
    thread::sleep(Duration::from_millis(2500));
    let m = get(agent, "/metrics").unwrap_or_default();
    let probes = probes(&m);
    let needs_btf = probes.iter().any(|(p, _)| p == "tcp_refused");
    let attached = probes.iter().filter(|(_, v)| *v == 1.0).count();
    report(
        vec![
            (
                "nobtf_refused_connect".into(),
                Want::from(if needs_btf { 0.0 } else { 1.0 }),
                refused
                    .then(|| value(&m, "moonfrp_tunnel_connections_refused_total", "refused"))
                    .flatten(),
            ),
            (
                "nobtf_tcp_refused_attached".into(),
                0.0.into(),
                Some(
                    probes
                        .iter()
                        .find(|(p, _)| p == "tcp_refused")
                        .map_or(0.0, |p| p.1),
                ),
            ),
            (
                "nobtf_other_probes_attached".into(),
                ((probes.len() - usize::from(needs_btf)) as f64).into(),
                Some(attached as f64),
            ),
            (
                "nobtf_tcp4_receive_payload_bytes".into(),
                tcp.map_or(Want::from(-1.0), Transfer::want),
                value(&m, "moonfrp_tunnel_receive_payload_bytes_total", "tcp4"),
            ),
        ],
        0.0,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--tunnels") {
        for t in TUNNELS {
            println!("{t}");
        }
        return;
    }
    let agent = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9477".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    if args.iter().any(|a| a == "--without-btf") {
        std::process::exit(i32::from(!without_btf(&agent)));
    }
    let off: f64 = flag("--off-by").parse().unwrap_or(0.0);
    let lacks = flag("--lacks");
    let no_drop_reasons = lacks.split(',').any(|l| l == "drop-reasons");
    let (checks, after) = everything(&agent, no_drop_reasons);
    let probes = probes(&after);
    let ok = report(checks, off);
    for (probe, v) in &probes {
        println!("PROBE {probe} {v}");
    }
    println!("---- metrics ----\n{after}---- end metrics ----");
    std::process::exit(i32::from(!ok));
}

/// One expectation: name, wanted value, what the agent said.
type Check = (String, Want, Option<f64>);

/// A wanted value: exact, or a range where the traffic itself allows one (see `Transfer`).
#[derive(Clone, Copy)]
struct Want {
    low: f64,
    high: f64,
}

impl From<f64> for Want {
    fn from(v: f64) -> Self {
        Self { low: v, high: v }
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}..{}", self.low, self.high)
        }
    }
}

/// The payload transfers, v4 and v6, TCP and UDP: what each tunnel must have received.
fn transfers() -> [(&'static str, std::io::Result<Want>); 4] {
    let lo4 = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let lo6 = |p| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    let udp = |r: std::io::Result<usize>| r.map(|n| Want::from(n as f64));
    [
        ("tcp4", tcp_transfer(lo4(TCP4)).map(Transfer::want)),
        ("udp4", udp(udp_transfer(lo4(UDP4), lo4(0)))),
        ("tcp6", tcp_transfer(lo6(TCP6)).map(Transfer::want)),
        ("udp6", udp(udp_transfer(lo6(UDP6), lo6(0)))),
    ]
}

/// The tunnels' payload counts in `after` against the transfers; the TCP v4 and v6 wants.
fn payload_checks(
    sent: [(&'static str, std::io::Result<Want>); 4],
    after: &str,
) -> (Vec<Check>, [Want; 2]) {
    let mut checks: Vec<Check> = Vec::new();
    let mut tcp = [Want::from(-1.0); 2];
    for (name, result) in sent {
        let want = match result {
            Ok(w) => w,
            Err(e) => {
                println!("CHECK {name}_transfer want=ok got=error:{e} FAILED");
                Want::from(-1.0)
            }
        };
        match name {
            "tcp4" => tcp[0] = want,
            "tcp6" => tcp[1] = want,
            _ => {}
        }
        checks.push((
            format!("{name}_receive_payload_bytes"),
            want,
            value(after, "moonfrp_tunnel_receive_payload_bytes_total", name),
        ));
    }
    (checks, tcp)
}

/// Makes the traffic, then reads the agent: the checks, and the last exposition. On a kernel
/// without drop reasons (before 5.17) refusals are not counted and `tcp_refused` says why.
fn everything(agent: &str, no_drop_reasons: bool) -> (Vec<Check>, String) {
    let lo4 = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let lo6 = |p| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    let sent = transfers();
    // Connections held open on the TCP v4 port, then closed.
    let l = TcpListener::bind(lo4(TCP4)).expect("bind the held port");
    let held: Vec<(TcpStream, TcpStream)> = (0..HELD)
        .map(|_| {
            let c = TcpStream::connect(lo4(TCP4)).expect("connect");
            (c, l.accept().expect("accept").0)
        })
        .collect();
    let stray_resets = stray_acks();
    let refused =
        TcpStream::connect(lo4(REFUSED)).is_err() && TcpStream::connect(lo6(REFUSED)).is_err();
    let resets = reset(lo6(RESETS), true)
        .and_then(|()| reset(lo6(RESETS), false))
        .is_ok();
    thread::sleep(Duration::from_millis(2500));
    let during = get(agent, "/metrics").unwrap_or_default();
    drop(held);
    thread::sleep(Duration::from_millis(2500));
    let after = get(agent, "/metrics").unwrap_or_default();

    let (mut checks, tcp) = payload_checks(sent, &after);
    let m = "moonfrp_tunnel_connections";
    checks.push((
        "tcp4_connections_active_held".into(),
        (HELD as f64).into(),
        value(&during, &format!("{m}_active"), "tcp4"),
    ));
    checks.push((
        "tcp4_connections_active_after".into(),
        0.0.into(),
        value(&after, &format!("{m}_active"), "tcp4"),
    ));
    checks.push((
        "tcp4_connections_closed".into(),
        ((HELD + 1) as f64).into(),
        value(&after, &format!("{m}_closed_total"), "tcp4"),
    ));
    checks.push((
        "stray_acks_answered_with_resets".into(),
        2.0.into(),
        stray_resets,
    ));
    checks.push((
        "refused_connect_v4_v6".into(),
        Want::from(if no_drop_reasons { 0.0 } else { 2.0 }),
        refused
            .then(|| value(&after, &format!("{m}_refused_total"), "refused"))
            .flatten(),
    ));
    for (name, metric) in [("sent", "resets_sent"), ("received", "resets_received")] {
        checks.push((
            format!("tcp6_resets_{name}"),
            1.0.into(),
            resets
                .then(|| value(&after, &format!("moonfrp_tunnel_{metric}_total"), "resets"))
                .flatten(),
        ));
    }
    checks.extend(api_checks(agent, tcp));
    let probes = probes(&after);
    checks.push((
        "probes_attached".into(),
        ((probes.len().max(6) - usize::from(no_drop_reasons)) as f64).into(),
        Some(probes.iter().filter(|(_, v)| *v == 1.0).count() as f64),
    ));
    if no_drop_reasons {
        checks.push((
            "tcp_refused_listed_not_attached".into(),
            1.0.into(),
            Some(f64::from(u8::from(
                probes.iter().any(|(p, v)| p == "tcp_refused" && *v == 0.0),
            ))),
        ));
    }
    (checks, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_passes_inside_its_range_and_fails_outside() {
        let t = Transfer {
            read: 100,
            sent: Some(150),
        };
        let check = |got: f64, off: f64| report(vec![("t".into(), t.want(), Some(got))], off);
        assert!(check(100.0, 0.0) && check(150.0, 0.0) && check(120.0, 0.0));
        assert!(!check(99.0, 0.0) && !check(151.0, 0.0));
        // --off-by shifts the whole range.
        assert!(!check(100.0, 1.0) && check(151.0, 1.0));
        // Nothing sent twice (or a kernel without the counter): exact.
        for sent in [Some(100), Some(0), None] {
            let w = Transfer { read: 100, sent }.want();
            assert_eq!((w.low, w.high, w.to_string()), (100.0, 100.0, "100".into()));
        }
        assert_eq!(t.want().to_string(), "100..150");
        assert!(!report(vec![("none".into(), 1.0.into(), None)], 0.0));
    }
}
