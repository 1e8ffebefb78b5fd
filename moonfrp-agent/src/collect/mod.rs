//! Host, FRP-process and service collectors. One module per source: a pure `parse` over text
//! (tested with fixture files) and a thin `read` that does the I/O. Every collector runs once per
//! interval inside the snapshot; one that fails is skipped, counted, and logged once per change
//! of its error, and the rest of the snapshot is still complete.
pub mod cgroups;
pub mod cpu;
pub mod deadline;
pub mod disk;
pub mod filesystem;
pub mod host;
pub mod memory;
pub mod netdev;
pub mod netstat;
pub mod processes;
pub mod systemd;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// Why a collector produced nothing this time.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: String, reason: String },
    /// A call that may block (a command, a system call on a network mount) took too long.
    #[error("{what} did not finish within {limit:?}; skipped this interval")]
    Timeout { what: String, limit: Duration },
    /// The collector panicked (see [`crate::untrusted::contained`]).
    #[error("{0}")]
    Bug(String),
}

impl CollectError {
    pub fn read(path: &str, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "callers hand over errors and strings they no longer need"
    )]
    pub fn parse(path: &str, reason: impl ToString) -> Self {
        Self::Parse {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &str) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|e| CollectError::read(path, e))
}

/// What the host looked like at one interval; a source that failed is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemSample {
    pub cpu: Option<cpu::CpuSample>,
    pub memory: Option<memory::MemorySample>,
    pub host: Option<host::HostSample>,
    pub netdev: Option<Vec<netdev::NetDev>>,
    pub disks: Option<Vec<disk::Disk>>,
    pub filesystems: Option<Vec<filesystem::Filesystem>>,
    pub tcp: Option<netstat::HostTcp>,
    pub processes: Option<Vec<processes::FrpProcess>>,
    pub services: Option<systemd::Services>,
    /// Per-unit and per-container resources.
    pub cgroups: Option<cgroups::CgroupSample>,
}

/// How one collector did in the latest collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration: Duration,
    pub ok: bool,
}

/// Collector state kept between intervals.
#[derive(Debug)]
pub struct Collectors {
    prev_cpu: Option<cpu::CpuSample>,
    processes: processes::Tracker,
    systemd: systemd::Systemd,
    cgroups: cgroups::Cgroups,
    /// Mounts whose `statvfs` hangs.
    stuck_mounts: deadline::Stuck,
    /// Longest a call that can block may take.
    deadline: Duration,
    /// The last error of each collector, to log only changes.
    last_error: HashMap<&'static str, String>,
}

/// `[collectors]`: what the host collectors look for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectOptions {
    /// Process names that are FRP (matched against the process name and executable's name).
    pub processes: Vec<String>,
    /// systemd unit patterns (globs as `systemctl` takes them): their state from systemd, their
    /// resources from their cgroups.
    pub units: Vec<String>,
    /// Most containers whose resources are exported (the busiest by CPU); 0: none.
    pub max_containers: usize,
    /// Docker's data root, for container names (`containers/<id>/config.v2.json`).
    pub docker_root: std::path::PathBuf,
    /// Podman's storage root, for container names (`overlay-containers/containers.json`).
    pub podman_root: std::path::PathBuf,
    /// Longest a call that can block (`systemctl`, `statvfs` on a network mount) may take: a
    /// quarter of the interval, at most 2 s ([`Self::for_interval`]).
    #[serde(skip)]
    pub deadline: Duration,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            processes: vec!["frps".into(), "frpc".into()],
            units: vec!["moonfrp-*".into(), "frps*".into(), "frpc*".into()],
            max_containers: 100,
            docker_root: cgroups::containers::default_docker_root(),
            podman_root: cgroups::containers::default_podman_root(),
            deadline: Duration::from_secs(2),
        }
    }
}

impl CollectOptions {
    /// Most `max_containers` accepted.
    pub const MAX_CONTAINERS: usize = 10_000;

    /// Checks the patterns and the cap; errors name the key.
    pub fn validate(self) -> Result<Self, String> {
        for (i, p) in self.units.iter().enumerate() {
            glob::Pattern::new(p).map_err(|e| {
                format!(
                    "collectors.units[{i}] = `{}` is not a glob pattern ({e}); use e.g. `frps*`",
                    crate::untrusted::shown(p)
                )
            })?;
        }
        if self.max_containers > Self::MAX_CONTAINERS {
            return Err(format!(
                "collectors.max_containers = {} is out of range; use 0 (no containers) to {}",
                self.max_containers,
                Self::MAX_CONTAINERS
            ));
        }
        Ok(self)
    }

    /// The cgroup collector's part.
    pub fn cgroups(&self) -> cgroups::CgroupOptions {
        cgroups::CgroupOptions {
            units: self.units.clone(),
            max_containers: self.max_containers,
            docker_root: self.docker_root.clone(),
            podman_root: self.podman_root.clone(),
        }
    }

    /// These options at a collection interval.
    #[must_use]
    pub fn for_interval(mut self, interval: Duration) -> Self {
        self.deadline = (interval / 4).min(Duration::from_secs(2));
        self
    }
}

impl Collectors {
    pub fn new(opts: &CollectOptions) -> Self {
        Self {
            prev_cpu: None,
            processes: processes::Tracker::new(opts.processes.clone()),
            systemd: systemd::Systemd::new(opts.units.clone()),
            cgroups: cgroups::Cgroups::new(&opts.cgroups()),
            stuck_mounts: deadline::Stuck::default(),
            deadline: opts.deadline,
            last_error: HashMap::new(),
        }
    }

    /// Replaces the options (after a configuration reload).
    pub fn set_options(&mut self, opts: &CollectOptions) {
        self.processes.set_names(opts.processes.clone());
        self.systemd.set_patterns(opts.units.clone());
        self.cgroups.set_options(&opts.cgroups());
        self.deadline = opts.deadline;
    }

    fn run<T>(
        &mut self,
        name: &'static str,
        runs: &mut Vec<CollectorRun>,
        errors: &mut BTreeMap<&'static str, u64>,
        f: impl FnOnce(&mut Self) -> Result<T, CollectError>,
    ) -> Option<T> {
        let started = Instant::now();
        let result =
            crate::untrusted::contained(format_args!("the {name} collector's files"), || f(self))
                .unwrap_or_else(|bug| Err(CollectError::Bug(bug)));
        runs.push(CollectorRun {
            name,
            duration: started.elapsed(),
            ok: result.is_ok(),
        });
        match result {
            Ok(v) => {
                if self.last_error.remove(name).is_some() {
                    info!(collector = name, "collector works again");
                }
                Some(v)
            }
            Err(e) => {
                *errors.entry(name).or_default() += 1;
                let msg = e.to_string();
                if self.last_error.get(name) != Some(&msg) {
                    warn!(collector = name, error = %msg, "collector failed; its series are left out until it works");
                    self.last_error.insert(name, msg);
                }
                None
            }
        }
    }

    /// Runs every collector once.
    pub fn collect(
        &mut self,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> (SystemSample, Vec<CollectorRun>) {
        let mut runs = Vec::new();
        let mut s = SystemSample {
            cpu: self.run("cpu", &mut runs, errors, |_| cpu::read()),
            ..SystemSample::default()
        };
        if let (Some(now), Some(prev)) = (s.cpu.as_mut(), self.prev_cpu.as_ref()) {
            now.usage_ratio = cpu::usage_ratio(prev, now);
        }
        self.prev_cpu.clone_from(&s.cpu);
        s.memory = self.run("memory", &mut runs, errors, |_| memory::read());
        s.host = self.run("host", &mut runs, errors, |_| host::read());
        s.netdev = self.run("netdev", &mut runs, errors, |_| netdev::read());
        s.disks = self.run("disk", &mut runs, errors, |_| disk::read());
        s.filesystems = self.run("filesystem", &mut runs, errors, |c| {
            filesystem::read(&c.stuck_mounts, c.deadline)
        });
        s.tcp = self.run("netstat", &mut runs, errors, |_| netstat::read());
        s.processes = self.run("processes", &mut runs, errors, |c| c.processes.read());
        if self.systemd.available() {
            s.services = self.run("systemd", &mut runs, errors, |c| c.systemd.read(c.deadline));
        }
        s.cgroups = self.run("cgroups", &mut runs, errors, |c| c.cgroups.read());
        (s, runs)
    }
}

/// Path of a fixture file under `tests/fixtures/`.
#[cfg(test)]
pub fn fixture(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector that panics (a parser bug some file reaches) is that collector's error for
    /// the interval: counted, logged, left out; the ones after it still run, and it is tried
    /// again next time.
    #[test]
    fn a_panicking_collector_costs_only_its_own_series() {
        let mut c = Collectors::new(&CollectOptions::default());
        let (mut runs, mut errors) = (Vec::new(), BTreeMap::new());
        let broken: Option<u64> = c.run("memory", &mut runs, &mut errors, |_| {
            let line = "MemTotal: 1 kB \u{e9}";
            Ok(line[..line.len() - 1].len() as u64)
        });
        let fine = c.run("cpu", &mut runs, &mut errors, |_| Ok(7));
        assert_eq!((broken, fine), (None, Some(7)));
        assert_eq!(errors.get("memory"), Some(&1));
        assert!(!runs[0].ok && runs[1].ok);
        let e = c
            .last_error
            .get("memory")
            .expect("the error is kept for the log");
        assert!(
            e.contains("a bug in moonfrp: reading the memory collector's files panicked")
                && e.contains("not a char boundary"),
            "{e}"
        );
        assert_eq!(c.run("memory", &mut runs, &mut errors, |_| Ok(1)), Some(1));
        assert!(!c.last_error.contains_key("memory"));
    }
}
