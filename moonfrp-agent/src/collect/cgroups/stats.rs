//! One cgroup's accounting files, on the pure cgroup v2 layout and on the hybrid one (v2 for CPU
//! and pressure, the v1 `memory`, `blkio`, `pids` hierarchies for the rest). Pure parsers over
//! text and a thin reader; a file that is missing leaves its value out, a cgroup that vanished
//! while being read is no cgroup at all.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Where the cgroup hierarchies are mounted, and what v2 offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub v2: Option<PathBuf>,
    /// v1 hierarchies by controller (`memory`, `cpuacct`, `blkio`, `pids`).
    pub v1: BTreeMap<String, PathBuf>,
    /// What v2 has: its root's controllers (`memory`, `io`, `pids`) and `psi` when the kernel
    /// keeps pressure stall information. The rest is read from v1 (hybrid layout), without
    /// trying the v2 file first in every cgroup.
    pub v2_has: std::collections::BTreeSet<String>,
}

impl Layout {
    /// The hierarchies in the mount table, and what v2's root says it has (read once).
    pub fn from_mounts(m: &crate::sys::Mounts) -> Self {
        let mut v2_has = std::collections::BTreeSet::new();
        if let Some(root) = &m.cgroup2 {
            if let Some(c) = read(root, "cgroup.controllers") {
                v2_has.extend(c.split_whitespace().map(str::to_owned));
            }
            if root.join("memory.pressure").exists() {
                v2_has.insert("psi".to_owned());
            }
        }
        Self {
            v2: m.cgroup2.clone(),
            v1: m.cgroup1.clone(),
            v2_has,
        }
    }

    fn v2_has(&self, what: &str) -> bool {
        self.v2_has.contains(what)
    }

    /// `rel`'s directory in the v1 hierarchy of `controller`.
    fn v1(&self, controller: &str, rel: &Path) -> Option<PathBuf> {
        self.v1.get(controller).map(|root| root.join(rel))
    }

    /// The hierarchies a walk starts from: v2, and v1 `memory` (containers of a cgroupfs
    /// driver on a hybrid host live only there).
    pub fn roots(&self) -> Vec<PathBuf> {
        self.v2
            .iter()
            .chain(self.v1.get("memory"))
            .cloned()
            .collect()
    }
}

/// What one cgroup used. `None`: that file is missing here (an older kernel, a controller not
/// enabled for the cgroup).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// PSI: time some (waiting) or all (stalled) of its tasks waited for memory.
    pub memory_waiting_seconds: Option<f64>,
    pub memory_stalled_seconds: Option<f64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
}

/// `key value` lines (`cpu.stat`, `memory.events`, `memory.oom_control`): the value of `key`.
pub fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A file holding one number (`memory.current`, `pids.current`); `max` is not a number.
pub fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `memory.pressure`: the `total=` microseconds of the `some` and `full` lines.
pub fn pressure(text: &str) -> (Option<f64>, Option<f64>) {
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(kind))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("total="))?
            .parse::<u64>()
            .ok()
            .map(|us| us as f64 / 1e6)
    };
    (total("some"), total("full"))
}

/// v2 `io.stat`: `MAJ:MIN rbytes=… wbytes=… …` per device, summed.
pub fn io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for f in text.split_whitespace() {
        if let Some(v) = f.strip_prefix("rbytes=") {
            r = r.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = f.strip_prefix("wbytes=") {
            w = w.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (r, w)
}

/// v1 `blkio.throttle.io_service_bytes_recursive`: `MAJ:MIN Read|Write|… N` per device, summed.
pub fn blkio(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(_dev), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let n: u64 = n.parse().unwrap_or(0);
        match op {
            "Read" => r = r.saturating_add(n),
            "Write" => w = w.saturating_add(n),
            _ => {}
        }
    }
    (r, w)
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// Reads cgroup `rel` (relative to each hierarchy's root); `None` if it is gone.
pub fn read_stats(layout: &Layout, rel: &Path) -> Option<Stats> {
    read_rest(layout, rel, read_cpu(layout, rel))
}

/// CPU seconds of cgroup `rel`, user and system (`cpu.stat`; v1 `cpuacct`): ranking containers
/// needs only these, and [`read_rest`] takes them instead of reading them again.
pub fn read_cpu(layout: &Layout, rel: &Path) -> Cpu {
    let v2 = layout.v2.as_ref().map(|r| r.join(rel));
    if let Some(cpu) = v2.as_deref().and_then(|d| read(d, "cpu.stat")) {
        let s = |key| field(&cpu, key).map(|us| us as f64 / 1e6);
        return Cpu {
            user: s("user_usec"),
            system: s("system_usec"),
        };
    }
    let ns = |f| {
        layout
            .v1("cpuacct", rel)
            .and_then(|d| read(&d, f))
            .and_then(|t| number(&t))
            .map(|ns| ns as f64 / 1e9)
    };
    Cpu {
        user: ns("cpuacct.usage_user"),
        system: ns("cpuacct.usage_sys"),
    }
}

/// User and system CPU seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub user: Option<f64>,
    pub system: Option<f64>,
}

impl Cpu {
    /// For ranking: what is not readable counts 0.
    pub fn seconds(self) -> f64 {
        self.user.unwrap_or(0.0) + self.system.unwrap_or(0.0)
    }
}

/// Everything but CPU of cgroup `rel`, with `cpu` already read; `None` if it is gone.
pub fn read_rest(layout: &Layout, rel: &Path, cpu: Cpu) -> Option<Stats> {
    let v2 = layout.v2.as_ref().map(|r| r.join(rel));
    let v2_file = |f: &str| v2.as_deref().and_then(|d| read(d, f));
    let v1_file = |c: &str, f: &str| layout.v1(c, rel).and_then(|d| read(&d, f));
    let mut s = Stats {
        cpu_user_seconds: cpu.user,
        cpu_system_seconds: cpu.system,
        ..Stats::default()
    };
    if layout.v2_has("memory") {
        s.memory_bytes = v2_file("memory.current").and_then(|t| number(&t));
        s.memory_peak_bytes = v2_file("memory.peak").and_then(|t| number(&t));
        s.oom_kills = v2_file("memory.events").and_then(|t| field(&t, "oom_kill"));
    } else {
        s.memory_bytes = v1_file("memory", "memory.usage_in_bytes").and_then(|t| number(&t));
        s.memory_peak_bytes =
            v1_file("memory", "memory.max_usage_in_bytes").and_then(|t| number(&t));
        s.oom_kills = v1_file("memory", "memory.oom_control").and_then(|t| field(&t, "oom_kill"));
    }
    if layout.v2_has("psi")
        && let Some(p) = v2_file("memory.pressure")
    {
        (s.memory_waiting_seconds, s.memory_stalled_seconds) = pressure(&p);
    }
    let io = if layout.v2_has("io") {
        v2_file("io.stat").map(|t| io_stat(&t))
    } else {
        v1_file("blkio", "blkio.throttle.io_service_bytes_recursive").map(|t| blkio(&t))
    };
    if let Some((r, w)) = io {
        (s.io_read_bytes, s.io_write_bytes) = (Some(r), Some(w));
    }
    s.pids = if layout.v2_has("pids") {
        v2_file("pids.current")
    } else {
        v1_file("pids", "pids.current")
    }
    .and_then(|t| number(&t));
    // A cgroup removed while it was read: its files were not all there; it is gone, not broken.
    let still_there = v2
        .iter()
        .cloned()
        .chain(layout.v1("memory", rel))
        .any(|d| d.is_dir());
    still_there.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accounting_files() {
        let cpu = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnice_usec 0\n";
        assert_eq!(field(cpu, "user_usec"), Some(2_000_000));
        assert_eq!(field(cpu, "system_usec"), Some(500_000));
        assert_eq!(field(cpu, "nope"), None);
        assert_eq!(
            field("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(number("123\n"), Some(123));
        assert_eq!(number("max\n"), None);
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n";
        assert_eq!(pressure(psi), (Some(1.5), Some(0.25)));
        assert_eq!(pressure(""), (None, None));
        assert_eq!(
            io_stat(
                "8:0 rbytes=100 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n8:16 rbytes=5 wbytes=7 rios=1 wios=1\n"
            ),
            (105, 27)
        );
        assert_eq!(
            blkio(
                "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Total 4608\n8:16 Read 4\nTotal 4612\n"
            ),
            (4100, 512)
        );
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
    }

    #[test]
    fn reads_a_pure_v2_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("v2");
        let rel = Path::new("system.slice/frps.service");
        write(
            &v2.join(rel),
            &[
                (
                    "cpu.stat",
                    "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
                ),
                ("memory.current", "1048576\n"),
                ("memory.peak", "2097152\n"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n"),
                (
                    "memory.pressure",
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
                ),
                ("io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n"),
                ("pids.current", "7\n"),
            ],
        );
        let pure = Layout {
            v2: Some(v2.clone()),
            v1: BTreeMap::new(),
            v2_has: ["memory", "io", "pids", "psi"].map(str::to_owned).into(),
        };
        let s = read_stats(&pure, rel).unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_user_seconds: Some(2.0),
                cpu_system_seconds: Some(1.0),
                memory_bytes: Some(1 << 20),
                memory_peak_bytes: Some(2 << 20),
                memory_waiting_seconds: Some(0.000_01),
                memory_stalled_seconds: Some(0.000_005),
                io_read_bytes: Some(4096),
                io_write_bytes: Some(8192),
                pids: Some(7),
                oom_kills: Some(1),
            }
        );

        // Gone: nothing, not an error.
        assert_eq!(
            read_stats(&pure, Path::new("system.slice/gone.service")),
            None
        );
    }

    #[test]
    fn reads_a_hybrid_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let rel = Path::new("system.slice/frps.service");
        // v2 has only cpu.stat and pressure; memory, blkio and pids are v1.
        let hv2 = root.path().join("unified");
        write(
            &hv2.join(rel),
            &[(
                "cpu.stat",
                "usage_usec 1\nuser_usec 500000\nsystem_usec 0\n",
            )],
        );
        let v1 = |c: &str| root.path().join(c);
        write(
            &v1("memory").join(rel),
            &[
                ("memory.usage_in_bytes", "3145728\n"),
                ("memory.max_usage_in_bytes", "4194304\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
            ],
        );
        write(
            &v1("blkio").join(rel),
            &[(
                "blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 10\n8:0 Write 20\nTotal 30\n",
            )],
        );
        write(&v1("pids").join(rel), &[("pids.current", "3\n")]);
        let hybrid = Layout {
            v2: Some(hv2),
            v1: ["memory", "blkio", "pids"]
                .iter()
                .map(|c| ((*c).to_owned(), v1(c)))
                .collect(),
            v2_has: std::collections::BTreeSet::from(["hugetlb".to_owned()]),
        };
        let s = read_stats(&hybrid, rel).unwrap();
        assert_eq!(
            (
                s.cpu_user_seconds,
                s.memory_bytes,
                s.memory_peak_bytes,
                s.oom_kills,
                s.io_read_bytes,
                s.io_write_bytes,
                s.pids
            ),
            (
                Some(0.5),
                Some(3 << 20),
                Some(4 << 20),
                Some(2),
                Some(10),
                Some(20),
                Some(3)
            )
        );
        assert_eq!(s.memory_waiting_seconds, None);
    }
}
