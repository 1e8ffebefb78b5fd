//! What the benchmark reads from the kernel: a process's CPU time and RSS, and the run-time
//! statistics of the BPF programs a process holds.
use std::collections::BTreeMap;

use anyhow::Context as _;

/// CPU time of a process: utime+stime in clock ticks (/proc/<pid>/stat, what the budget is
/// stated in) and in nanoseconds from the process's CPU-time clock (`clock_getcpuclockid`), which
/// resolves what ticks cannot at low load and, unlike per-thread schedstat, keeps the time of
/// threads that have exited.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub ticks: u64,
    pub ns: u64,
}

pub fn cpu(pid: u32) -> anyhow::Result<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(") ")
        .context("malformed /proc/pid/stat")?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointers; the pid is a live process of ours.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &raw mut clock) };
    anyhow::ensure!(rc == 0, "clock_getcpuclockid({pid}) failed: {rc}");
    // SAFETY: as above.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut ts) };
    anyhow::ensure!(
        rc == 0,
        "clock_gettime of {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(Cpu {
        ticks,
        ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
    })
}

/// Clock ticks per second (USER_HZ).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Resident set size in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A size field of /proc/<pid>/status (`VmRSS:`, `VmHWM:` for the peak), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

pub use moonfrp_tests::bpf::ProgStats;

/// Statistics of the BPF programs `pid` holds, by program name.
pub fn prog_stats(pid: u32) -> anyhow::Result<BTreeMap<String, ProgStats>> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let text = std::fs::read_to_string(fd?.path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        if ids.contains(&info.id()) {
            let name = info.name_as_str().unwrap_or("?").to_owned();
            out.insert(
                name,
                ProgStats {
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                },
            );
        }
    }
    Ok(out)
}

/// CPU time, in nanoseconds, of the threads of `pid` named `comm` (the first field of each
/// thread's schedstat): the share of one thread pool in a process's CPU.
pub fn threads_ns(pid: u32, comm: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
