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

use super::{
    block::{get_varint, put_varint},
    rollup::{self, Bucket, Obs},
};
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

/// Every how many positions a key is stored whole (the others share a prefix with the key
/// before them): finding a key by hash rebuilds at most this many.
const RESTART: usize = 16;

/// Series keys in point order, front-coded in one buffer, with a hash index over them. A
/// snapshot's consecutive series mostly differ in one label value (a tunnel's name and port, a
/// direction): each key is stored as the length of the prefix it shares with the key before it
/// and the rest: 43 % of the bytes of the keys whole at 1,000 tunnels.
pub struct Order {
    /// Per position: a varint (bytes shared with the key before; 0 every [`RESTART`]th), then
    /// the rest of the key.
    bytes: Vec<u8>,
    /// Each position's slot and where its entry ends in `bytes` (it starts where the one before
    /// ends).
    ends: Vec<(u32, u32)>,
    /// The last key pushed (the next one is coded against it).
    tail: Vec<u8>,
    /// Positions by key hash (the first of a key that comes twice).
    index: HashTable<u32>,
    /// A per-process random seed: the keys hold names strangers choose.
    hasher: RandomState,
}

impl Order {
    pub fn new(hasher: RandomState) -> Self {
        Self {
            bytes: Vec::new(),
            ends: Vec::new(),
            tail: Vec::new(),
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

    fn push(&mut self, slot: u32, key: &[u8]) {
        let shared = if self.ends.len().is_multiple_of(RESTART) {
            0
        } else {
            self.tail
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        put_varint(&mut self.bytes, shared as u64);
        self.bytes.extend_from_slice(&key[shared..]);
        self.tail.truncate(shared);
        self.tail.extend_from_slice(&key[shared..]);
        // A snapshot's series and their label sizes are bounded far below 4 GiB of keys.
        let end = u32::try_from(self.bytes.len()).expect("keys take less than 4 GiB");
        self.ends.push((slot, end));
    }

    /// Turns `key`, the key at `pos - 1` (anything at a restart), into the key at `pos`.
    fn step(&self, pos: usize, key: &mut Vec<u8>) {
        let mut at = pos.checked_sub(1).map_or(0, |p| self.ends[p].1 as usize);
        let end = self.ends[pos].1 as usize;
        let shared = get_varint(&self.bytes[..end], &mut at).expect("an order entry is whole");
        key.truncate(usize::try_from(shared).unwrap_or(usize::MAX));
        key.extend_from_slice(&self.bytes[at..end]);
    }

    /// The key at `pos`, into `key`.
    fn key(&self, pos: usize, key: &mut Vec<u8>) {
        for p in pos - pos % RESTART..=pos {
            self.step(p, key);
        }
    }

    /// The slot of the series with `key`, if this order has it.
    pub fn find(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key.as_bytes());
        let mut buf = Vec::with_capacity(key.len());
        self.index
            .find(hash, |&pos| {
                self.key(pos as usize, &mut buf);
                buf == key.as_bytes()
            })
            .map(|&pos| self.ends[pos as usize].0)
    }

    /// Builds the index, and gives back spare room (an order is kept until the points change).
    pub fn finish(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.tail = Vec::new();
        let mut index = HashTable::with_capacity(self.ends.len());
        let (mut key, mut other) = (Vec::new(), Vec::new());
        for pos in 0..self.ends.len() {
            self.step(pos, &mut key);
            let hash = self.hasher.hash_one(&key[..]);
            let seen = index
                .find(hash, |&p: &u32| {
                    self.key(p as usize, &mut other);
                    other == key
                })
                .is_some();
            if !seen {
                let p = u32::try_from(pos).expect("positions are slots");
                // The table was made for every position: it never grows, so never rehashes.
                let order = &*self;
                index.insert_unique(hash, p, |&p| {
                    let mut buf = Vec::new();
                    order.key(p as usize, &mut buf);
                    order.hasher.hash_one(&buf[..])
                });
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
    pos: usize,
    /// The last order's key at `pos`, if it has one.
    key: Vec<u8>,
    /// `next` not written: the points so far are `last`'s.
    same: bool,
}

impl<'a> Walk<'a> {
    pub fn new(last: &'a Order, next: &'a mut Order) -> Self {
        let mut key = Vec::new();
        if last.len() > 0 {
            last.step(0, &mut key);
        }
        Self {
            last,
            next,
            pos: 0,
            key,
            same: true,
        }
    }

    /// The slot at this position in the last write, if it has one.
    fn here(&self) -> Option<u32> {
        self.last.ends.get(self.pos).map(|&(slot, _)| slot)
    }

    /// The slot if `p` is the last write's series at this position.
    pub fn same_as_last(&self, p: &Point<'_>) -> Option<u32> {
        self.here().filter(|_| key_matches(&self.key, p))
    }

    /// This position holds the last write's series; on to the next.
    pub fn keep(&mut self) {
        if !self.same
            && let Some(slot) = self.here()
        {
            self.next.push(slot, &self.key);
        }
        self.advance();
    }

    /// This position holds the series of `slot` with `key`, not the last write's; on to the
    /// next.
    pub fn put(&mut self, slot: u32, key: &str) {
        self.diverge();
        self.next.push(slot, key.as_bytes());
        self.advance();
    }

    /// True if the next order is `next` (written out), false if it is `last` unchanged.
    pub fn finish(mut self) -> bool {
        if self.pos != self.last.ends.len() {
            self.diverge();
        }
        !self.same
    }

    /// Starts `next` with the positions before this one, all the last write's (their coded
    /// entries copied as they are: positions, and so restarts, are the same).
    fn diverge(&mut self) {
        if self.same {
            self.same = false;
            let n = self.pos.min(self.last.ends.len());
            if let Some(p) = n.checked_sub(1) {
                let end = self.last.ends[p].1 as usize;
                self.next.bytes.extend_from_slice(&self.last.bytes[..end]);
                self.next.ends.extend_from_slice(&self.last.ends[..n]);
                self.last.key(p, &mut self.next.tail);
            }
        }
    }

    fn advance(&mut self) {
        self.pos += 1;
        if self.pos < self.last.len() {
            self.last.step(self.pos, &mut self.key);
        }
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
fn key_matches(key: &[u8], p: &Point<'_>) -> bool {
    let Some(mut rest) = key.strip_prefix(p.name.as_bytes()) else {
        return false;
    };
    for (k, v) in p.labels.iter() {
        let Some(r) = rest
            .strip_prefix(b"\0")
            .and_then(|r| r.strip_prefix(k.as_bytes()))
            .and_then(|r| r.strip_prefix(b"="))
            .and_then(|r| r.strip_prefix(v.as_bytes()))
        else {
            return false;
        };
        rest = r;
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{IntoLabels as _, Labels, Text};

    /// Tunnel-like series: consecutive keys share long prefixes, some differ in their first
    /// byte, and there are more than a few restarts.
    fn labels(n: usize) -> Vec<(&'static str, Labels)> {
        (0..n)
            .map(|i| {
                let name = if i % 7 == 3 {
                    "other_metric"
                } else {
                    "moonfrp_tunnel_bytes_total"
                };
                let l = [
                    (
                        "direction",
                        Text::from(if i % 2 == 0 { "in" } else { "out" }),
                    ),
                    ("name", Text::of(&format!("t{}", i / 2))),
                    ("port", Text::of(&(20000 + i / 2).to_string())),
                ]
                .into_labels();
                (name, l)
            })
            .collect()
    }

    fn point<'a>(name: &'a str, labels: &'a Labels) -> Point<'a> {
        Point {
            name,
            labels,
            counter: true,
            value: 0.0,
        }
    }

    /// Writes `series` against `last` as the store does (slot = position in `series`, new ones
    /// from 1000 on); the order to keep.
    fn walk(last: Order, series: &[(&'static str, Labels)]) -> (Order, Vec<u32>) {
        let mut next = last.empty_like();
        let mut slots = Vec::new();
        let replaced = {
            let mut w = Walk::new(&last, &mut next);
            let mut key = String::new();
            for (i, (name, l)) in series.iter().enumerate() {
                let p = point(name, l);
                if let Some(slot) = w.same_as_last(&p) {
                    w.keep();
                    slots.push(slot);
                    continue;
                }
                series_key(&mut key, &p);
                let slot = last.find(&key).unwrap_or(1000 + u32::try_from(i).unwrap());
                w.put(slot, &key);
                slots.push(slot);
            }
            w.finish()
        };
        if replaced {
            next.finish();
            (next, slots)
        } else {
            (last, slots)
        }
    }

    #[test]
    fn front_coded_keys_come_back_whole_through_walks_and_lookups() {
        let series = labels(100);
        let (order, slots) = walk(Order::new(RandomState::default()), &series);
        assert_eq!(slots, (1000..1100).collect::<Vec<u32>>(), "all new");
        assert_eq!(order.len(), 100);
        let whole: usize = series
            .iter()
            .map(|(n, l)| {
                let mut k = String::new();
                series_key(&mut k, &point(n, l));
                k.len()
            })
            .sum();
        // (An agent's 1,000 tunnels: 43 %, the metric names coming in runs.)
        assert!(
            order.bytes.len() * 3 < whole * 2,
            "front coding takes less than two thirds of the keys: {} of {whole} bytes",
            order.bytes.len()
        );
        // Every key is found by lookup and matched by position.
        let mut key = String::new();
        for (i, (n, l)) in series.iter().enumerate() {
            series_key(&mut key, &point(n, l));
            assert_eq!(order.find(&key), Some(1000 + u32::try_from(i).unwrap()));
        }
        assert_eq!(order.find("moonfrp_tunnel_bytes_total\0direction=in"), None);
        // The same points again: the order is kept, every slot by position.
        let (order, slots) = walk(order, &series);
        assert_eq!(slots, (1000..1100).collect::<Vec<u32>>());
        // One series gone in the middle (past a restart), one new at the end: the positions
        // before it are copied as coded, the ones after found by lookup.
        let mut changed = series.clone();
        changed.remove(37);
        changed.push(("new_metric", [("name", "x")].into_labels()));
        let (order, slots) = walk(order, &changed);
        let mut want: Vec<u32> = (1000..1100).filter(|&s| s != 1037).collect();
        want.push(1000 + 99);
        assert_eq!(slots, want);
        assert_eq!(order.len(), 100);
        for (i, (n, l)) in changed.iter().enumerate() {
            series_key(&mut key, &point(n, l));
            assert_eq!(order.find(&key), Some(want[i]), "position {i}");
            let mut whole = Vec::new();
            order.key(i, &mut whole);
            assert_eq!(whole, key.as_bytes(), "position {i}");
        }
    }
}
