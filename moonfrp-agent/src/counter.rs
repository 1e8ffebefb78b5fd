//! Counter arithmetic shared by history (queries and rollups) and the alert rules.
//!
//! Counter resets are handled the way Prometheus' `rate()` does: a value lower than the one
//! before means the counter restarted from zero, so the increase is the new value. Across two
//! agent runs the increase counts but gives no rate (see [`counter_step`]).
use crate::time::ms_to_s;

/// One stored value with when it was taken and by which agent run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Obs {
    /// Unix milliseconds.
    pub ts: i64,
    pub value: f64,
    pub run: i64,
    /// Unix milliseconds when that run started.
    pub run_start: i64,
}

/// Increase of a counter between two samples and the seconds it covers; `None` if the
/// timestamps do not move forward (a clock step backwards).
pub fn counter_step(prev: &Obs, cur: &Obs) -> Option<(f64, f64)> {
    if cur.ts <= prev.ts {
        return None;
    }
    if cur.value >= prev.value {
        return Some((cur.value - prev.value, ms_to_s(cur.ts - prev.ts)));
    }
    // A reset in the same run: counting began again from zero after the previous sample.
    if cur.run == prev.run {
        return Some((cur.value, ms_to_s(cur.ts - prev.ts)));
    }
    // A new run: its counters began at some moment after the run started (the programs load
    // first), which no sample records. The increase is real, its time span is not known: no
    // rate comes of it (a rate from the run's start would show a dip to ≈ 0 at every restart).
    Some((cur.value, 0.0))
}
