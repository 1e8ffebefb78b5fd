//! The agent's own process statistics (`process_*`), sampled once per snapshot so that two
//! scrapes of the same snapshot are identical.
use procfs::process::{LimitValue, Process};

/// A sample of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// Samples this process from /proc/self.
pub fn sample() -> Result<ProcessSample, procfs::ProcError> {
    let me = Process::myself()?;
    let stat = me.stat()?;
    let ticks = procfs::ticks_per_second() as f64;
    let max_fds = match me.limits()?.max_open_files.soft_limit {
        LimitValue::Value(v) => Some(v),
        LimitValue::Unlimited => None,
    };
    Ok(ProcessSample {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        open_fds: me.fd_count()? as u64,
        max_fds,
        start_time_seconds: procfs::boot_time_secs()? as f64 + stat.starttime as f64 / ticks,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_test_process() {
        let s = super::sample().unwrap();
        assert!(s.resident_bytes > 0 && s.open_fds >= 3 && s.threads >= 1);
        assert!(s.start_time_seconds > 1.6e9, "{}", s.start_time_seconds);
    }
}
