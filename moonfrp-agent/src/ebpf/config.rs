//! `[kernel]`: the sizes of the kernel tables, fixed when the programs are loaded.
use std::time::Duration;

use moonfrp_common::{DEFAULT_PEERS, DEFAULT_SLOTS, DEFAULT_TRACKED_CONNECTIONS, MAX_SLOTS};
use serde::Deserialize;

pub use super::stats::BpfStats;
use crate::untrusted::{duration_in, in_range};

/// Most peers per tunnel `kernel.export_peers` may put on `/metrics`.
pub const MAX_EXPORTED_PEERS: u32 = 10;
/// Largest `kernel.peers`: the per-CPU LRU table takes ≈ 56 B per entry and CPU.
pub const MAX_PEERS: u32 = 262_144;
/// Largest `kernel.tracked_connections` (16 B per entry).
pub const MAX_TRACKED_CONNECTIONS: u32 = 1 << 20;

/// Default length of a statistics sampling window.
pub const DEFAULT_STATS_WINDOW: &str = "1s";
/// Shortest and longest sampling window.
const STATS_WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(30));

/// Where the maps and links are pinned by default (bpffs, mounted by the agent if missing).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/moonfrp";

/// Sizes of the kernel tables, fixed when the programs are loaded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// Counter slots: how many (port, protocol) pairs can be watched at once.
    pub slots: u32,
    /// Open connections tracked for the duration histogram (in sets of four by socket address;
    /// a full set gives up its oldest).
    pub tracked_connections: u32,
    /// Peer table capacity: (port, remote address) pairs with their traffic (LRU beyond);
    /// 0 turns peer counting off (it roughly doubles the per-packet cost on watched ports).
    pub peers: u32,
    /// Export each tunnel's busiest peers to `/metrics` (0 = none, the default; at most
    /// [`MAX_EXPORTED_PEERS`]).
    pub export_peers: u32,
    /// When the kernel's BPF run-time statistics are on, for `moonfrp_agent_bpf_*` (they cost
    /// every run of every BPF program on the host while on): see [`super::stats`].
    pub bpf_stats: BpfStats,
    /// How long each sampling window of `bpf_stats = "sampled"` lasts (one per collection).
    pub bpf_stats_window: String,
    /// Pin the maps and links here, so that the programs keep counting while the agent is
    /// stopped and a restarted agent continues the same counters; empty: no pinning (the
    /// programs detach when the agent exits).
    pub pin_dir: String,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            slots: DEFAULT_SLOTS,
            tracked_connections: DEFAULT_TRACKED_CONNECTIONS,
            peers: DEFAULT_PEERS,
            export_peers: 0,
            bpf_stats: BpfStats::Sampled,
            bpf_stats_window: DEFAULT_STATS_WINDOW.to_owned(),
            pin_dir: DEFAULT_PIN_DIR.to_owned(),
        }
    }
}

impl KernelConfig {
    /// Sets of the open-connection table: `tracked_connections` rounded up to whole sets.
    pub fn connection_sets(&self) -> u32 {
        self.tracked_connections
            .div_ceil(moonfrp_common::CONN_WAYS)
            .max(1)
    }

    /// Entries of the open-connection table (whole sets).
    pub fn connection_entries(&self) -> u32 {
        self.connection_sets() * moonfrp_common::CONN_WAYS
    }

    /// Checks every size against its range; the error names the key.
    pub fn validate(self) -> Result<Self, String> {
        in_range("kernel.slots", self.slots, 1, MAX_SLOTS)?;
        in_range("kernel.peers", self.peers, 0, MAX_PEERS)?;
        in_range(
            "kernel.tracked_connections",
            self.tracked_connections,
            1,
            MAX_TRACKED_CONNECTIONS,
        )?;
        if self.export_peers > MAX_EXPORTED_PEERS {
            return Err(format!(
                "key `kernel.export_peers`: {} is over the cap of {MAX_EXPORTED_PEERS} (one series per peer and tunnel); peers beyond it are in the API",
                self.export_peers
            ));
        }
        self.checked_stats_window()?;
        if !self.pin_dir.is_empty()
            && (!self.pin_dir.starts_with('/')
                || self.pin_dir.contains("/../")
                || self.pin_dir.ends_with("/.."))
        {
            return Err(format!(
                "key `kernel.pin_dir`: `{}` is not an absolute path; use e.g. {DEFAULT_PIN_DIR}, or \"\" to pin nothing",
                crate::untrusted::shown(&self.pin_dir)
            ));
        }
        Ok(self)
    }

    fn checked_stats_window(&self) -> Result<Duration, String> {
        let (lo, hi) = STATS_WINDOW_RANGE;
        duration_in(&self.bpf_stats_window, lo, hi)
            .map_err(|e| format!("key `kernel.bpf_stats_window`: {e}"))
    }

    /// The length of a sampling window (checked by [`Self::validate`]).
    pub fn stats_window(&self) -> Duration {
        self.checked_stats_window()
            .unwrap_or(Duration::from_secs(1))
    }

    /// The pin directory, if pinning is on.
    pub fn pins(&self) -> Option<&std::path::Path> {
        (!self.pin_dir.is_empty()).then(|| std::path::Path::new(&self.pin_dir))
    }
}
