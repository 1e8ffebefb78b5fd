//! What the writer remembers of each series during a run: its previous sample and its rollup
//! buckets in progress ([`States`]), and the last write's series in point order ([`Order`]).
//!
//! A snapshot's points nearly always come in the last one's order, so a write walks them
//! against that order ([`Walk`]) and finds each series' state by position: no key is hashed
//! and the states are touched in sequence (kept in one dense vector, not behind a hash map
//! whose entries a write would visit in random order). Only a point that moved or is new is
//! looked up, in the last order's hash index and then in the database.
use std::hash::BuildHasher as _;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::rollup::{self, Bucket, Obs};
use crate::series::Point;

/// A series' state: which series, how it is counted, its previous sample. 24 bytes: there are
/// tens of thousands of them.
#[derive(Clone, Copy, Debug)]
struct Acc {
    prev_ts: i64,
    prev_value: f64,
    /// Series ids have 24 bits.
    id: u32,
    /// The previous sample's run, an index into [`States::runs`]; [`NO_PREV`] if there is none.
    prev_run: u16,
    counter: bool,
}

const NO_PREV: u16 = u16::MAX;

/// Every tracked series' state in dense slots, with a bucket per rollup level each.
#[derive(Debug)]
pub struct States {
    accs: Vec<Acc>,
    /// `levels` buckets per slot, in slot order.
    buckets: Vec<Bucket>,
    levels: usize,
    /// Every slot in series id order: how a series id finds its slot (points the order does
    /// not place, the rebuild), and the order head and rollup blocks are written in.
    by_id: Vec<u32>,
    /// The runs (id, start) of the previous samples: this one, and at most a few before it.
    runs: Vec<(i64, i64)>,
}

impl States {
    pub const fn new(levels: usize) -> Self {
        Self {
            accs: Vec::new(),
            buckets: Vec::new(),
            levels,
            by_id: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub const fn len(&self) -> usize {
        self.accs.len()
    }

    /// Series `id`'s slot, a new one (no sample yet, empty buckets) if it has none.
    pub fn slot(&mut self, id: i64, counter: bool) -> u32 {
        let id = u32::try_from(id).expect("series ids have 24 bits");
        let accs = &self.accs;
        match self
            .by_id
            .binary_search_by_key(&id, |&s| accs[s as usize].id)
        {
            Ok(pos) => self.by_id[pos],
            Err(pos) => {
                let slot = u32::try_from(self.accs.len()).expect("series ids have 24 bits");
                self.accs.push(Acc {
                    prev_ts: 0,
                    prev_value: 0.0,
                    id,
                    prev_run: NO_PREV,
                    counter,
                });
                self.buckets
                    .extend(std::iter::repeat_n(Bucket::default(), self.levels));
                // Ids come in increasing order but for series of earlier runs: nearly always
                // at the end.
                self.by_id.insert(pos, slot);
                slot
            }
        }
    }

    pub fn id(&self, slot: u32) -> i64 {
        i64::from(self.accs[slot as usize].id)
    }

    /// A slot's id, whether it is a counter, and its buckets, finest level first.
    pub fn get(&self, slot: u32) -> (i64, bool, &[Bucket]) {
        let s = slot as usize;
        let acc = &self.accs[s];
        (
            i64::from(acc.id),
            acc.counter,
            &self.buckets[s * self.levels..(s + 1) * self.levels],
        )
    }

    /// A slot's buckets, to change.
    pub fn buckets_mut(&mut self, slot: u32) -> &mut [Bucket] {
        let s = slot as usize;
        &mut self.buckets[s * self.levels..(s + 1) * self.levels]
    }

    /// The previous sample of a slot.
    pub fn prev(&self, slot: u32) -> Option<Obs> {
        let acc = &self.accs[slot as usize];
        let &(run, run_start) = self.runs.get(usize::from(acc.prev_run))?;
        Some(Obs {
            ts: acc.prev_ts,
            value: acc.prev_value,
            run,
            run_start,
        })
    }

    /// Takes sample `cur` as the slot's previous one, after adding it to its buckets if `fill`.
    pub fn feed(&mut self, slot: u32, cur: &Obs, fill: bool) {
        let run = self.run_index(cur.run, cur.run_start);
        let s = slot as usize;
        if fill {
            let prev = self.prev(slot);
            let counter = self.accs[s].counter;
            rollup::feed_all(
                &mut self.buckets[s * self.levels..(s + 1) * self.levels],
                counter,
                prev.as_ref(),
                cur,
            );
        }
        let acc = &mut self.accs[s];
        acc.prev_ts = cur.ts;
        acc.prev_value = cur.value;
        acc.prev_run = run;
    }

    /// The index of a run in `runs` (added if new). Past `NO_PREV` runs (never: only the runs of
    /// the last few minutes' samples are met) a sample is kept as none.
    fn run_index(&mut self, run: i64, run_start: i64) -> u16 {
        if let Some(i) = self.runs.iter().position(|&r| r == (run, run_start)) {
            return u16::try_from(i).unwrap_or(NO_PREV);
        }
        self.runs.push((run, run_start));
        u16::try_from(self.runs.len() - 1).unwrap_or(NO_PREV)
    }

    /// Forgets the slots from `len` on (made by a write that failed: their ids may be given
    /// again).
    pub fn truncate(&mut self, len: usize) {
        self.accs.truncate(len);
        self.buckets.truncate(len * self.levels);
        self.by_id.retain(|&s| (s as usize) < len);
    }

    /// Empties every series' bucket of level `level`.
    pub fn clear_level(&mut self, level: usize) {
        for b in self.buckets.iter_mut().skip(level).step_by(self.levels) {
            *b = Bucket::default();
        }
    }

    /// Forgets the previous sample of every series last seen before `horizon` (a series back
    /// after that long starts anew).
    pub fn forget_before(&mut self, horizon: i64) {
        for acc in &mut self.accs {
            if acc.prev_run != NO_PREV && acc.prev_ts < horizon {
                acc.prev_run = NO_PREV;
            }
        }
    }

    /// Drops the series with no previous sample and no bucket in progress. Returns the new
    /// slot of each old one (`None`: dropped) if any was dropped.
    pub fn compact(&mut self) -> Option<Vec<Option<u32>>> {
        let levels = self.levels;
        let idle = |i: usize, acc: &Acc| {
            acc.prev_run == NO_PREV
                && self.buckets[i * levels..(i + 1) * levels]
                    .iter()
                    .all(|b| b.samples == 0)
        };
        if !self.accs.iter().enumerate().any(|(i, acc)| idle(i, acc)) {
            return None;
        }
        let mut remap = Vec::with_capacity(self.accs.len());
        let (mut accs, mut buckets) = (Vec::new(), Vec::new());
        for (i, acc) in self.accs.iter().enumerate() {
            if idle(i, acc) {
                remap.push(None);
                continue;
            }
            let slot = u32::try_from(accs.len()).expect("fewer slots than before");
            buckets.extend_from_slice(&self.buckets[i * levels..(i + 1) * levels]);
            accs.push(*acc);
            remap.push(Some(slot));
        }
        self.accs = accs;
        self.buckets = buckets;
        self.by_id.retain_mut(|s| match remap[*s as usize] {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        });
        Some(remap)
    }

    /// Every slot in series id order (head and rollup blocks are written so).
    pub fn by_id(&self) -> &[u32] {
        &self.by_id
    }
}

/// Series keys in point order, in one buffer, with a hash index over them.
pub struct Order {
    keys: String,
    /// Each position's slot and where its key ends in `keys` (it starts where the one before
    /// ends).
    ends: Vec<(u32, u32)>,
    /// Positions by key hash (the first of a key that comes twice).
    index: HashTable<u32>,
    /// A per-process random seed: the keys hold names strangers choose.
    hasher: RandomState,
}

impl Order {
    pub fn new(hasher: RandomState) -> Self {
        Self {
            keys: String::new(),
            ends: Vec::new(),
            index: HashTable::new(),
            hasher,
        }
    }

    /// An empty order hashing as this one.
    pub fn empty_like(&self) -> Self {
        Self::new(self.hasher.clone())
    }

    pub const fn len(&self) -> usize {
        self.ends.len()
    }

    fn push(&mut self, slot: u32, key: &str) {
        self.keys.push_str(key);
        // A snapshot's series and their label sizes are bounded far below 4 GiB of keys.
        let end = u32::try_from(self.keys.len()).expect("keys take less than 4 GiB");
        self.ends.push((slot, end));
    }

    fn key(&self, pos: usize) -> &str {
        let start = pos.checked_sub(1).map_or(0, |p| self.ends[p].1 as usize);
        &self.keys[start..self.ends[pos].1 as usize]
    }

    /// The slot of the series with `key`, if this order has it.
    pub fn find(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&pos| self.key(pos as usize) == key)
            .map(|&pos| self.ends[pos as usize].0)
    }

    /// Builds the index, and gives back spare room (an order is kept until the points change).
    pub fn finish(&mut self) {
        self.keys.shrink_to_fit();
        self.ends.shrink_to_fit();
        let mut index = HashTable::with_capacity(self.ends.len());
        for pos in 0..self.ends.len() {
            let key = self.key(pos);
            let hash = self.hasher.hash_one(key);
            if index
                .find(hash, |&p: &u32| self.key(p as usize) == key)
                .is_none()
            {
                let p = u32::try_from(pos).expect("positions are slots");
                index.insert_unique(hash, p, |&p| self.hasher.hash_one(self.key(p as usize)));
            }
        }
        self.index = index;
    }

    /// Moves every position to its series' new slot after [`States::compact`] (the order's
    /// series were all just written, so none is dropped).
    pub fn remap(&mut self, remap: &[Option<u32>]) {
        for (slot, _) in &mut self.ends {
            *slot = remap[*slot as usize].expect("a series in the last write is kept");
        }
    }
}

/// Walks a write's points against the last write's [`Order`], position by position. While
/// every point is the series at its position nothing is copied and the last order stays; from
/// the first that differs, the next order is written out.
pub struct Walk<'a> {
    last: &'a Order,
    next: &'a mut Order,
    /// Position, and where its key starts in `last.keys`.
    pos: usize,
    start: usize,
    /// `next` not written: the points so far are `last`'s.
    same: bool,
}

impl<'a> Walk<'a> {
    pub const fn new(last: &'a Order, next: &'a mut Order) -> Self {
        Self {
            last,
            next,
            pos: 0,
            start: 0,
            same: true,
        }
    }

    /// The key at this position in the last write, and its slot.
    fn here(&self) -> Option<(u32, &'a str)> {
        let last: &'a Order = self.last;
        let &(slot, end) = last.ends.get(self.pos)?;
        Some((slot, &last.keys[self.start..end as usize]))
    }

    /// The slot if `p` is the last write's series at this position.
    pub fn same_as_last(&self, p: &Point<'_>) -> Option<u32> {
        self.here()
            .filter(|(_, k)| key_matches(k, p))
            .map(|(slot, _)| slot)
    }

    /// This position holds the last write's series; on to the next.
    pub fn keep(&mut self) {
        if !self.same
            && let Some((slot, key)) = self.here()
        {
            self.next.push(slot, key);
        }
        self.advance();
    }

    /// This position holds the series of `slot` with `key`, not the last write's; on to the
    /// next.
    pub fn put(&mut self, slot: u32, key: &str) {
        self.diverge();
        self.next.push(slot, key);
        self.advance();
    }

    /// True if the next order is `next` (written out), false if it is `last` unchanged.
    pub fn finish(mut self) -> bool {
        if self.pos != self.last.ends.len() {
            self.diverge();
        }
        !self.same
    }

    /// Starts `next` with the positions before this one, all the last write's.
    fn diverge(&mut self) {
        if self.same {
            self.same = false;
            self.next.keys.push_str(&self.last.keys[..self.start]);
            let n = self.pos.min(self.last.ends.len());
            self.next.ends.extend_from_slice(&self.last.ends[..n]);
        }
    }

    fn advance(&mut self) {
        if let Some(&(_, end)) = self.last.ends.get(self.pos) {
            self.start = end as usize;
        }
        self.pos += 1;
    }
}

/// The in-memory key of a series for this run: its sample name and labels.
pub fn series_key(key: &mut String, p: &Point<'_>) {
    key.clear();
    key.push_str(p.name);
    for (k, v) in p.labels.iter() {
        key.push('\0');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
}

/// True if `key` is [`series_key`] of `p`, without building it.
fn key_matches(key: &str, p: &Point<'_>) -> bool {
    let Some(mut rest) = key.strip_prefix(p.name) else {
        return false;
    };
    for (k, v) in p.labels.iter() {
        let Some(r) = rest
            .strip_prefix('\0')
            .and_then(|r| r.strip_prefix(*k))
            .and_then(|r| r.strip_prefix('='))
            .and_then(|r| r.strip_prefix(&**v))
        else {
            return false;
        };
        rest = r;
    }
    rest.is_empty()
}
