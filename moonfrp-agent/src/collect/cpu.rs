//! CPU time by mode from /proc/stat (procfs), and the busy ratio over the last interval.
use std::collections::BTreeMap;

use procfs::{ExplicitSystemInfo, FromBufReadSI, KernelStats};

use super::{CollectError, read_file};

const PATH: &str = "/proc/stat";

/// CPU seconds summed over all CPUs, by mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuSample {
    pub seconds: BTreeMap<&'static str, f64>,
    pub cpus: usize,
    pub boot_time: u64,
    /// Busy share of all CPUs since the previous sample (0..=1); `None` for the first one.
    pub usage_ratio: Option<f64>,
}

/// Parses /proc/stat; `tps` is USER_HZ.
pub fn parse(text: &str, tps: u64) -> Result<CpuSample, CollectError> {
    let si = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: tps,
        page_size: 4096,
        is_little_endian: true,
    };
    let ks = KernelStats::from_buf_read(text.as_bytes(), &si)
        .map_err(|e| CollectError::parse(PATH, e))?;
    let t = &ks.total;
    let s = |ticks: u64| ticks as f64 / tps as f64;
    let seconds = BTreeMap::from([
        ("user", s(t.user)),
        ("nice", s(t.nice)),
        ("system", s(t.system)),
        ("idle", s(t.idle)),
        ("iowait", s(t.iowait.unwrap_or(0))),
        ("irq", s(t.irq.unwrap_or(0))),
        ("softirq", s(t.softirq.unwrap_or(0))),
        ("steal", s(t.steal.unwrap_or(0))),
    ]);
    Ok(CpuSample {
        seconds,
        cpus: ks.cpu_time.len(),
        boot_time: ks.btime,
        usage_ratio: None,
    })
}

pub fn read() -> Result<CpuSample, CollectError> {
    parse(&read_file(PATH)?, procfs::ticks_per_second())
}

/// Share of time not idle (nor waiting for I/O) between two samples.
pub fn usage_ratio(prev: &CpuSample, now: &CpuSample) -> Option<f64> {
    let total = |s: &CpuSample| s.seconds.values().sum::<f64>();
    let idle = |s: &CpuSample| s.seconds["idle"] + s.seconds["iowait"];
    let dt = total(now) - total(prev);
    (dt > 0.0).then(|| (1.0 - (idle(now) - idle(prev)) / dt).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn parses_modes_cpus_and_boot_time() {
        let s = parse(&fixture("proc/stat"), 100).unwrap();
        assert_eq!(s.cpus, 2);
        assert!(s.boot_time > 1_700_000_000);
        assert!(s.seconds["idle"] > 0.0 && s.seconds["user"] > 0.0);
        assert_eq!(s.seconds.len(), 8);
    }

    #[test]
    fn usage_ratio_from_two_samples() {
        let text = |user: u64, idle: u64| {
            format!(
                "cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\nctxt 5\nbtime 1\nprocesses 9\n"
            )
        };
        let a = parse(&text(100, 300), 100).unwrap();
        let b = parse(&text(150, 350), 100).unwrap();
        assert_eq!(usage_ratio(&a, &b), Some(0.5));
        assert_eq!(usage_ratio(&b, &b), None);
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_file() {
        let err = parse("cpu  x y z\n", 100).unwrap_err().to_string();
        assert!(err.contains("/proc/stat"), "{err}");
    }
}
