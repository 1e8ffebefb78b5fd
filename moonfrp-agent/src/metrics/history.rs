//! The history writer's own series.
use std::sync::atomic::Ordering::Relaxed;

use crate::{
    history::writer::Stats,
    series::{Builder, Unit},
};

pub(super) fn build(s: &Stats, b: &mut Builder) {
    b.gauge(
        "moonfrp_history_up",
        "1 if the history database is open and the last write succeeded.",
        None,
        i64::from(s.up.load(Relaxed)),
    );
    b.counters("moonfrp_history_writes",
        "Snapshots written to history (ok), not written (error: disk full, I/O…), or skipped because the previous write was still running.",
        None,
        [
            ([("result", "ok")], s.writes_ok.load(Relaxed)),
            ([("result", "error")], s.writes_failed.load(Relaxed)),
            ([("result", "skipped")], s.skipped.load(Relaxed)),
        ],
    );
    b.gauge(
        "moonfrp_history_write_duration",
        "Time the latest history write took (encoding, insert, rollups, pruning).",
        Some(Unit::Seconds),
        s.last_write_seconds(),
    );
    b.gauge(
        "moonfrp_history_database_size",
        "Size of the history database file and its write-ahead log.",
        Some(Unit::Bytes),
        i64::try_from(s.disk_bytes.load(Relaxed)).unwrap_or(i64::MAX),
    );
    b.gauge(
        "moonfrp_history_series",
        "Series in the last snapshot written to history.",
        None,
        i64::try_from(s.series.load(Relaxed)).unwrap_or(i64::MAX),
    );
    b.counter(
        "moonfrp_history_pruned_rows",
        "Expired raw samples and rollup rows deleted.",
        None,
        s.pruned_rows.load(Relaxed),
    );
    b.counter(
        "moonfrp_history_compacted_samples",
        "Raw samples moved into compressed chunks.",
        None,
        s.compacted_samples.load(Relaxed),
    );
    b.counter("moonfrp_history_recoveries",
        "Damaged history databases moved aside (renamed *.corrupt-<time>) and replaced by a new one.",
        None,
        s.recoveries.load(Relaxed),
    );
}
