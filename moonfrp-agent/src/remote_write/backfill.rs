//! History as remote_write's write-ahead log: the snapshots a sender could not keep in memory
//! while its receiver was away are read back from the history database, oldest first, and sent
//! before anything newer (a receiver takes each series in time order).
//!
//! History keeps every sample `/metrics` shows except histogram buckets (`_sum` and `_count`
//! are there): a backfilled snapshot has no `_bucket` series.
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::proto::{Label, Sample, TimeSeries};

/// The history database, opened read-only for each read (the writer thread owns writing).
#[derive(Clone, Debug)]
pub struct History {
    db: PathBuf,
}

impl History {
    pub fn new(db: &Path) -> Self {
        Self { db: db.to_owned() }
    }

    /// The first snapshot with `from <= ts < to`: its time and its samples as time series
    /// (with `external` labels where a series lacks them). `None` when there is none.
    pub fn first(
        &self,
        from: i64,
        to: i64,
        external: &[(String, String)],
    ) -> Result<Option<(i64, Vec<TimeSeries>)>, String> {
        let conn = crate::history::store::open_read_only(&self.db)
            .map_err(|e| format!("history {}: {e}", self.db.display()))?;
        read_first(&conn, from, to, external).map_err(|e| format!("history: {e}"))
    }
}

fn read_first(
    conn: &Connection,
    from: i64,
    to: i64,
    external: &[(String, String)],
) -> rusqlite::Result<Option<(i64, Vec<TimeSeries>)>> {
    let Some((id, ts)): Option<(i64, i64)> = conn
        .query_row(
            "SELECT id, ts FROM snapshots WHERE ts >= ?1 AND ts < ?2 ORDER BY ts, id LIMIT 1",
            params![from, to],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    // The snapshot's raw rows, and its samples already compacted into chunks.
    let mut values: Vec<(i64, f64)> = Vec::new();
    crate::history::head::Reader::new(conn)?.read(
        id,
        0,
        crate::history::store::MAX_SERIES,
        |s, v| {
            values.push((s, v));
        },
    )?;
    values.extend(crate::history::compact::snapshot(conn, id)?);
    values.sort_unstable_by_key(|v| v.0);
    let mut series = conn.prepare_cached("SELECT metric, labels FROM series WHERE id = ?1")?;
    let mut out = Vec::new();
    for (series_id, value) in values {
        let Some((metric, labels)): Option<(String, String)> = series
            .query_row([series_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            continue;
        };
        let pairs: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&labels).unwrap_or_default();
        let mut l: Vec<Label> = Vec::with_capacity(pairs.len() + external.len() + 1);
        l.push(Label {
            name: "__name__".into(),
            value: metric,
        });
        for (k, v) in &pairs {
            l.push(Label {
                name: k.clone(),
                value: v.as_str().unwrap_or_default().to_owned(),
            });
        }
        for (k, v) in external {
            if !pairs.contains_key(k) {
                l.push(Label {
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        l.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(TimeSeries {
            labels: l,
            samples: vec![Sample {
                value,
                timestamp: ts,
            }],
        });
    }
    Ok(Some((ts, out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_come_back_in_order_with_their_series() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::history::Settings::default();
        let t0 = 1_700_000_000_000;
        let (mut store, _) = crate::history::Store::open(dir.path(), settings, t0).unwrap();
        let mut b = crate::series::Builder::default();
        b.counters(
            "moonfrp_tunnel_receive_bytes",
            "help",
            None,
            [([("tunnel", "web")], 5u64)],
        );
        let series = b.build();
        for i in 0..3 {
            store.write(t0 + i * 1000, &series).unwrap();
        }
        drop(store);
        let h = History::new(&dir.path().join(crate::history::FILE_NAME));
        let ext = [("instance".to_owned(), "edge-1".to_owned())];
        let (ts, got) = h.first(t0 + 1, t0 + 10_000, &ext).unwrap().unwrap();
        assert_eq!(ts, t0 + 1000);
        assert_eq!(got.len(), 1);
        let names: Vec<(&str, &str)> = got[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("__name__", "moonfrp_tunnel_receive_bytes_total"),
                ("instance", "edge-1"),
                ("tunnel", "web")
            ]
        );
        assert_eq!(got[0].samples[0].value, 5.0);
        assert!(h.first(t0 + 2001, t0 + 10_000, &ext).unwrap().is_none());
    }
}
