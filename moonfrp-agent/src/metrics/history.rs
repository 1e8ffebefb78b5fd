//! The history writer's own series.
use std::{fmt, sync::atomic::Ordering::Relaxed};

use prometheus_client::{encoding::DescriptorEncoder, registry::Unit};

use super::{counter, counters, gauge};
use crate::history::writer::Stats;

pub(super) fn encode(s: &Stats, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "moonfrp_history_up",
        "1 if the history database is open and the last write succeeded.",
        None,
        i64::from(s.up.load(Relaxed)),
    )?;
    counters(
        enc,
        "moonfrp_history_writes",
        "Snapshots written to history (ok), not written (error: disk full, I/O…), or skipped because the previous write was still running.",
        None,
        [
            ([("result", "ok")], s.writes_ok.load(Relaxed)),
            ([("result", "error")], s.writes_failed.load(Relaxed)),
            ([("result", "skipped")], s.skipped.load(Relaxed)),
        ],
    )?;
    gauge(
        enc,
        "moonfrp_history_write_duration",
        "Time the latest history write took (encoding, insert, rollups, pruning).",
        Some(&Unit::Seconds),
        s.last_write_seconds(),
    )?;
    gauge(
        enc,
        "moonfrp_history_database_size",
        "Size of the history database file and its write-ahead log.",
        Some(&Unit::Bytes),
        i64::try_from(s.disk_bytes.load(Relaxed)).unwrap_or(i64::MAX),
    )?;
    gauge(
        enc,
        "moonfrp_history_series",
        "Series written to history by this run.",
        None,
        i64::try_from(s.series.load(Relaxed)).unwrap_or(i64::MAX),
    )?;
    counter(
        enc,
        "moonfrp_history_pruned_rows",
        "Expired raw samples and rollup rows deleted.",
        None,
        s.pruned_rows.load(Relaxed),
    )?;
    counter(
        enc,
        "moonfrp_history_recoveries",
        "Damaged history databases moved aside (renamed *.corrupt-<time>) and replaced by a new one.",
        None,
        s.recoveries.load(Relaxed),
    )
}
