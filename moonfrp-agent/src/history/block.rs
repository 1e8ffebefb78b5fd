//! Blocks: one row holds the data of the series with neighbouring ids (block `g` holds series
//! `g * per ..= g * per + per - 1`), so that SQLite's per-row cost (key, record header, cell pointer) is paid once per
//! group instead of once per series, and a write of every series is a fraction of the rows.
//! Used for the head (`head_blocks`, 64 series a row), compressed chunks (`chunk_blocks`, 16)
//! and rollup buckets (`rollup_blocks`, 16): rows of a few hundred bytes, so that pages fill
//! (two rows of 1.6 kB would leave a fifth of a 4 kB page empty) and rows stay inside their
//! page.
//!
//! Layout: a varint mask of the members present, then for each, in id order, its length (a
//! LEB128 varint) and its bytes.
//!
//! Reading checks every length against the data: a damaged block is an error, never a panic.

/// How many series a block of a table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout(i64);

/// The head's blocks: a snapshot's values, a few bytes each (64 of them take about 400 bytes).
pub const HEAD: Layout = Layout(64);
/// The chunks' blocks (about 35 bytes a chunk: 16 keep the rows small enough that pages fill).
pub const CHUNKS: Layout = Layout(16);
/// The rollup buckets' blocks (about 40 bytes a bucket, in a table with a two-column key).
pub const ROLLUPS: Layout = Layout(16);

impl Layout {
    /// Series per block.
    pub const fn per(self) -> i64 {
        self.0
    }

    /// The block holding series `id`.
    pub const fn group(self, id: i64) -> i64 {
        id / self.0
    }

    /// The first series id of block `grp`.
    pub const fn first_id(self, grp: i64) -> i64 {
        grp * self.0
    }

    /// An empty block.
    pub fn builder(self) -> Builder {
        Builder {
            per: self.0,
            mask: 0,
            body: Vec::new(),
        }
    }

    /// The members of block `grp` stored as `data`: (series id, bytes), in id order; an error
    /// ends the iteration.
    pub fn members(self, grp: i64, data: &[u8]) -> Members<'_> {
        let mut pos = 0;
        let mask = get_varint(data, &mut pos);
        Members {
            first: self.first_id(grp),
            mask: mask.unwrap_or(0),
            next: 0,
            rest: data.get(pos..).unwrap_or_default(),
            failed: mask.is_none(),
        }
    }

    /// Series `id`'s bytes in block `data` (of its group), if it is there.
    pub fn find(self, id: i64, data: &[u8]) -> Result<Option<&[u8]>, BlockError> {
        for m in self.members(self.group(id), data) {
            let (member, bytes) = m?;
            if member == id {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }
}

#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block ends inside its member {0}")]
    Truncated(usize),
    #[error("block has {0} bytes after its last member")]
    Trailing(usize),
}

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        #[allow(clippy::cast_possible_truncation)]
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(v as u8);
}

/// Reads a LEB128 varint at `*pos`, moving past it; `None` if the data ends first or it is
/// longer than 10 bytes.
pub fn get_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A block being built; members in increasing id order.
#[derive(Debug)]
pub struct Builder {
    per: i64,
    mask: u64,
    body: Vec<u8>,
}

impl Builder {
    /// Adds series `id`'s bytes; ids must increase and belong to one group.
    pub fn push(&mut self, id: i64, bytes: &[u8]) {
        let bit = 1u64 << (id % self.per);
        debug_assert!(
            self.mask < bit,
            "members come in increasing order, once each"
        );
        self.mask |= bit;
        put_varint(&mut self.body, bytes.len() as u64);
        self.body.extend_from_slice(bytes);
    }

    pub const fn is_empty(&self) -> bool {
        self.mask == 0
    }

    /// The block as stored.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + self.body.len());
        put_varint(&mut out, self.mask);
        out.extend_from_slice(&self.body);
        out
    }
}

/// The iterator [`Layout::members`] gives.
pub struct Members<'a> {
    first: i64,
    mask: u64,
    /// Next member to look at (64: the end, 65: done).
    next: u8,
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(i64, &'a [u8]), BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            self.failed = false;
            self.next = 65;
            return Some(Err(BlockError::Truncated(0)));
        }
        while self.next < 64 {
            let m = self.next;
            if self.mask >> m == 0 {
                self.next = 64;
                break;
            }
            self.next += 1;
            if self.mask & (1 << m) == 0 {
                continue;
            }
            let mut pos = 0;
            let Some((bytes, end)) = get_varint(self.rest, &mut pos)
                .and_then(|l| usize::try_from(l).ok())
                .and_then(|len| pos.checked_add(len))
                .and_then(|end| self.rest.get(pos..end).map(|b| (b, end)))
            else {
                self.next = 65;
                return Some(Err(BlockError::Truncated(usize::from(m))));
            };
            self.rest = &self.rest[end..];
            return Some(Ok((self.first + i64::from(m), bytes)));
        }
        if self.next == 64 {
            self.next = 65;
            if !self.rest.is_empty() {
                return Some(Err(BlockError::Trailing(self.rest.len())));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn members_come_back(grp in 0i64..1 << 18, present in any::<u64>(), wide in any::<bool>(), len in 0usize..100) {
            let layout = if wide { HEAD } else { ROLLUPS };
            let mut b = layout.builder();
            let mut want = Vec::new();
            for m in 0..layout.per() {
                if present & (1 << m) != 0 {
                    let id = layout.first_id(grp) + m;
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let bytes: Vec<u8> = (0..len + m as usize).map(|i| (i as u8) ^ (m as u8)).collect();
                    b.push(id, &bytes);
                    want.push((id, bytes));
                }
            }
            let data = b.finish();
            let got: Vec<(i64, Vec<u8>)> = layout.members(grp, &data).map(|m| m.map(|(i, s)| (i, s.to_vec()))).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&got, &want);
            for (id, bytes) in &want {
                prop_assert_eq!(layout.find(*id, &data).unwrap(), Some(bytes.as_slice()));
            }
        }

        #[test]
        fn damaged_blocks_are_errors_not_panics(data in prop::collection::vec(any::<u8>(), 0..100), grp in 0i64..100) {
            let _ = HEAD.members(grp, &data).count();
            let _ = ROLLUPS.members(grp, &data).count();
        }

        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut pos = 0;
            prop_assert_eq!(get_varint(&out, &mut pos), Some(v));
            prop_assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn a_cut_block_names_the_member() {
        let mut b = ROLLUPS.builder();
        b.push(32, b"abc");
        b.push(35, b"defg");
        let data = b.finish();
        let all = |d: &[u8]| {
            ROLLUPS
                .members(2, d)
                .map(|m| m.map(|(id, _)| id))
                .collect::<Result<Vec<_>, _>>()
        };
        assert_eq!(all(&data), Ok(vec![32, 35]));
        assert_eq!(all(&data[..data.len() - 1]), Err(BlockError::Truncated(3)));
        let mut long = data.clone();
        long.push(0);
        assert_eq!(all(&long), Err(BlockError::Trailing(1)));
        assert_eq!(all(&[0x80]), Err(BlockError::Truncated(0)));
    }
}
