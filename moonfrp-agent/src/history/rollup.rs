//! The incremental rollup accumulators (counter arithmetic: [`crate::counter`]).
pub use crate::counter::{Obs, counter_step};

/// A rollup bucket being filled: for gauges the statistics of the values, for counters those of
/// the per-second rates between consecutive samples, plus the increase and the seconds covered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bucket {
    /// Values (gauges) or rates (counters) seen.
    pub n: u32,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Last raw value.
    pub last: f64,
    /// Counters: reset-aware increase, and the seconds it covers.
    pub increase: f64,
    pub seconds: f64,
    /// Raw samples seen (a counter's first sample has no rate yet).
    pub samples: u32,
}

impl Bucket {
    fn observe(&mut self, x: f64) {
        if self.n == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n += 1;
        self.sum += x;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }

    /// Folds a finished finer bucket into this one.
    pub fn merge(&mut self, b: &Self) {
        if b.n > 0 {
            if self.n == 0 {
                self.min = b.min;
                self.max = b.max;
            } else {
                self.min = self.min.min(b.min);
                self.max = self.max.max(b.max);
            }
            self.n += b.n;
            self.sum += b.sum;
        }
        if b.samples > 0 {
            self.last = b.last;
        }
        self.samples += b.samples;
        self.increase += b.increase;
        self.seconds += b.seconds;
    }
}

/// Adds one raw sample to a bucket; `prev` is the series' previous sample (in any bucket).
pub fn feed(bucket: &mut Bucket, counter: bool, prev: Option<&Obs>, cur: &Obs) {
    bucket.samples += 1;
    bucket.last = cur.value;
    if !counter {
        bucket.observe(cur.value);
        return;
    }
    if let Some((inc, secs)) = prev.and_then(|p| counter_step(p, cur)) {
        bucket.increase += inc;
        bucket.seconds += secs;
        if secs > 0.0 {
            bucket.observe(inc / secs);
        }
    }
}

/// Start of the bucket of width `step_ms` holding `ts` (aligned to the Unix epoch).
pub const fn bucket_start(ts: i64, step_ms: i64) -> i64 {
    ts.div_euclid(step_ms) * step_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn obs(ts: i64, value: f64, run: i64, run_start: i64) -> Obs {
        Obs {
            ts,
            value,
            run,
            run_start,
        }
    }

    #[test]
    fn counter_steps_handle_resets_and_restarts() {
        // Plain increase.
        assert_eq!(
            counter_step(&obs(0, 10.0, 1, 0), &obs(10_000, 30.0, 1, 0)),
            Some((20.0, 10.0))
        );
        // A reset in the same run: the new value is the increase, over the whole step.
        assert_eq!(
            counter_step(&obs(0, 100.0, 1, 0), &obs(10_000, 5.0, 1, 0)),
            Some((5.0, 10.0))
        );
        // The agent restarted at 50 s: counting began at some moment after that. The
        // increase counts, but no rate comes of it.
        assert_eq!(
            counter_step(&obs(0, 100.0, 1, 0), &obs(60_000, 20.0, 2, 50_000)),
            Some((20.0, 0.0))
        );
        // A host counter that kept growing across the restart: the plain difference.
        assert_eq!(
            counter_step(&obs(0, 100.0, 1, 0), &obs(60_000, 160.0, 2, 50_000)),
            Some((60.0, 60.0))
        );
        // The clock went backwards.
        assert_eq!(
            counter_step(&obs(10_000, 1.0, 1, 0), &obs(5_000, 2.0, 1, 0)),
            None
        );
    }

    #[test]
    fn merged_buckets_equal_one_bucket_fed_everything() {
        let series: Vec<Obs> = [0.0, 5.0, 9.0, 2.0, 4.0, 40.0]
            .iter()
            .enumerate()
            .map(|(i, v)| obs(i64::try_from(i).unwrap() * 60_000, *v, 1, 0))
            .collect();
        for counter in [false, true] {
            let mut whole = Bucket::default();
            let mut parts = [Bucket::default(), Bucket::default()];
            for (i, o) in series.iter().enumerate() {
                let prev = i.checked_sub(1).map(|p| &series[p]);
                feed(&mut whole, counter, prev, o);
                feed(&mut parts[i / 3], counter, prev, o);
            }
            let mut merged = Bucket::default();
            merged.merge(&parts[0]);
            merged.merge(&parts[1]);
            assert_eq!(merged, whole, "counter: {counter}");
        }
    }
}
