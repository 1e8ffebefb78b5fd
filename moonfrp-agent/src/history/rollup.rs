//! The incremental rollup accumulators (counter arithmetic: [`crate::counter`]).
use super::{
    block::{get_varint, put_varint},
    chunk::{integral, unzigzag, zigzag},
};
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

/// Value encodings in a stored bucket, two bits each.
const ZERO: u16 = 0;
const INT: u16 = 1;
const F32: u16 = 2;
const F64: u16 = 3;

/// A stored bucket is damaged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("rollup bucket ends early")]
pub struct Truncated;

impl Bucket {
    /// The bucket as stored in a block (`history::block`), exact bit for bit: a flags byte
    /// (bit 0: it has points, bit 1: counter), `samples` and `points` as varints, two bits per
    /// value saying how it is written (+0, an integer as a zigzag varint, an exact `f32`, an
    /// `f64`), then the values: min, max and sum when it has points, last, and for counters the
    /// increase and the seconds. A busy counter's hour takes about 40 bytes, an idle one 10.
    pub fn encode(&self, counter: bool, out: &mut Vec<u8>) {
        let points = self.n > 0;
        out.push(u8::from(points) | u8::from(counter) << 1);
        put_varint(out, u64::from(self.samples));
        if points {
            put_varint(out, u64::from(self.n));
        }
        let mut values = [0.0; 6];
        let mut k = 0;
        let mut add = |v: f64| {
            values[k] = v;
            k += 1;
        };
        if points {
            add(self.min);
            add(self.max);
            add(self.sum);
        }
        add(self.last);
        if counter {
            add(self.increase);
            add(self.seconds);
        }
        let tags_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let mut tags = 0u16;
        for (i, v) in values[..k].iter().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            let tag = if v.to_bits() == 0 {
                ZERO
            } else if let Some(int) = integral(*v) {
                put_varint(out, zigzag(int));
                INT
            } else if f64::from(*v as f32).to_bits() == v.to_bits() {
                out.extend_from_slice(&(*v as f32).to_le_bytes());
                F32
            } else {
                out.extend_from_slice(&v.to_le_bytes());
                F64
            };
            tags |= tag << (2 * i);
        }
        out[tags_at..tags_at + 2].copy_from_slice(&tags.to_le_bytes());
    }

    /// A bucket written by [`Bucket::encode`], and whether it is a counter's.
    pub fn decode(data: &[u8]) -> Result<(Self, bool), Truncated> {
        let flags = *data.first().ok_or(Truncated)?;
        let mut pos = 1;
        let (points, counter) = (flags & 1 != 0, flags & 2 != 0);
        let mut count = || {
            get_varint(data, &mut pos)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(Truncated)
        };
        let mut bucket = Self {
            samples: count()?,
            ..Self::default()
        };
        if points {
            bucket.n = count()?;
        }
        let tags = data
            .get(pos..pos + 2)
            .and_then(|t| <[u8; 2]>::try_from(t).ok())
            .map(u16::from_le_bytes)
            .ok_or(Truncated)?;
        pos += 2;
        let mut values = ValueReader {
            data,
            pos,
            tags,
            index: 0,
        };
        if points {
            bucket.min = values.next()?;
            bucket.max = values.next()?;
            bucket.sum = values.next()?;
        }
        bucket.last = values.next()?;
        if counter {
            bucket.increase = values.next()?;
            bucket.seconds = values.next()?;
        }
        Ok((bucket, counter))
    }
}

/// The values of a stored bucket, in order.
struct ValueReader<'a> {
    data: &'a [u8],
    pos: usize,
    tags: u16,
    index: u16,
}

impl ValueReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let bytes = self
            .data
            .get(self.pos..self.pos + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(Truncated)?;
        self.pos += N;
        Ok(bytes)
    }

    fn next(&mut self) -> Result<f64, Truncated> {
        let tag = self.tags >> (2 * self.index) & 3;
        self.index += 1;
        Ok(match tag {
            ZERO => 0.0,
            INT => {
                let z = get_varint(self.data, &mut self.pos).ok_or(Truncated)?;
                #[allow(clippy::cast_precision_loss)]
                let v = unzigzag(z) as f64;
                v
            }
            F32 => f64::from(f32::from_le_bytes(self.take()?)),
            _ => f64::from_le_bytes(self.take()?),
        })
    }
}

/// Adds one raw sample to a bucket; `prev` is the series' previous sample (in any bucket).
pub fn feed(bucket: &mut Bucket, counter: bool, prev: Option<&Obs>, cur: &Obs) {
    feed_all(std::slice::from_mut(bucket), counter, prev, cur);
}

/// Adds one raw sample to a bucket of each level (the counter's step computed once).
pub fn feed_all(buckets: &mut [Bucket], counter: bool, prev: Option<&Obs>, cur: &Obs) {
    let step = if counter {
        prev.and_then(|p| counter_step(p, cur))
    } else {
        None
    };
    for bucket in buckets {
        bucket.samples += 1;
        bucket.last = cur.value;
        if !counter {
            bucket.observe(cur.value);
        } else if let Some((inc, secs)) = step {
            bucket.increase += inc;
            bucket.seconds += secs;
            if secs > 0.0 {
                bucket.observe(inc / secs);
            }
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

    fn value() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            (0i64..1 << 53).prop_map(|v| v as f64),
            (-1_000_000i64..0).prop_map(|v| v as f64),
            any::<f32>().prop_map(f64::from),
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
    }

    proptest::proptest! {
        #[test]
        fn stored_buckets_come_back_bit_for_bit(
            n in 0u32..5000, samples in 0u32..5000, counter in proptest::bool::ANY,
            v in proptest::collection::vec(value(), 6),
        ) {
            let b = Bucket { n, min: v[0], max: v[1], sum: v[2], last: v[3], increase: v[4], seconds: v[5], samples };
            let mut out = Vec::new();
            b.encode(counter, &mut out);
            let (back, c) = Bucket::decode(&out).unwrap();
            proptest::prop_assert_eq!(c, counter);
            let bits = |b: &Bucket| [b.n.into(), b.samples.into(), b.min.to_bits(), b.max.to_bits(), b.sum.to_bits(), b.last.to_bits(), b.increase.to_bits(), b.seconds.to_bits()];
            let mut want = b;
            if n == 0 { (want.min, want.max, want.sum) = (0.0, 0.0, 0.0); }
            if !counter { (want.increase, want.seconds) = (0.0, 0.0); }
            proptest::prop_assert_eq!(bits(&back), bits(&want));
            for cut in 0..out.len() {
                proptest::prop_assert!(Bucket::decode(&out[..cut]).is_err());
            }
        }
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
