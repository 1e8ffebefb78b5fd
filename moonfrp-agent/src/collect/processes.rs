//! Running frps/frpc processes (procfs): CPU, memory, threads, FDs, start time, and restarts (a
//! new PID for the same name and config file). Labels: `process`, and `config` when the command
//! line names one (`-c`, `--config`).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use procfs::process::{Process, Stat};

use super::CollectError;
use crate::untrusted::Limit;

/// One FRP program identity: its name and config file.
pub type Key = (String, String);

/// The state of one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct FrpProcess {
    pub process: String,
    pub config: String,
    /// Number of matching processes running now (0 = it was seen before and is gone).
    pub running: u64,
    /// New PIDs seen after the first sighting.
    pub restarts: u64,
    /// Sums over the running processes (`None` when none runs).
    pub stats: Option<ProcStats>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// The oldest start time among them, Unix seconds.
    pub start_time_seconds: f64,
}

/// The config file named on a command line, if any.
pub fn config_from_args(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-c" || a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a
            .strip_prefix("--config=")
            .or_else(|| a.strip_prefix("-c="))
        {
            return Some(v.to_owned());
        }
    }
    None
}

/// The configured name this process matches by its name (comm) or executable's file name.
pub fn matches<'a>(names: &'a [String], comm: &str, exe: Option<&str>) -> Option<&'a String> {
    names
        .iter()
        .find(|n| comm == n.as_str() || exe.is_some_and(|e| e == n.as_str()))
}

/// Most (name, config) identities reported.
pub const MAX_IDENTITIES: usize = 64;

/// Remembers identities across intervals to count restarts.
#[derive(Debug)]
pub struct Tracker {
    names: Vec<String>,
    seen: BTreeMap<Key, (BTreeSet<i32>, u64)>,
    /// Every running process's executable file name, by PID, from the last scan.
    exes: HashMap<i32, Exe>,
}

/// A process's executable file name, read once: the same PID with the same start time and
/// command name is the same program (an exec changes the command name).
#[derive(Debug)]
struct Exe {
    start: u64,
    comm: String,
    name: Option<String>,
}

impl Tracker {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            seen: BTreeMap::new(),
            exes: HashMap::new(),
        }
    }

    pub fn set_names(&mut self, names: Vec<String>) {
        self.names = names;
    }

    /// Folds one observation (identity → (pid, stats) of every matching process) into the state.
    /// Identities are remembered (a vanished one reports 0 running), at most
    /// [`MAX_IDENTITIES`]: any local user can start a process named `frps` with a config path of
    /// their choosing, and each new path would otherwise be a series forever.
    pub fn observe(&mut self, now: &BTreeMap<Key, Vec<(i32, ProcStats)>>) -> Vec<FrpProcess> {
        for (key, procs) in now {
            let pids: BTreeSet<i32> = procs.iter().map(|(p, _)| *p).collect();
            let full = self.seen.len() >= MAX_IDENTITIES;
            match self.seen.get_mut(key) {
                Some((old, restarts)) => {
                    *restarts += pids.difference(old).count() as u64;
                    *old = pids;
                }
                None if full => Limit::Processes.hit(),
                None => {
                    self.seen.insert(key.clone(), (pids, 0));
                }
            }
        }
        self.seen
            .iter_mut()
            .map(|(key, (pids, restarts))| {
                let procs = now.get(key).map(Vec::as_slice).unwrap_or_default();
                if procs.is_empty() {
                    pids.clear();
                }
                let stats = procs.iter().map(|(_, s)| *s).reduce(|a, b| ProcStats {
                    cpu_seconds: a.cpu_seconds + b.cpu_seconds,
                    resident_bytes: a.resident_bytes + b.resident_bytes,
                    threads: a.threads + b.threads,
                    open_fds: a.open_fds + b.open_fds,
                    start_time_seconds: a.start_time_seconds.min(b.start_time_seconds),
                });
                FrpProcess {
                    process: key.0.clone(),
                    config: key.1.clone(),
                    running: procs.len() as u64,
                    restarts: *restarts,
                    stats,
                }
            })
            .collect()
    }

    /// Scans /proc.
    pub fn read(&mut self) -> Result<Vec<FrpProcess>, CollectError> {
        let all = procfs::process::all_processes().map_err(|e| CollectError::parse("/proc", e))?;
        let tps = procfs::ticks_per_second() as f64;
        let boot =
            procfs::boot_time_secs().map_err(|e| CollectError::parse("/proc/stat", e))? as f64;
        let page = procfs::page_size();
        let mut now: BTreeMap<Key, Vec<(i32, ProcStats)>> = BTreeMap::new();
        let mut exes = HashMap::with_capacity(self.exes.len());
        // Processes come and go while we read: one that vanished is simply not counted.
        for p in all.flatten() {
            let Ok(stat) = p.stat() else { continue };
            let exe = exe_name(&p, &stat, &mut self.exes);
            let found = inspect(&p, &stat, exe.name.as_deref(), &self.names, tps, boot, page);
            exes.insert(p.pid, exe);
            if let Some((key, stats)) = found {
                now.entry(key).or_default().push((p.pid, stats));
            }
        }
        // Only the processes running now are kept.
        self.exes = exes;
        Ok(self.observe(&now))
    }
}

/// The executable's file name of `p`: from the last scan if it is the same program, else read
/// (a link in /proc that every process would otherwise cost each interval).
fn exe_name(p: &Process, stat: &Stat, last: &mut HashMap<i32, Exe>) -> Exe {
    match last.remove(&p.pid) {
        Some(e) if e.start == stat.starttime && e.comm == stat.comm => e,
        _ => Exe {
            start: stat.starttime,
            comm: stat.comm.clone(),
            name: p
                .exe()
                .ok()
                .and_then(|e| e.file_name().and_then(|n| n.to_str()).map(str::to_owned)),
        },
    }
}

fn inspect(
    p: &Process,
    stat: &Stat,
    exe_name: Option<&str>,
    names: &[String],
    tps: f64,
    boot: f64,
    page: u64,
) -> Option<(Key, ProcStats)> {
    let name = matches(names, &stat.comm, exe_name)?;
    // The path comes from whoever started the process: escaped and bounded like a name.
    let config = config_from_args(&p.cmdline().unwrap_or_default())
        .map(|c| crate::untrusted::text(&c))
        .unwrap_or_default();
    let stats = ProcStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tps,
        resident_bytes: stat.rss * page,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: p.fd_count().map_or(0, |n| n as u64),
        start_time_seconds: boot + stat.starttime as f64 / tps,
    };
    Some(((name.clone(), config), stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn config_path_from_argv() {
        assert_eq!(
            config_from_args(&args(&["frps", "-c", "/etc/frp/frps.toml"])),
            Some("/etc/frp/frps.toml".into())
        );
        assert_eq!(
            config_from_args(&args(&["frpc", "--config=/etc/frp/frpc.toml"])),
            Some("/etc/frp/frpc.toml".into())
        );
        assert_eq!(
            config_from_args(&args(&["frpc", "verify", "--config", "a.ini"])),
            Some("a.ini".into())
        );
        assert_eq!(config_from_args(&args(&["frps"])), None);
        assert_eq!(config_from_args(&args(&["frps", "-c"])), None);
    }

    #[test]
    fn matches_name_or_executable() {
        let names = args(&["frps", "frpc"]);
        assert_eq!(
            matches(&names, "frps", None).map(String::as_str),
            Some("frps")
        );
        assert_eq!(
            matches(&names, "bash", Some("frpc")).map(String::as_str),
            Some("frpc")
        );
        assert_eq!(matches(&names, "frps-helper", Some("frps-helper")), None);
    }

    #[test]
    fn an_executable_is_read_once_per_program() {
        let me = Process::myself().unwrap();
        let stat = me.stat().unwrap();
        let mut last = HashMap::new();
        let read = exe_name(&me, &stat, &mut last);
        let binary = std::env::current_exe().unwrap();
        assert_eq!(read.name.as_deref(), binary.file_name().unwrap().to_str());
        // The same PID, start time and command name: the name from the last scan, not read.
        let kept = |comm: &str, start: u64| Exe {
            start,
            comm: comm.into(),
            name: Some("from-the-last-scan".into()),
        };
        last.insert(me.pid, kept(&stat.comm, stat.starttime));
        let again = exe_name(&me, &stat, &mut last);
        assert_eq!(again.name.as_deref(), Some("from-the-last-scan"));
        assert!(last.is_empty(), "taken out of the last scan's map");
        // Another command name (an exec) or start time (a reused PID): read again.
        for other in [
            kept("sh", stat.starttime),
            kept(&stat.comm, stat.starttime + 1),
        ] {
            last.insert(me.pid, other);
            assert_eq!(exe_name(&me, &stat, &mut last).name, read.name);
        }
    }

    #[test]
    fn restarts_count_new_pids_and_survive_gaps() {
        let mut t = Tracker::new(args(&["frps"]));
        let key: Key = ("frps".into(), "/etc/frp/frps.toml".into());
        let s = ProcStats {
            cpu_seconds: 1.0,
            resident_bytes: 10,
            threads: 3,
            open_fds: 7,
            start_time_seconds: 100.0,
        };
        let obs = |pids: &[i32]| {
            BTreeMap::from([(
                key.clone(),
                pids.iter().map(|p| (*p, s)).collect::<Vec<_>>(),
            )])
        };
        let first = t.observe(&obs(&[10]));
        assert_eq!((first[0].running, first[0].restarts), (1, 0));
        assert_eq!(t.observe(&obs(&[10]))[0].restarts, 0);
        let gone = t.observe(&BTreeMap::new());
        assert_eq!(
            (gone[0].running, gone[0].restarts, gone[0].stats),
            (0, 0, None)
        );
        let back = t.observe(&obs(&[11]));
        assert_eq!((back[0].running, back[0].restarts), (1, 1));
        let two = t.observe(&obs(&[11, 12]));
        assert_eq!((two[0].running, two[0].restarts), (2, 2));
        assert_eq!(two[0].stats.unwrap().threads, 6);
    }
}
