//! Starting, scraping and stopping the real agent binary.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use crate::{Metrics, TIMEOUT, agent_bin, free_port, http_get};

/// How to start the agent: `moonfrp-agent run --interval <interval> --listen 127.0.0.1:<free>
/// --log-level <level> <args>`, optionally through a wrapper command.
#[derive(Clone, Debug)]
pub struct AgentCmd {
    bin: PathBuf,
    wrapper: Vec<String>,
    interval: String,
    log_level: String,
    args: Vec<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
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
            data_dir: None,
            listen: None,
        }
    }

    /// Runs `setup` (shell) in a private mount namespace before the agent, so that the test can
    /// hide or replace files the agent sees without touching the host.
    #[must_use]
    pub fn in_private_mounts(self, setup: &str) -> Self {
        let script = format!("{setup} && exec \"$0\" \"$@\"");
        self.wrapper(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
    }

    /// History data directory (default: a fresh one inside the agent's temp dir).
    #[must_use]
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Listen here instead of on a free loopback port (`0` as the port: a free one).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
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
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let addr = match self.listen {
            Some(a) if a.port() != 0 => a,
            Some(a) => SocketAddr::new(a.ip(), free_port()),
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        };
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
            .args(if self.args.iter().any(|a| a == "--data-dir") {
                Vec::new()
            } else {
                vec!["--data-dir".into(), data_dir.display().to_string()]
            })
            // Nothing pinned unless a test asks: a test's programs detach when its agent stops.
            .args(if self.args.iter().any(|a| a == "--pin-dir") {
                Vec::new()
            } else {
                vec!["--pin-dir".into(), String::new()]
            })
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
            data_dir,
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
    /// Where the agent keeps its history database.
    pub data_dir: PathBuf,
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

    /// Starts the agent after `setup` (shell) has run in a private mount namespace, so that the
    /// test can hide or replace files the agent reads without touching the host.
    pub fn spawn_in_private_mounts(setup: &str, args: &[&str]) -> Self {
        AgentCmd::new(args).in_private_mounts(setup).spawn()
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

    /// The agent's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the agent's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/<pid>/status")
            * 1024
    }

    /// When each snapshot was taken (Unix seconds, in order), from the history database.
    pub fn snapshot_times(&self) -> Vec<f64> {
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir.join("history.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the history database");
        let mut stmt = db.prepare("SELECT ts FROM snapshots ORDER BY ts").unwrap();
        stmt.query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|t| t.unwrap() as f64 / 1000.0)
            .collect()
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
        self.stop_within(TIMEOUT)
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (an agent slowed down on
    /// purpose finishes its last history write late).
    pub fn stop_within(self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.lock().unwrap().take().expect("agent running");
        wait_timeout(&mut child, timeout).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "agent did not exit within {timeout:?} of SIGTERM:\n{}",
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
