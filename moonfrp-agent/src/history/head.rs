//! The head: raw samples of the recent snapshots, not yet in chunks. One row per snapshot and
//! block of 64 series ([`block::HEAD`]) (`head_blocks`, key = snapshot id << 20 | block), each member one
//! value: an integer (byte and packet counters, most gauges) as a zigzag varint, anything else
//! as its 8 bytes — exact bit for bit, -0.0 included. A snapshot is a sixteenth of the rows a
//! row per sample took, and about half the bytes.
//!
//! Databases of earlier versions kept a row per sample in `samples` (key = snapshot id << 24 |
//! series id). Readers here take both; those rows leave as their windows are compacted
//! ([`super::compact`]) or expire.
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::{
    block::{self, HEAD, get_varint, put_varint},
    chunk::{integral, unzigzag, zigzag},
    schema,
    store::{MAX_SERIES, sample_key},
};

/// Largest block number (series ids have 24 bits).
const MAX_GROUP: i64 = HEAD.group(MAX_SERIES);

/// The rowid of snapshot `snapshot`'s block `grp`.
pub const fn key(snapshot: i64, grp: i64) -> i64 {
    snapshot << 20 | grp
}

/// A value as a block member.
fn encode(v: f64, out: &mut Vec<u8>) {
    if let Some(i) = integral(v) {
        put_varint(out, zigzag(i) << 1);
    } else {
        out.push(1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn decode(bytes: &[u8]) -> rusqlite::Result<f64> {
    let mut pos = 0;
    let damaged = || {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Blob,
            "damaged head block: a value is cut short".into(),
        )
    };
    let z = get_varint(bytes, &mut pos).ok_or_else(damaged)?;
    if z & 1 == 0 {
        #[allow(clippy::cast_precision_loss)]
        return Ok(unzigzag(z >> 1) as f64);
    }
    bytes
        .get(pos..pos + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(f64::from_le_bytes)
        .ok_or_else(damaged)
}

fn damaged_block(e: block::BlockError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        1,
        rusqlite::types::Type::Blob,
        format!("damaged head block: {e}").into(),
    )
}

/// Writes snapshot `snapshot`'s samples, (series id, value) in increasing id order.
pub fn write(
    tx: &Transaction<'_>,
    snapshot: i64,
    samples: impl IntoIterator<Item = (i64, f64)>,
) -> rusqlite::Result<()> {
    let mut insert =
        tx.prepare_cached("INSERT OR REPLACE INTO head_blocks (key, data) VALUES (?1, ?2)")?;
    let mut value = Vec::with_capacity(9);
    let mut samples = samples.into_iter().peekable();
    while let Some(&(first, _)) = samples.peek() {
        let grp = HEAD.group(first);
        let mut b = HEAD.builder();
        while let Some((id, v)) = samples.next_if(|(id, _)| HEAD.group(*id) == grp) {
            value.clear();
            encode(v, &mut value);
            b.push(id, &value);
        }
        insert.execute(params![key(snapshot, grp), b.finish()])?;
    }
    Ok(())
}

/// Reads the head through one connection (whether the file has blocks, and rows of an earlier
/// version, is asked once).
pub struct Reader<'c> {
    conn: &'c Connection,
    blocks: bool,
    legacy: bool,
}

impl<'c> Reader<'c> {
    pub fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            conn,
            blocks: schema::has_blocks(conn)?,
            legacy: schema::has_legacy_rows(conn, "samples")?,
        })
    }

    /// The raw samples of snapshot `snapshot` with series ids in `lo..=hi`: `take(id, value)`,
    /// those of this version in id order, then any an earlier version wrote.
    pub fn read(
        &self,
        snapshot: i64,
        lo: i64,
        hi: i64,
        mut take: impl FnMut(i64, f64),
    ) -> rusqlite::Result<()> {
        if self.blocks {
            let mut stmt = self.conn.prepare_cached(
                "SELECT key & ?3, data FROM head_blocks WHERE key BETWEEN ?1 AND ?2",
            )?;
            let mut rows = stmt.query(params![
                key(snapshot, HEAD.group(lo)),
                key(snapshot, HEAD.group(hi)),
                MAX_GROUP
            ])?;
            while let Some(r) = rows.next()? {
                let grp: i64 = r.get(0)?;
                for member in HEAD.members(grp, r.get_ref(1)?.as_blob()?) {
                    let (id, bytes) = member.map_err(damaged_block)?;
                    if (lo..=hi).contains(&id) {
                        take(id, decode(bytes)?);
                    }
                }
            }
        }
        if self.legacy {
            let mut stmt = self.conn.prepare_cached(
                "SELECT key & ?3, value FROM samples WHERE key BETWEEN ?1 AND ?2 ORDER BY key",
            )?;
            let mut rows = stmt.query(params![
                sample_key(snapshot, lo),
                sample_key(snapshot, hi),
                MAX_SERIES
            ])?;
            while let Some(r) = rows.next()? {
                take(r.get(0)?, r.get(1)?);
            }
        }
        Ok(())
    }

    /// Series `id`'s raw sample in snapshot `snapshot`, if there is one.
    pub fn value(&self, snapshot: i64, id: i64) -> rusqlite::Result<Option<f64>> {
        if self.blocks {
            let data: Option<Vec<u8>> = self
                .conn
                .prepare_cached("SELECT data FROM head_blocks WHERE key = ?1")?
                .query_row([key(snapshot, HEAD.group(id))], |r| r.get(0))
                .optional()?;
            if let Some(data) = data
                && let Some(bytes) = HEAD.find(id, &data).map_err(damaged_block)?
            {
                return decode(bytes).map(Some);
            }
        }
        if !self.legacy {
            return Ok(None);
        }
        self.conn
            .prepare_cached("SELECT value FROM samples WHERE key = ?1")?
            .query_row([sample_key(snapshot, id)], |r| r.get(0))
            .optional()
    }
}

/// Deletes the raw samples of snapshot `snapshot` with series ids in `lo..hi`; a block that
/// also holds series outside the range keeps those.
pub fn delete(tx: &Transaction<'_>, snapshot: i64, lo: i64, hi: i64) -> rusqlite::Result<()> {
    let (first, last) = (HEAD.group(lo), HEAD.group(hi - 1));
    let inside = |grp: i64| HEAD.first_id(grp) >= lo && HEAD.first_id(grp) + HEAD.per() <= hi;
    let edges = if first == last {
        [Some(first), None]
    } else {
        [Some(first), Some(last)]
    };
    for grp in edges.into_iter().flatten().filter(|g| !inside(*g)) {
        let data: Option<Vec<u8>> = tx
            .prepare_cached("SELECT data FROM head_blocks WHERE key = ?1")?
            .query_row([key(snapshot, grp)], |r| r.get(0))
            .optional()?;
        let Some(data) = data else { continue };
        let mut kept = HEAD.builder();
        for member in HEAD.members(grp, &data) {
            let (id, bytes) = member.map_err(damaged_block)?;
            if !(lo..hi).contains(&id) {
                kept.push(id, bytes);
            }
        }
        if kept.is_empty() {
            tx.prepare_cached("DELETE FROM head_blocks WHERE key = ?1")?
                .execute([key(snapshot, grp)])?;
        } else {
            tx.prepare_cached("INSERT OR REPLACE INTO head_blocks (key, data) VALUES (?1, ?2)")?
                .execute(params![key(snapshot, grp), kept.finish()])?;
        }
    }
    // The blocks wholly inside the range.
    let (from, to) = (HEAD.group(lo + HEAD.per() - 1), HEAD.group(hi) - 1);
    if from <= to {
        tx.prepare_cached("DELETE FROM head_blocks WHERE key BETWEEN ?1 AND ?2")?
            .execute([key(snapshot, from), key(snapshot, to)])?;
    }
    tx.prepare_cached("DELETE FROM samples WHERE key BETWEEN ?1 AND ?2")?
        .execute([sample_key(snapshot, lo), sample_key(snapshot, hi - 1)])?;
    Ok(())
}

/// Deletes every raw sample of snapshot `snapshot`.
pub fn delete_snapshot(tx: &Transaction<'_>, snapshot: i64) -> rusqlite::Result<u64> {
    let blocks = tx
        .prepare_cached("DELETE FROM head_blocks WHERE key BETWEEN ?1 AND ?2")?
        .execute([key(snapshot, 0), key(snapshot, MAX_GROUP)])?;
    let rows = tx
        .prepare_cached("DELETE FROM samples WHERE key BETWEEN ?1 AND ?2")?
        .execute([sample_key(snapshot, 0), sample_key(snapshot, MAX_SERIES)])?;
    Ok((blocks + rows) as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn values_come_back_bit_for_bit(v in prop_oneof![
            any::<f64>(),
            (-(1i64 << 53)..=1i64 << 53).prop_map(|i| i as f64),
            Just(-0.0),
            Just(f64::NAN),
        ]) {
            let mut out = Vec::new();
            encode(v, &mut out);
            prop_assert_eq!(decode(&out).unwrap().to_bits(), v.to_bits());
            for cut in 0..out.len() {
                prop_assert!(decode(&out[..cut]).is_err());
            }
        }
    }
}
