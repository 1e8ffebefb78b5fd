//! The agent's recent log records, kept in memory for `GET /api/v1/logs` and `moonfrp-agent logs`.
//! Bounded twice: at most [`MAX_RECORDS`] records and [`MAX_BYTES`] of text, the oldest dropped
//! first; each record's message and fields are cut to fixed sizes where they enter, so a flood of
//! long lines moves the window forward and never grows it.
use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context};

/// Most records kept.
pub const MAX_RECORDS: usize = 2_000;
/// Most bytes of text (messages, targets, field names and values) kept.
pub const MAX_BYTES: usize = 1 << 20;
/// Longest message kept (longer ones are cut, ending with `…`).
pub const MAX_MESSAGE: usize = 2_048;
/// Most fields kept per record, and the longest value of each.
pub const MAX_FIELDS: usize = 16;
pub const MAX_FIELD: usize = 512;

/// One log record, as the API answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the agent's log since it started (1, 2, …): `after=` of the next request.
    pub seq: u64,
    /// Unix seconds.
    pub time: f64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    pub target: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    fn size(&self) -> usize {
        self.target.len()
            + self.message.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Severity as an ordinal, most severe first (`error` = 1 … `trace` = 5).
pub fn severity(level: &str) -> Option<u8> {
    match level {
        "error" => Some(1),
        "warn" => Some(2),
        "info" => Some(3),
        "debug" => Some(4),
        "trace" => Some(5),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<Record>,
    bytes: usize,
}

/// The ring. One per process ([`global`]); tests make their own.
#[derive(Debug)]
pub struct Ring {
    inner: Mutex<Inner>,
    /// The newest record's `seq`: followers wait on it.
    last: watch::Sender<u64>,
    max_records: usize,
    max_bytes: usize,
}

/// What [`Ring::read`] found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub records: Vec<Record>,
    /// Records newer than `after` that the ring no longer held (dropped by its bound).
    pub missed: u64,
    /// The newest record's `seq` (0: none yet): where a follower continues.
    pub last: u64,
    /// The ring's bounds, for the reader.
    pub max_records: usize,
    pub max_bytes: usize,
}

impl Ring {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            last: watch::Sender::new(0),
            max_records,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a record (its `seq` is set here), dropping the oldest beyond the bounds.
    pub fn push(&self, mut r: Record) {
        let seq = {
            let mut inner = self.lock();
            r.seq = inner.records.back().map_or(*self.last.borrow(), |l| l.seq) + 1;
            let seq = r.seq;
            inner.bytes += r.size();
            inner.records.push_back(r);
            while inner.records.len() > self.max_records
                || (inner.bytes > self.max_bytes && inner.records.len() > 1)
            {
                if let Some(old) = inner.records.pop_front() {
                    inner.bytes -= old.size();
                }
            }
            seq
        };
        self.last.send_replace(seq);
    }

    /// Records after `after` at `max_level` or more severe, from `since` (unix seconds) on; the
    /// newest `limit` of them, oldest first.
    pub fn read(&self, after: u64, max_level: u8, since: f64, limit: usize) -> Page {
        let inner = self.lock();
        let first = inner.records.front().map_or(u64::MAX, |r| r.seq);
        let last = inner.records.back().map_or(*self.last.borrow(), |r| r.seq);
        let mut records: Vec<Record> = inner
            .records
            .iter()
            .rev()
            .take_while(|r| r.seq > after)
            .filter(|r| r.time >= since && severity(&r.level).is_some_and(|s| s <= max_level))
            .take(limit)
            .cloned()
            .collect();
        records.reverse();
        Page {
            records,
            missed: first
                .saturating_sub(after + 1)
                .min(last.saturating_sub(after)),
            last,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
        }
    }

    /// Records and bytes held now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.records.len(), inner.bytes)
    }

    /// Waits (up to `wait`) until a record newer than `after` exists.
    pub async fn wait_after(&self, after: u64, wait: std::time::Duration) {
        let mut rx = self.last.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > after)).await;
    }
}

/// The process's ring, made on first use.
pub fn global() -> &'static Arc<Ring> {
    static RING: OnceLock<Arc<Ring>> = OnceLock::new();
    RING.get_or_init(|| Arc::new(Ring::new(MAX_RECORDS, MAX_BYTES)))
}

/// `s` cut to at most `max` bytes on a character boundary, ending with `…` when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.put(field, s);
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = cut(value, MAX_MESSAGE);
        } else if self.fields.len() < MAX_FIELDS {
            self.fields
                .insert(field.name().to_owned(), cut(value, MAX_FIELD));
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// A `tracing` layer that keeps every event it sees in a ring.
pub struct RingLayer(pub Arc<Ring>);

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let meta = event.metadata();
        self.0.push(Record {
            seq: 0,
            time: crate::time::ms_to_s(crate::time::unix_ms(std::time::SystemTime::now())),
            level: level_name(*meta.level()).to_owned(),
            target: cut(meta.target().to_owned(), MAX_FIELD),
            message: f.message,
            fields: f.fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(level: &str, message: &str) -> Record {
        Record {
            seq: 0,
            time: 100.0,
            level: level.into(),
            target: "moonfrp_agent::test".into(),
            message: message.into(),
            fields: BTreeMap::new(),
        }
    }

    #[test]
    fn reads_after_a_position_at_a_level() {
        let ring = Ring::new(10, 1 << 20);
        for (i, level) in ["info", "warn", "debug", "error"].into_iter().enumerate() {
            ring.push(record(level, &format!("m{i}")));
        }
        let p = ring.read(0, severity("warn").unwrap(), 0.0, 100);
        let got: Vec<(u64, &str)> = p
            .records
            .iter()
            .map(|r| (r.seq, r.message.as_str()))
            .collect();
        assert_eq!(got, [(2, "m1"), (4, "m3")]);
        assert_eq!((p.last, p.missed), (4, 0));
        let p = ring.read(2, 5, 0.0, 100);
        assert_eq!(p.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        // The newest `limit`, oldest first.
        let p = ring.read(0, 5, 0.0, 2);
        assert_eq!(p.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(ring.read(4, 5, 0.0, 100).records.is_empty());
        assert!(ring.read(0, 5, 101.0, 100).records.is_empty());
    }

    #[test]
    fn a_flood_stays_within_both_bounds_and_says_what_was_missed() {
        let ring = Ring::new(100, 10_000);
        let long = "x".repeat(MAX_MESSAGE * 4);
        for i in 0..100_000 {
            let message = if i % 2 == 0 {
                long.clone()
            } else {
                format!("short {i}")
            };
            ring.push(Record {
                message: cut(message, MAX_MESSAGE),
                ..record("warn", "")
            });
            let (n, bytes) = ring.usage();
            assert!(
                n <= 100 && bytes <= 10_000 + MAX_MESSAGE + 64,
                "{n} records, {bytes} bytes"
            );
        }
        let p = ring.read(0, 5, 0.0, 1_000);
        assert_eq!(p.last, 100_000);
        assert_eq!(p.records.last().unwrap().seq, 100_000);
        assert_eq!(p.missed, p.records[0].seq - 1);
        assert!(p.records.iter().all(|r| r.message.len() <= MAX_MESSAGE));
        // A follower that saw everything before the oldest held record misses nothing.
        let held = p.records[0].seq;
        assert_eq!(ring.read(held - 1, 5, 0.0, 1_000).missed, 0);
        assert_eq!(ring.read(held - 3, 5, 0.0, 1_000).missed, 2);
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let s = cut("é".repeat(100), 11);
        assert!(s.len() <= 11 && s.ends_with('…'), "{s}");
        assert_eq!(cut("short".into(), 11), "short");
    }
}
