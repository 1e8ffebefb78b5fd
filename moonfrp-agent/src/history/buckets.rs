//! Rollup buckets on disk: `rollup_blocks`, one row per level, bucket start and group of
//! 16 series ([`super::block::ROLLUPS`]), each member a [`Bucket`] as [`Bucket::encode`] writes it.
//! A bucket's flush writes a sixteenth of the rows one row per series would, appended at the end
//! of the table (the key begins with the start), and takes about half the bytes.
//!
//! Databases of earlier versions kept one row per series in `rollups`. Those rows are read in
//! place and moved into blocks a bucket at a time ([`convert`], a bounded number of rows per
//! interval); a bucket is in one table or the other, never both.
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::{
    block::{Builder, ROLLUPS},
    rollup::Bucket,
    schema,
};

fn damaged(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        3,
        rusqlite::types::Type::Blob,
        format!("damaged rollup block: {e}").into(),
    )
}

/// Writes the buckets of level `step_s` starting at `start`: (series id, bucket, counter), in
/// increasing id order. Returns the buckets written.
pub fn write<'a>(
    tx: &Transaction<'_>,
    step_s: i64,
    start: i64,
    buckets: impl IntoIterator<Item = (i64, &'a Bucket, bool)>,
) -> rusqlite::Result<usize> {
    let mut insert = tx.prepare_cached(
        "INSERT OR REPLACE INTO rollup_blocks (step, start, grp, data) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let (mut grp, mut builder, mut written) = (None, ROLLUPS.builder(), 0);
    let mut bytes = Vec::with_capacity(64);
    let mut flush = |grp: Option<i64>, b: Builder| -> rusqlite::Result<()> {
        if let Some(g) = grp.filter(|_| !b.is_empty()) {
            insert.execute(params![step_s, start, g, b.finish()])?;
        }
        Ok(())
    };
    for (id, b, counter) in buckets {
        let g = ROLLUPS.group(id);
        if grp != Some(g) {
            flush(grp, std::mem::replace(&mut builder, ROLLUPS.builder()))?;
            grp = Some(g);
        }
        bytes.clear();
        b.encode(counter, &mut bytes);
        builder.push(id, &bytes);
        written += 1;
    }
    flush(grp, builder)?;
    Ok(written)
}

/// Series `id`'s bucket of level `step_s` starting at `start`, if stored.
pub fn read(
    conn: &Connection,
    step_s: i64,
    start: i64,
    id: i64,
) -> rusqlite::Result<Option<Bucket>> {
    let data: Option<Vec<u8>> = if schema::has_blocks(conn)? {
        conn.prepare_cached(
            "SELECT data FROM rollup_blocks WHERE step = ?1 AND start = ?2 AND grp = ?3",
        )?
        .query_row(params![step_s, start, ROLLUPS.group(id)], |r| r.get(0))
        .optional()?
    } else {
        None
    };
    if let Some(data) = data
        && let Some(m) = ROLLUPS.find(id, &data).map_err(damaged)?
    {
        return Ok(Some(Bucket::decode(m).map_err(damaged)?.0));
    }
    if !schema::has_legacy_rows(conn, "rollups")? {
        return Ok(None);
    }
    conn.prepare_cached(
        "SELECT series_id, samples, points, min, max, mean, last, increase, seconds FROM rollups
         WHERE step = ?1 AND start = ?2 AND series_id = ?3",
    )?
    .query_row(params![step_s, start, id], legacy_bucket)
    .optional()
}

/// Every stored bucket of level `step_s` with `from <= start < to`, as (start, series id,
/// bucket, counter), buckets of one start together.
pub fn scan(
    conn: &Connection,
    step_s: i64,
    from: i64,
    to: i64,
    mut take: impl FnMut(i64, i64, Bucket, bool),
) -> rusqlite::Result<()> {
    if schema::has_blocks(conn)? {
        let mut stmt = conn.prepare_cached(
            "SELECT start, grp, data FROM rollup_blocks WHERE step = ?1 AND start >= ?2 AND start < ?3",
        )?;
        let mut rows = stmt.query(params![step_s, from, to])?;
        while let Some(r) = rows.next()? {
            let (start, grp): (i64, i64) = (r.get(0)?, r.get(1)?);
            for member in ROLLUPS.members(grp, r.get_ref(2)?.as_blob()?) {
                let (id, m) = member.map_err(damaged)?;
                let (b, counter) = Bucket::decode(m).map_err(damaged)?;
                take(start, id, b, counter);
            }
        }
    }
    if schema::has_legacy_rows(conn, "rollups")? {
        let mut stmt = conn.prepare_cached(
            "SELECT series_id, samples, points, min, max, mean, last, increase, seconds, start
             FROM rollups WHERE step = ?1 AND start >= ?2 AND start < ?3",
        )?;
        let mut rows = stmt.query(params![step_s, from, to])?;
        while let Some(r) = rows.next()? {
            take(
                r.get(9)?,
                r.get(0)?,
                legacy_bucket(r)?,
                r.get::<_, Option<f64>>(7)?.is_some(),
            );
        }
    }
    Ok(())
}

/// True if level `step_s` has a bucket that starts before `ts`.
pub fn any_before(conn: &Connection, step_s: i64, ts: i64) -> rusqlite::Result<bool> {
    let blocks = schema::has_blocks(conn)?;
    for sql in [
        "SELECT 1 FROM rollup_blocks WHERE step = ?1 AND start < ?2 LIMIT 1",
        "SELECT 1 FROM rollups WHERE step = ?1 AND start < ?2 LIMIT 1",
    ]
    .into_iter()
    .skip(usize::from(!blocks))
    {
        let found: Option<i64> = conn
            .prepare_cached(sql)?
            .query_row(params![step_s, ts], |r| r.get(0))
            .optional()?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes the buckets of level `step_s` that start before `before`, at most `limit` bucket
/// starts; returns the rows deleted.
pub fn prune(tx: &Transaction<'_>, step_s: i64, before: i64, limit: i64) -> rusqlite::Result<u64> {
    let mut pruned = 0;
    for table in ["rollup_blocks", "rollups"] {
        pruned += tx
            .prepare_cached(&format!(
                "DELETE FROM {table} WHERE step = ?1 AND start IN
                   (SELECT DISTINCT start FROM {table} WHERE step = ?1 AND start < ?2 ORDER BY start LIMIT ?3)"
            ))?
            .execute(params![step_s, before, limit])? as u64;
    }
    Ok(pruned)
}

/// A row of `rollups`: `series_id, samples, points, min, max, mean, last, increase, seconds`.
/// Its mean times its points stands for the sum (the row kept no more).
fn legacy_bucket(r: &rusqlite::Row<'_>) -> rusqlite::Result<Bucket> {
    let points: u32 = r.get(2)?;
    let or_zero = |i: usize| r.get::<_, Option<f64>>(i).map(|v| v.unwrap_or(0.0));
    Ok(Bucket {
        samples: r.get(1)?,
        n: points,
        min: or_zero(3)?,
        max: or_zero(4)?,
        sum: or_zero(5)? * f64::from(points),
        last: r.get(6)?,
        increase: or_zero(7)?,
        seconds: or_zero(8)?,
    })
}

/// Moves whole buckets (every series of one level and start) of an earlier version's
/// `rollups` into blocks until about `budget` rows have moved; returns the rows moved.
pub fn convert(conn: &mut Connection, budget: u64) -> rusqlite::Result<u64> {
    let mut moved = 0;
    while moved < budget && schema::has_legacy_rows(conn, "rollups")? {
        let (step, start): (i64, i64) = conn.query_row(
            "SELECT step, start FROM rollups ORDER BY step, start LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let tx = conn.transaction()?;
        let rows: Vec<(i64, Bucket, bool)> = tx
            .prepare_cached(
                "SELECT series_id, samples, points, min, max, mean, last, increase, seconds
                 FROM rollups WHERE step = ?1 AND start = ?2 ORDER BY series_id",
            )?
            .query_map(params![step, start], |r| {
                Ok((
                    r.get(0)?,
                    legacy_bucket(r)?,
                    r.get::<_, Option<f64>>(7)?.is_some(),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        // A block already written for this bucket (not expected: a bucket is written once)
        // keeps its members; the old rows fill in the others.
        let mut merged: std::collections::BTreeMap<i64, (Bucket, bool)> =
            rows.into_iter().map(|(id, b, c)| (id, (b, c))).collect();
        tx.execute(
            "DELETE FROM rollups WHERE step = ?1 AND start = ?2",
            params![step, start],
        )?;
        scan(&tx, step, start, start + 1, |_, id, b, counter| {
            merged.insert(id, (b, counter));
        })?;
        write(
            &tx,
            step,
            start,
            merged.iter().map(|(id, (b, c))| (*id, b, *c)),
        )?;
        tx.commit()?;
        moved += merged.len().max(1) as u64;
    }
    Ok(moved)
}

/// A stored bucket: step in s, start, series id, the bucket, counter.
#[cfg(test)]
pub type Stored = (i64, i64, i64, Bucket, bool);

/// Every stored bucket: for tests.
#[cfg(test)]
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Stored>> {
    let steps: Vec<i64> = conn
        .prepare("SELECT DISTINCT step FROM rollup_blocks UNION SELECT DISTINCT step FROM rollups")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for step in steps {
        scan(conn, step, i64::MIN, i64::MAX, |start, id, b, c| {
            out.push((step, start, id, b, c));
        })?;
    }
    out.sort_by_key(|r| (r.0, r.1, r.2));
    Ok(out)
}
