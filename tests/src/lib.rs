//! Helpers for the privileged integration tests: start the real agent binary, scrape it, make
//! real traffic on loopback, and look at what the kernel holds.
//!
//! Run through `cargo xtask test` (root): it builds the agent and sets `MOONFRP_AGENT_BIN`.
mod agent;
pub mod bpf;
pub mod fake_http;
pub mod grafana;
pub mod hostile_http;
pub mod pki;
pub mod raw;
pub mod receiver;
mod scrape;
pub mod smtp;
pub mod tmux;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

pub use agent::{Agent, AgentCmd, wait_timeout};
pub use scrape::{Metrics, Sample};

/// Every probe the agent attaches (`moonfrp_agent_probe_attached{probe}`).
pub const PROBES: [&str; 6] = [
    "traffic_ingress",
    "traffic_egress",
    "sock_state",
    "tcp_retransmit",
    "tcp_send_reset",
    "tcp_receive_reset",
];

/// Longest we wait for the agent to show something.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The agent binary under test.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("MOONFRP_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/moonfrp-agent"),
        PathBuf::from,
    )
}

/// A port that is free for TCP and UDP on both IPv4 and IPv6 right now.
///
/// Taken from outside the kernel's ephemeral range (`ip_local_port_range`: below it, or above
/// it when it starts too low to leave room), counting up from a per-process start: a port the
/// kernel may hand out as some outgoing connection's source port could be taken between our
/// check and the test's bind (CI runs failed with `AddrInUse` that way, once on a machine whose
/// range was not this one's). Where the range leaves no room, tests bind through [`bind_tcp`]
/// and [`bind_udp`], which wait for such a connection to end.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (from, to) = unhanded_ports();
    let span = to - from;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port =
            u16::try_from(from + NEXT.fetch_add(1, Ordering::Relaxed) % span).expect("below 65536");
        if TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok()
            && std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// The widest span of ports (`from..to`) the kernel does not hand out as source ports: below
/// `ip_local_port_range` from 10,000 up, else above it; 10,000..65,536 when it covers both.
fn unhanded_ports() -> (u32, u32) {
    unhanded_ports_of(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .as_deref(),
    )
}

fn unhanded_ports_of(range: Option<&str>) -> (u32, u32) {
    const LOW: u32 = 10_000;
    const ROOM: u32 = 1_000;
    let mut ends = range
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter_map(|w| w.parse::<u32>().ok());
    let (low, high) = match (ends.next(), ends.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32_768, 60_999),
    };
    let below = low.saturating_sub(LOW);
    let above = 65_535u32.saturating_sub(high);
    if below >= ROOM && below >= above {
        (LOW, low)
    } else if above >= ROOM {
        (high + 1, 65_536)
    } else {
        (LOW, 65_536)
    }
}

/// Binds a TCP listener on 127.0.0.1:`port` (from [`free_port`]), waiting up to [`TIMEOUT`] while
/// the port is in use: an outgoing connection may hold it as its source port for a moment where
/// the kernel's ephemeral range covers every port.
pub fn bind_tcp(port: u16) -> TcpListener {
    retry_bind(port, || TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
}

/// [`bind_tcp`] for a UDP socket.
pub fn bind_udp(port: u16) -> std::net::UdpSocket {
    retry_bind(port, || {
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
    })
}

fn retry_bind<S>(port: u16, bind: impl Fn() -> std::io::Result<S>) -> S {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match bind() {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot bind 127.0.0.1:{port}: {e}"),
        }
    }
}

/// A TCP listener on 127.0.0.1 and its port, which the kernel chose: for a test that serves a
/// tunnel's port itself, no window between choosing the port and binding it (two CI runs failed
/// with `AddrInUse` in that window, with ports from [`free_port`] of both kinds).
pub fn tcp_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    let port = l
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    (l, port)
}

/// Loopback address of the given family.
pub fn loopback(v6: bool) -> std::net::IpAddr {
    if v6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    }
}

/// Runs `moonfrp-agent <args>` to the end: (exit code, stdout, stderr).
pub fn agent_command(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (build it with `cargo xtask test`)",
                agent_bin().display()
            )
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a BPF object with this ID still exists in the kernel (`BPF_*_GET_FD_BY_ID`).
pub fn bpf_object_exists(id: u32, link: bool) -> bool {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let attr: [u32; 4] = [id, 0, 0, 0];
    let cmd = if link {
        BPF_LINK_GET_FD_BY_ID
    } else {
        BPF_PROG_GET_FD_BY_ID
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(&attr)) };
    if fd >= 0 {
        // SAFETY: we own the fd just returned.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "unexpected error asking for BPF object {id}: {err}"
    );
    false
}

/// A minimal HTTP/1.0 GET (the agent's server is the thing under test, not the client).
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    http_request(addr, "GET", path, accept)
}

/// A minimal HTTP/1.0 request without a body: (status, content type, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}

/// A minimal HTTP/1.0 GET with extra header lines (`"Accept-Encoding: gzip"`): the response
/// head, lower-cased, and the raw body bytes.
pub fn http_get_raw(
    addr: SocketAddr,
    path: &str,
    headers: &[&str],
) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of the response head"))?;
    Ok((
        String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase(),
        raw[at + 4..].to_vec(),
    ))
}

/// Accepts one connection on 127.0.0.1:`port` and sends it `bytes` bytes from a client;
/// returns once the server has read them all.
pub fn send_tcp(port: u16, bytes: usize) {
    let listener = bind_tcp(port);
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    c.write_all(&vec![7; bytes]).unwrap();
    drop(c);
    assert_eq!(server.join().unwrap(), bytes);
}

/// TCP `RetransSegs` of the calling thread's network namespace (from its net/snmp; the host's
/// for every thread but those a test moved): if it did not move, no segment on loopback was
/// retransmitted, by our sockets or by their peers.
pub fn host_retrans_segs() -> u64 {
    let path = "/proc/thread-self/net/snmp";
    let snmp = std::fs::read_to_string(path).expect(path);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (head, vals) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = head
        .split_whitespace()
        .position(|h| h == "RetransSegs")
        .unwrap();
    vals.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A background program started by a test; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    pub name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program args…` with its output in a log file.
    pub fn start(program: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program}: {e} (`cargo xtask test` installs it)")
            });
        Self {
            child,
            name: program.to_owned(),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

/// The `result` of a Prometheus instant query (`/api/v1/query`) at `addr`: `None` unless it
/// answered 200 with JSON.
pub fn prometheus_query(addr: SocketAddr, expr: &str) -> Option<Vec<serde_json::Value>> {
    let q: String = expr
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, _, body) = http_get(addr, &format!("/api/v1/query?query={q}"), None).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["data"]["result"].as_array().cloned()
}

/// The value of a Prometheus instant query that returns exactly one series.
pub fn prometheus_value(addr: SocketAddr, expr: &str) -> Option<f64> {
    match prometheus_query(addr, expr)?.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Runs `cmd`: whether it succeeded, and its stdout and stderr together.
pub fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `cmd args…` and returns its stdout; panics with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `promtool check metrics` on an exposition: (passed, its findings).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by `cargo xtask test`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), findings)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    std::env::var_os("MOONFRP_WORKSPACE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

#[cfg(test)]
mod tests {
    use super::unhanded_ports_of;

    #[test]
    fn free_ports_come_from_outside_the_ephemeral_range() {
        assert_eq!(unhanded_ports_of(Some("32768\t60999\n")), (10_000, 32_768));
        assert_eq!(unhanded_ports_of(Some("1024 50000")), (50_001, 65_536));
        assert_eq!(unhanded_ports_of(Some("11500 64000")), (64_001, 65_536));
        assert_eq!(unhanded_ports_of(Some("1024 65535")), (10_000, 65_536));
        assert_eq!(unhanded_ports_of(None), (10_000, 32_768));
    }
}
