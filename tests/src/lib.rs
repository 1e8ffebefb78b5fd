//! Helpers for the privileged integration tests: start the real agent binary, scrape it, make
//! real traffic on loopback, and look at what the kernel holds.
//!
//! Run through `cargo xtask test` (root): it builds the agent and sets `MOONFRP_AGENT_BIN`.
pub mod fake_http;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

/// Longest we wait for the agent to show something.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The agent binary under test.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("MOONFRP_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/moonfrp-agent"),
        PathBuf::from,
    )
}

/// A TCP port that is free on both IPv4 and IPv6 right now (for TCP and, in practice, UDP).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("bind [::]:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
}

/// Loopback address of the given family.
pub fn loopback(v6: bool) -> std::net::IpAddr {
    if v6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    }
}

/// How to start the agent: `moonfrp-agent run --interval <interval> --listen 127.0.0.1:<free>
/// --log-level <level> <args>`, optionally through a wrapper command.
#[derive(Clone, Debug)]
pub struct AgentCmd {
    bin: PathBuf,
    wrapper: Vec<String>,
    interval: String,
    log_level: String,
    args: Vec<String>,
}

impl AgentCmd {
    /// The agent from [`agent_bin`], interval 1 s, debug logs.
    pub fn new(args: &[&str]) -> Self {
        Self {
            bin: agent_bin(),
            wrapper: Vec::new(),
            interval: "1s".into(),
            log_level: "debug".into(),
            args: args.iter().map(ToString::to_string).collect(),
        }
    }

    #[must_use]
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    #[must_use]
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(ToString::to_string).collect();
        self
    }

    #[must_use]
    pub fn interval(mut self, interval: &str) -> Self {
        interval.clone_into(&mut self.interval);
        self
    }

    #[must_use]
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }

    /// Starts the agent and waits for its first snapshot.
    pub fn start(self) -> Agent {
        let agent = self.spawn();
        agent.wait_ready();
        agent
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(self) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = match self.wrapper.as_slice() {
            [] => Command::new(&self.bin),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
        };
        let child = cmd
            .arg("run")
            .args([
                "--interval",
                &self.interval,
                "--listen",
                &addr.to_string(),
                "--log-level",
                &self.log_level,
            ])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo xtask test`)",
                    self.bin.display()
                )
            });
        Agent {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            addr,
            log,
            _dir: dir,
        }
    }
}

/// A running agent; stopped (SIGTERM, then SIGKILL) when dropped. Its log is printed if the
/// test fails.
pub struct Agent {
    child: Mutex<Option<Child>>,
    pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `moonfrp-agent run --interval 1s --listen 127.0.0.1:<free> <args>` and waits for
    /// its first snapshot.
    pub fn start(args: &[&str]) -> Self {
        AgentCmd::new(args).start()
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(args: &[&str]) -> Self {
        AgentCmd::new(args).spawn()
    }

    /// Starts the agent through `wrapper` (a command that ends by exec'ing its arguments, so the
    /// agent keeps its PID), without waiting for anything.
    pub fn spawn_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        AgentCmd::new(args).wrapper(wrapper).spawn()
    }

    /// Waits for the first snapshot.
    pub fn wait_ready(&self) {
        self.wait_for("the first snapshot", |m| {
            m.get("moonfrp_agent_snapshots_total", &[]).is_some()
        });
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, if the agent has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with an optional Accept header: (status, content type, body).
    pub fn get(&self, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String, String)> {
        http_get(self.addr, path, accept)
    }

    /// Scrapes `/metrics` in the text format 0.0.4.
    pub fn metrics(&self) -> Metrics {
        let (status, _, body) = self.get("/metrics", None).expect("scrape /metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Polls `/metrics` until `ok` holds; panics with the agent log after [`TIMEOUT`].
    pub fn wait_for(&self, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "agent exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _, body)) = self.get("/metrics", None) {
                let m = Metrics::parse(&body);
                if ok(&m) {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` more snapshots have been taken, so that everything done before this
    /// call is in the returned scrape.
    pub fn wait_snapshots(&self, n: u64) -> Metrics {
        let now = self
            .metrics()
            .get("moonfrp_agent_snapshots_total", &[])
            .unwrap_or(0.0) as u64;
        self.wait_for(&format!("{n} more snapshots"), |m| {
            m.get("moonfrp_agent_snapshots_total", &[]).unwrap_or(0.0) as u64 >= now + n
        })
    }

    /// IDs of the BPF programs the agent process holds open.
    pub fn prog_ids(&self) -> BTreeSet<u32> {
        fd_info_ids(self.pid(), "prog_id:")
    }

    /// IDs of the BPF links the agent process holds open.
    pub fn link_ids(&self) -> BTreeSet<u32> {
        fd_info_ids(self.pid(), "link_id:")
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.lock().unwrap().take().expect("agent running");
        wait_timeout(&mut child, TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "agent did not exit within {TIMEOUT:?} of SIGTERM:\n{}",
                self.log()
            )
        })
    }
}

/// Waits for `child` up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

fn fd_info_ids(pid: u32, key: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix(key) {
                ids.extend(v.trim().parse::<u32>().ok());
            }
        }
    }
    ids
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
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
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

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed text-format scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses Prometheus text format (0.0.4); panics on a line it cannot read.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparseable sample line: {l}")))
            .collect();
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the one series named `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        });
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "{name}{labels:?} matches more than one series"
        );
        Some(first.value)
    }

    /// Like [`Self::get`] for a tunnel's series; panics if it is missing.
    pub fn tunnel(&self, tunnel: &str, name: &str) -> f64 {
        self.get(name, &[("tunnel", tunnel)])
            .unwrap_or_else(|| panic!("no {name}{{tunnel=\"{tunnel}\"}} in:\n{}", self.text))
    }

    /// Asserts that `name{label="v"}` is `want` for each `v` of `values`.
    pub fn assert_each(&self, name: &str, label: &str, values: &[&str], want: f64) {
        for v in values {
            assert_eq!(
                self.get(name, &[(label, v)]),
                Some(want),
                "{name}{{{label}=\"{v}\"}}"
            );
        }
    }

    /// Every sample line that carries `label="value"`.
    pub fn with_label(&self, label: &str, value: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.labels.iter().any(|(k, v)| k == label && v == value))
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), Vec::new()),
        Some((name, rest)) => (name.to_owned(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Some(out)
}

/// Accepts one connection on 127.0.0.1:`port` and sends it `bytes` bytes from a client;
/// returns once the server has read them all.
pub fn send_tcp(port: u16, bytes: usize) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
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

/// Host-wide TCP `RetransSegs` (from /proc/net/snmp): if it did not move, no segment on
/// loopback was retransmitted, by our sockets or by their peers.
pub fn host_retrans_segs() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
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

/// The workspace root.
pub fn workspace() -> PathBuf {
    std::env::var_os("MOONFRP_WORKSPACE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let m = Metrics::parse(
            "# HELP x y\nx_total{a=\"q\\\"uote\",b=\"2\"} 3\ny 1.5\nz{le=\"+Inf\"} 7\n",
        );
        assert_eq!(m.get("x_total", &[("a", "q\"uote")]), Some(3.0));
        assert_eq!(m.get("y", &[]), Some(1.5));
        assert_eq!(m.get("z", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(m.get("x_total", &[("a", "nope")]), None);
    }
}
