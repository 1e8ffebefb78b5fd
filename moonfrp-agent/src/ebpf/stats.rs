//! The kernel's BPF run-time statistics without a standing cost.
//!
//! While statistics are on (`BPF_ENABLE_STATS`, a static key for the whole host), the kernel
//! reads the clock twice around every run of every BPF program — moonfrp's and every other
//! tool's — and adds the time and one run to the program's totals. moonfrp turns them on only
//! for a short window after a collection (`sampled`, the default), then leaves them off for at
//! least nine window lengths ([`REST`]): the totals then grow only inside windows, and
//! `moonfrp_agent_bpf_stats_window_seconds_total` says for how long they were on, so
//! `rate(runs) / rate(window seconds)` estimates the run rate and `rate(run time) / rate(runs)`
//! the cost of one run. Outside the windows no program pays anything for them.
use std::{
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;
use tracing::warn;

/// `[kernel] bpf_stats`: when the kernel's run-time statistics are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BpfStats {
    /// Never: `moonfrp_agent_bpf_runs_total` and `…_run_time_seconds_total` are not exported.
    Off,
    /// For `bpf_stats_window` after a collection, then off for nine windows at least.
    #[default]
    Sampled,
    /// All the time the agent runs (every BPF program on the host pays for it all that time).
    Always,
}

impl<'de> Deserialize<'de> for BpfStats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Mode;
        impl serde::de::Visitor<'_> for Mode {
            type Value = BpfStats;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"sampled\", \"always\" or \"off\"")
            }
            // `true` meant "on while the agent runs" before sampling existed.
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<BpfStats, E> {
                Ok(if v { BpfStats::Always } else { BpfStats::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BpfStats, E> {
                match v {
                    "off" => Ok(BpfStats::Off),
                    "sampled" => Ok(BpfStats::Sampled),
                    "always" => Ok(BpfStats::Always),
                    other => Err(E::custom(format!(
                        "`{}` is not a bpf_stats mode; use \"sampled\", \"always\" or \"off\"",
                        crate::untrusted::shown(other)
                    ))),
                }
            }
        }
        d.deserialize_any(Mode)
    }
}

/// The statistics switch of one agent.
pub struct StatsWindow {
    mode: BpfStats,
    /// Sampled: asks the window thread to open a window.
    open: Option<SyncSender<()>>,
    /// Time the statistics were on, in nanoseconds (sampled: the closed windows).
    on_ns: Arc<AtomicU64>,
    /// Always: the fd that keeps them on, and since when.
    held: Option<(OwnedFd, Instant)>,
}

impl StatsWindow {
    /// Starts the switch in `mode`; if the kernel refuses to turn statistics on (no
    /// CAP_SYS_ADMIN, or a kernel before 5.8), it says so once and stays off.
    pub fn start(mode: BpfStats, window: Duration) -> Self {
        let mut s = Self {
            mode,
            open: None,
            on_ns: Arc::new(AtomicU64::new(0)),
            held: None,
        };
        if mode == BpfStats::Off {
            return s;
        }
        let fd = match enable() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "cannot enable BPF run-time statistics; moonfrp_agent_bpf_* stays empty");
                s.mode = BpfStats::Off;
                return s;
            }
        };
        match mode {
            BpfStats::Always => s.held = Some((fd, Instant::now())),
            BpfStats::Sampled => {
                drop(fd);
                let (tx, rx) = mpsc::sync_channel::<()>(1);
                let on_ns = s.on_ns.clone();
                let spawned = thread::Builder::new()
                    .name("bpf-stats".into())
                    .spawn(move || windows(&rx, window, &on_ns));
                match spawned {
                    Ok(_) => s.open = Some(tx),
                    Err(e) => {
                        warn!(error = %e, "cannot start the BPF statistics thread; moonfrp_agent_bpf_* stays empty");
                        s.mode = BpfStats::Off;
                    }
                }
            }
            BpfStats::Off => unreachable!("returned above"),
        }
        s
    }

    /// Whether program statistics are kept at all.
    pub fn on(&self) -> bool {
        self.mode != BpfStats::Off
    }

    /// Opens a sampling window now (sampled mode), unless one is open or resting: then the ask is
    /// dropped.
    pub fn sample(&self) {
        if let Some(tx) = &self.open
            && let Err(TrySendError::Disconnected(())) = tx.try_send(())
        {
            warn!("the BPF statistics thread has stopped");
        }
    }

    /// How long the statistics have been on so far, if they are kept.
    pub fn seconds_on(&self) -> Option<Duration> {
        match (&self.held, self.mode) {
            (Some((_, since)), _) => Some(since.elapsed()),
            (None, BpfStats::Sampled) => {
                Some(Duration::from_nanos(self.on_ns.load(Ordering::Relaxed)))
            }
            _ => None,
        }
    }
}

fn enable() -> Result<OwnedFd, aya::sys::SyscallError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
}

/// After a window the statistics stay off for at least this many window lengths: on at most a
/// tenth of the time whatever the interval (at 1 s with the 1 s default window they were on all
/// the time, and every BPF program on the host paid for it), and the host-wide switch, which
/// patches kernel code on every CPU each time it flips, flips at most twice per ten windows.
const REST: u32 = 9;

/// The window thread: a window for the first request after the previous window's rest, until
/// the switch is dropped.
fn windows(rx: &mpsc::Receiver<()>, window: Duration, on_ns: &AtomicU64) {
    let mut failed = false;
    while rx.recv().is_ok() {
        match enable() {
            Ok(fd) => {
                let since = Instant::now();
                thread::sleep(window);
                drop(fd);
                let took = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                on_ns.fetch_add(took, Ordering::Relaxed);
                failed = false;
            }
            Err(e) if !failed => {
                warn!(error = %e, "cannot enable BPF run-time statistics for a sampling window");
                failed = true;
            }
            Err(_) => {}
        }
        thread::sleep(window * REST);
        // Asks made during the rest are dropped: the next window follows the next collection.
        while rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct K {
        bpf_stats: BpfStats,
    }

    fn parse(v: &str) -> Result<BpfStats, String> {
        toml::from_str::<K>(&format!("bpf_stats = {v}"))
            .map(|k| k.bpf_stats)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn modes_and_the_old_booleans_parse() {
        assert_eq!(parse("\"sampled\""), Ok(BpfStats::Sampled));
        assert_eq!(parse("\"always\""), Ok(BpfStats::Always));
        assert_eq!(parse("\"off\""), Ok(BpfStats::Off));
        assert_eq!(parse("true"), Ok(BpfStats::Always));
        assert_eq!(parse("false"), Ok(BpfStats::Off));
        let e = parse("\"sometimes\"").unwrap_err();
        assert!(e.contains("`sometimes` is not a bpf_stats mode"), "{e}");
    }
}
