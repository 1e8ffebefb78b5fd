//! Load averages, uptime and the host's open file handles (procfs and /proc/sys/fs/file-nr).
use procfs::{FromRead, LoadAverage};

use super::{CollectError, read_file};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostSample {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub uptime_seconds: f64,
    /// Allocated file handles, and the system-wide maximum.
    pub open_fds: u64,
    pub max_fds: u64,
}

pub fn parse(loadavg: &str, uptime: &str, file_nr: &str) -> Result<HostSample, CollectError> {
    let l = LoadAverage::from_read(loadavg.as_bytes())
        .map_err(|e| CollectError::parse("/proc/loadavg", e))?;
    let uptime_seconds = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CollectError::parse("/proc/uptime", "no uptime field"))?;
    let nr: Vec<u64> = file_nr
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [allocated, _unused, max] = nr[..] else {
        return Err(CollectError::parse(
            "/proc/sys/fs/file-nr",
            "expected three numbers",
        ));
    };
    Ok(HostSample {
        load1: f64::from(l.one),
        load5: f64::from(l.five),
        load15: f64::from(l.fifteen),
        uptime_seconds,
        open_fds: allocated,
        max_fds: max,
    })
}

pub fn read() -> Result<HostSample, CollectError> {
    parse(
        &read_file("/proc/loadavg")?,
        &read_file("/proc/uptime")?,
        &read_file("/proc/sys/fs/file-nr")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn parses_fixtures() {
        let h = parse(
            &fixture("proc/loadavg"),
            &fixture("proc/uptime"),
            &fixture("proc/file-nr"),
        )
        .unwrap();
        assert!(h.uptime_seconds > 0.0 && h.max_fds > h.open_fds && h.open_fds > 0);
        let h = parse(
            "0.50 0.25 0.10 1/100 42\n",
            "12.5 20.0\n",
            "1024\t0\t9223372036854775807\n",
        )
        .unwrap();
        assert_eq!(
            (h.load1, h.load5, h.load15, h.uptime_seconds, h.open_fds),
            (0.5, 0.25, f64::from(0.1f32), 12.5, 1024)
        );
        assert!(parse("0.5 0.25 0.1 1/100 42\n", "x", "1 0 2").is_err());
    }
}
