//! Compressed chunks: the samples of one series over a run of snapshots, as a bit stream in the
//! manner of Gorilla (Pelkonen et al., VLDB 2015) and Prometheus' TSDB.
//!
//! Timestamps are not in the chunk: all series of a snapshot share its time, kept once in
//! `snapshots`. A chunk holds the snapshot ids its samples belong to (1 bit for "the next
//! snapshot", which is nearly always the case) and the values, in one of two encodings chosen by
//! the first value:
//! - **integers** (counters of bytes and packets, most gauges): delta-of-delta, zigzag, in
//!   buckets of 1, 9, 17, 27, 44, 70 bits; a counter growing at a steady rate or a constant
//!   costs 1 bit a sample. A value that is not an integer of at most 2^53 (a fraction, NaN,
//!   ±Inf, -0.0) is written whole behind an escape code and leaves the deltas as they were.
//! - **floats** (ratios, loads, CPU seconds): the XOR of consecutive values' bits, with the
//!   meaningful bits' window reused while it fits; a repeated value costs 1 bit.
//!
//! Both are exact: what is decoded is bit for bit what was pushed (the property test below).
//! Decoding checks every read against the data's length: a damaged blob is an error, never a
//! panic or a read out of bounds.

/// The encodings, the chunk's first byte.
const INTEGERS: u8 = 1;
const FLOATS: u8 = 2;

/// Largest integer a double holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk ends after {0} of its samples")]
    Truncated(usize),
    #[error("unknown chunk encoding {0}")]
    Encoding(u8),
    #[error("chunk is empty")]
    Empty,
    #[error("chunk's snapshot ids overflow")]
    Overflow,
}

/// Bits appended most significant first.
#[derive(Clone, Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 = it is full, or there is none).
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if b {
            *self.bytes.last_mut().expect("pushed above") |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// The low `n` bits of `v` (n ≤ 64), a byte's worth at a time.
    fn bits(&mut self, v: u64, n: u8) {
        let mut left = n;
        while left > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let room = 8 - self.used;
            let take = room.min(left);
            // The next `take` bits of `v`, placed after the `used` bits of the last byte.
            let chunk = (v >> (left - take)) & ((1u64 << take) - 1);
            #[allow(clippy::cast_possible_truncation)]
            let chunk = (chunk as u8) << (room - take);
            *self.bytes.last_mut().expect("pushed above") |= chunk;
            self.used = (self.used + take) % 8;
            left -= take;
        }
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = self.bytes.get(self.pos / 8)?;
        let b = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(b)
    }

    /// The next `n` bits (n ≤ 64), a byte's worth at a time.
    fn bits(&mut self, n: u8) -> Option<u64> {
        if self.pos + usize::from(n) > self.bytes.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = self.bytes[self.pos / 8];
            #[allow(clippy::cast_possible_truncation)]
            let offset = (self.pos % 8) as u8;
            let room = 8 - offset;
            let take = room.min(left);
            let chunk = (byte >> (room - take)) & (((1u16 << take) - 1) as u8);
            v = v << take | u64::from(chunk);
            self.pos += usize::from(take);
            left -= take;
        }
        Some(v)
    }

    /// The number of leading 1 bits, up to `max`, and the 0 that ends them (if under `max`).
    fn ones(&mut self, max: u8) -> Option<u8> {
        let mut n = 0;
        while n < max && self.bit()? {
            n += 1;
        }
        Some(n)
    }
}

pub(super) const fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

pub(super) const fn unzigzag(z: u64) -> i64 {
    (z >> 1).cast_signed() ^ -((z & 1).cast_signed())
}

/// `v` as an exact integer, if it is one the integer encoding keeps bit for bit.
pub(super) fn integral(v: f64) -> Option<i64> {
    #[allow(clippy::cast_possible_truncation)]
    (v.fract() == 0.0 && v.abs() <= EXACT && !(v == 0.0 && v.is_sign_negative()))
        .then_some(v as i64)
}

/// Payload widths of the integer buckets; the prefix is as many 1s as the bucket's index, then
/// a 0 (none after the last). One more prefix of all 1s escapes a value that is no integer.
const INT_BUCKETS: [u8; 6] = [0, 7, 14, 24, 40, 64];
const ESCAPE: u8 = INT_BUCKETS.len() as u8;

/// A chunk being filled. Cheap to keep open: its bytes grow a bit or a few per sample.
#[derive(Clone, Debug)]
pub struct Encoder {
    w: BitWriter,
    first: i64,
    last: i64,
    count: usize,
    // Integers: the previous integer and delta. Floats: the previous bits and window.
    prev: i64,
    delta: i64,
    prev_bits: u64,
    window: Option<(u8, u8)>,
}

impl Encoder {
    /// A chunk starting with `value` at snapshot `id`.
    pub fn new(id: i64, value: f64) -> Self {
        let mut w = BitWriter::default();
        let int = integral(value);
        w.bits(u64::from(if int.is_some() { INTEGERS } else { FLOATS }), 8);
        w.bits(value.to_bits(), 64);
        Self {
            w,
            first: id,
            last: id,
            count: 1,
            prev: int.unwrap_or(0),
            delta: 0,
            prev_bits: value.to_bits(),
            window: None,
        }
    }

    /// Appends `value` at snapshot `id` (after the last one).
    pub fn push(&mut self, id: i64, value: f64) {
        debug_assert!(id > self.last, "snapshot ids increase");
        match (id - self.last).cast_unsigned() {
            1 => self.w.bit(false),
            d @ 2..=129 => {
                self.w.bits(0b10, 2);
                self.w.bits(d - 2, 7);
            }
            d => {
                self.w.bits(0b11, 2);
                self.w.bits(d, 64);
            }
        }
        self.last = id;
        self.count += 1;
        if self.w.bytes[0] == INTEGERS {
            self.push_integer(value);
        } else {
            self.push_float(value);
        }
    }

    fn push_integer(&mut self, value: f64) {
        let Some(v) = integral(value) else {
            self.w.bits((1 << ESCAPE) - 1, ESCAPE);
            self.w.bits(value.to_bits(), 64);
            return;
        };
        let delta = v - self.prev;
        let z = zigzag(delta - self.delta);
        let bucket = INT_BUCKETS
            .iter()
            .position(|&n| n == 64 || z < 1 << n)
            .expect("the last bucket takes any value");
        #[allow(clippy::cast_possible_truncation)]
        let ones = bucket as u8;
        self.w.bits((1 << ones) - 1, ones);
        self.w.bit(false);
        self.w.bits(z, INT_BUCKETS[bucket]);
        self.prev = v;
        self.delta = delta;
    }

    fn push_float(&mut self, value: f64) {
        let bits = value.to_bits();
        let x = bits ^ self.prev_bits;
        self.prev_bits = bits;
        if x == 0 {
            self.w.bit(false);
            return;
        }
        self.w.bit(true);
        #[allow(clippy::cast_possible_truncation)]
        let (lead, trail) = (x.leading_zeros() as u8, x.trailing_zeros() as u8);
        if let Some((l, t)) = self.window
            && lead >= l
            && trail >= t
        {
            self.w.bit(false);
            self.w.bits(x >> t, 64 - l - t);
            return;
        }
        // A new window: 6 bits of leading zeros, 6 bits of length - 1, the meaningful bits.
        let len = 64 - lead - trail;
        self.w.bit(true);
        self.w.bits(u64::from(lead), 6);
        self.w.bits(u64::from(len - 1), 6);
        self.w.bits(x >> trail, len);
        self.window = Some((lead, trail));
    }

    pub const fn first(&self) -> i64 {
        self.first
    }

    pub const fn last(&self) -> i64 {
        self.last
    }

    /// Samples in the chunk (never 0: a chunk starts with one).
    #[allow(clippy::len_without_is_empty)]
    pub const fn len(&self) -> usize {
        self.count
    }

    /// The chunk as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.w.bytes
    }
}

/// The samples of a chunk that starts at snapshot `first` and holds `count` samples: (snapshot
/// id, value), in order.
pub fn decode(first: i64, count: usize, data: &[u8]) -> Result<Vec<(i64, f64)>, ChunkError> {
    if count == 0 {
        return Err(ChunkError::Empty);
    }
    let mut r = BitReader {
        bytes: data,
        pos: 0,
    };
    let short = |n: usize| ChunkError::Truncated(n);
    #[allow(clippy::cast_possible_truncation)]
    let encoding = r.bits(8).ok_or(short(0))? as u8;
    if encoding != INTEGERS && encoding != FLOATS {
        return Err(ChunkError::Encoding(encoding));
    }
    let first_bits = r.bits(64).ok_or(short(0))?;
    // At most one sample per bit of data: a damaged count cannot make this allocate much.
    let mut out = Vec::with_capacity(count.min(data.len() * 8));
    out.push((first, f64::from_bits(first_bits)));
    let mut id = first;
    let mut prev = integral(f64::from_bits(first_bits)).unwrap_or(0);
    let mut delta = 0i64;
    let mut prev_bits = first_bits;
    let mut window: Option<(u8, u8)> = None;
    while out.len() < count {
        let n = out.len();
        let step = match r.ones(2).ok_or(short(n))? {
            0 => 1,
            1 => r.bits(7).ok_or(short(n))? + 2,
            _ => r.bits(64).ok_or(short(n))?,
        };
        id = id
            .checked_add(i64::try_from(step).map_err(|_| ChunkError::Overflow)?)
            .ok_or(ChunkError::Overflow)?;
        let value = if encoding == INTEGERS {
            let ones = r.ones(ESCAPE).ok_or(short(n))?;
            if ones == ESCAPE {
                f64::from_bits(r.bits(64).ok_or(short(n))?)
            } else {
                let z = r.bits(INT_BUCKETS[usize::from(ones)]).ok_or(short(n))?;
                delta = delta.wrapping_add(unzigzag(z));
                prev = prev.wrapping_add(delta);
                #[allow(clippy::cast_precision_loss)]
                let v = prev as f64;
                v
            }
        } else {
            if r.bit().ok_or(short(n))? {
                let reuse = !r.bit().ok_or(short(n))?;
                let (lead, trail) = if let Some(w) = window.filter(|_| reuse) {
                    w
                } else {
                    #[allow(clippy::cast_possible_truncation)]
                    let lead = r.bits(6).ok_or(short(n))? as u8;
                    #[allow(clippy::cast_possible_truncation)]
                    let len = r.bits(6).ok_or(short(n))? as u8 + 1;
                    let trail = 64u8.checked_sub(lead + len).ok_or(short(n))?;
                    window = Some((lead, trail));
                    (lead, trail)
                };
                let x = r.bits(64 - lead - trail).ok_or(short(n))? << trail;
                prev_bits ^= x;
            }
            f64::from_bits(prev_bits)
        };
        out.push((id, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(first: i64, samples: &[(i64, f64)]) -> Vec<(i64, f64)> {
        let mut e = Encoder::new(first, samples[0].1);
        for &(id, v) in &samples[1..] {
            e.push(id, v);
        }
        decode(e.first(), e.len(), e.bytes()).unwrap()
    }

    fn bits(s: &[(i64, f64)]) -> Vec<(i64, u64)> {
        s.iter().map(|(i, v)| (*i, v.to_bits())).collect()
    }

    /// Values as history sees them: counters (up to 2^53, with resets), gauges with negatives
    /// and fractions, NaN, ±Inf, -0.0, long constant runs.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (0u64..=1 << 53).prop_map(|v| v as f64),
            2 => any::<i32>().prop_map(f64::from),
            2 => any::<f64>(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => Just(-0.0),
            1 => Just(0.0),
            1 => (-1e6f64..1e6).prop_map(|v| (v * 1000.0).round() / 1000.0),
        ]
    }

    /// A series: runs of constants, steady counters with resets, and random values.
    fn series() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                (value(), 1usize..200).prop_map(|(v, n)| vec![v; n]),
                (0u64..1 << 40, 0u64..100_000, 1usize..100).prop_map(|(start, rate, n)| {
                    (0..n as u64).map(|i| (start + i * rate) as f64).collect()
                }),
                prop::collection::vec(value(), 1..50),
            ],
            1..8,
        )
        .prop_map(|runs| runs.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn samples_come_back_bit_for_bit(values in series(), gaps in prop::collection::vec(prop_oneof![8 => Just(1i64), 1 => 2i64..200, 1 => 1_000i64..1 << 40], 1..2000), first in 1i64..1 << 40) {
            let mut id = first;
            let samples: Vec<(i64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if i > 0 {
                        id += gaps[i % gaps.len()];
                    }
                    (id, *v)
                })
                .collect();
            let back = round_trip(first, &samples);
            prop_assert_eq!(bits(&back), bits(&samples));
        }

        #[test]
        fn damaged_chunks_are_errors_not_panics(data in prop::collection::vec(any::<u8>(), 0..200), count in 0usize..5000) {
            let _ = decode(1, count, &data);
        }
    }

    #[test]
    fn steady_counters_and_constants_cost_a_bit_or_two_a_sample() {
        let counter: Vec<(i64, f64)> = (0..1000).map(|i| (i + 1, (i * 4096) as f64)).collect();
        let mut e = Encoder::new(1, counter[0].1);
        counter[1..].iter().for_each(|&(i, v)| e.push(i, v));
        // 1 bit for the snapshot, 1 for a delta-of-delta of 0 (after the first delta).
        assert!(
            e.bytes().len() <= 9 + 1000 * 2 / 8 + 4,
            "{}",
            e.bytes().len()
        );
        let ratio: Vec<(i64, f64)> = (0..1000).map(|i| (i + 1, 0.25)).collect();
        assert_eq!(bits(&round_trip(1, &ratio)), bits(&ratio));
        let mut e = Encoder::new(1, 0.25);
        (2..=1000).for_each(|i| e.push(i, 0.25));
        assert!(
            e.bytes().len() <= 9 + 1000 * 2 / 8 + 1,
            "{}",
            e.bytes().len()
        );
    }

    #[test]
    fn a_truncated_chunk_says_where_it_ends() {
        let mut e = Encoder::new(7, 1.0);
        e.push(8, 1_000_000.0);
        e.push(9, 0.5);
        let data = e.bytes();
        assert_eq!(
            decode(7, 3, &data[..data.len() - 2]),
            Err(ChunkError::Truncated(2))
        );
        assert_eq!(decode(7, 3, &[1, 0]), Err(ChunkError::Truncated(0)));
        assert_eq!(
            decode(7, 3, &[3, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ChunkError::Encoding(3))
        );
        assert_eq!(decode(7, 0, data), Err(ChunkError::Empty));
    }
}
