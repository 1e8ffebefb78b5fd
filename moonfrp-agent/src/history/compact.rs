//! Moving raw samples into compressed chunks, and reading them back.
//!
//! The writer appends raw rows (`samples`, the head: cheap to write, crash-safe per interval).
//! Once [`WINDOW`] snapshots follow the last window, they become a window: per series, its
//! samples in those snapshots become one chunk ([`super::chunk`]) and their raw rows are deleted,
//! in the same transaction. A little more than a snapshot's rows move per interval, a slice of
//! series at a time (the window's `cursor` says how far it came), so compaction never stalls a
//! write; a database of an earlier version, all raw, is converted the same way, a window after
//! another. A restart rebuilds its rollup buckets in progress from chunks ([`since`]) and raw
//! rows.
//!
//! A sample is in exactly one place at any moment: readers take the chunks of a series and its
//! raw rows and merge them by snapshot.

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use super::{
    block::{self, Builder, CHUNKS, HEAD, get_varint, put_varint},
    chunk::{self, Encoder},
    head,
    rollup::Obs,
    schema,
    store::MAX_SERIES,
};

/// Snapshots per window: an hour at the default interval.
pub const WINDOW: i64 = 60;

/// Largest block number (series ids have 24 bits).
const MAX_GROUP: i64 = CHUNKS.group(MAX_SERIES);

/// The rowid of a window's block: window (its first snapshot id) in the high bits, block number
/// in the low 20. A rowid table appends into full pages; a two-column key would leave them about
/// a quarter empty.
pub const fn block_key(window: i64, grp: i64) -> i64 {
    window << 20 | grp
}

/// Compacts at most about `budget` raw rows; returns the rows moved.
pub fn step(conn: &mut Connection, budget: u64) -> rusqlite::Result<u64> {
    // Rows moved, and the budget spent: rows, and one for each slice (so that a run of
    // slices of an empty window ends).
    let (mut moved, mut spent) = (0, 0);
    let top: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM series")?
        .query_row([], |r| r.get(0))?;
    while spent < budget {
        let open: Option<(i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT first, last, cursor FROM windows WHERE cursor <= ?1 ORDER BY first LIMIT 1",
            )?
            .query_row([MAX_SERIES], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((first, last, cursor)) = open else {
            if !next_window(conn)? {
                break;
            }
            continue;
        };
        let snapshots = (last - first + 1).max(1);
        // Whole blocks of the head (and so of chunks): the slice ends on a boundary.
        let width = i64::try_from((budget - spent) / snapshots.cast_unsigned())
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_SERIES);
        let end = HEAD.first_id(HEAD.group(cursor + width + HEAD.per() - 1));
        let end = if end > top { MAX_SERIES + 1 } else { end };
        let tx = conn.transaction()?;
        let rows = slice(&tx, first, last, cursor, end.min(MAX_SERIES + 1))?;
        tx.prepare_cached("UPDATE windows SET cursor = ?1 WHERE first = ?2")?
            .execute(params![end, first])?;
        tx.commit()?;
        moved += rows;
        spent += rows + 1;
    }
    Ok(moved)
}

/// Opens the next window if [`WINDOW`] snapshots follow the last one.
fn next_window(conn: &Connection) -> rusqlite::Result<bool> {
    let after: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(last), 0) FROM windows")?
        .query_row([], |r| r.get(0))?;
    let ids: Vec<(i64, i64)> = conn
        .prepare_cached("SELECT id, ts FROM snapshots WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![after, WINDOW], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let (Some(&(first, _)), Some(&(last, ts_last))) = (ids.first(), ids.last()) else {
        return Ok(false);
    };
    if i64::try_from(ids.len()).unwrap_or(0) < WINDOW {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO windows (first, last, ts_last, cursor) VALUES (?1, ?2, ?3, 0)",
        params![first, last, ts_last],
    )?;
    Ok(true)
}

/// Moves the raw rows of series `lo..hi` in snapshots `first..=last` into chunks.
fn slice(tx: &Transaction<'_>, first: i64, last: i64, lo: i64, hi: i64) -> rusqlite::Result<u64> {
    // The chunks being built, in series id order. Each snapshot's samples come in id order,
    // nearly always the same series as the snapshot before: a sample is first looked for just
    // after the last one's chunk, and by binary search only when it is not there.
    let mut open: Vec<(i64, Encoder)> = Vec::new();
    let mut rows = 0;
    let reader = head::Reader::new(tx)?;
    for snapshot in first..=last {
        let mut next = 0;
        reader.read(snapshot, lo, hi - 1, |series, value| {
            let at = if open.get(next).is_some_and(|(id, _)| *id == series) {
                Ok(next)
            } else {
                open.binary_search_by_key(&series, |(id, _)| *id)
            };
            next = match at {
                Ok(i) => {
                    open[i].1.push(snapshot, value);
                    i + 1
                }
                Err(i) => {
                    open.insert(i, (series, Encoder::new(snapshot, value)));
                    i + 1
                }
            };
            rows += 1;
        })?;
    }
    // A slice that begins inside a group (a window a version-3 database left half done) adds
    // to the group's block instead of replacing it.
    let mut kept: Vec<(i64, Vec<u8>)> = Vec::new();
    if lo % CHUNKS.per() != 0 {
        let data: Option<Vec<u8>> = tx
            .prepare_cached("SELECT data FROM chunk_blocks WHERE key = ?1")?
            .query_row([block_key(first, CHUNKS.group(lo))], |r| r.get(0))
            .optional()?;
        if let Some(data) = data {
            for member in CHUNKS.members(CHUNKS.group(lo), &data) {
                let (id, bytes) = member.map_err(damaged_block)?;
                if id < lo {
                    kept.push((id, bytes.to_vec()));
                }
            }
        }
    }
    let mut insert =
        tx.prepare_cached("INSERT OR REPLACE INTO chunk_blocks (key, data) VALUES (?1, ?2)")?;
    let mut members = kept
        .into_iter()
        .chain(open.iter().map(|(id, e)| (*id, member(first, e))))
        .peekable();
    while let Some((id, bytes)) = members.next() {
        let grp = CHUNKS.group(id);
        let mut b = CHUNKS.builder();
        b.push(id, &bytes);
        while let Some((next, bytes)) = members.next_if(|(n, _)| CHUNKS.group(*n) == grp) {
            b.push(next, &bytes);
        }
        insert.execute(params![block_key(first, grp), b.finish()])?;
    }
    for snapshot in first..=last {
        head::delete(tx, snapshot, lo, hi)?;
    }
    Ok(rows)
}

/// A chunk as a block member: its first snapshot after the window's first, its length, its
/// data.
fn member(window: i64, e: &Encoder) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.bytes().len() + 4);
    put_varint(&mut out, (e.first() - window).cast_unsigned());
    put_varint(&mut out, e.len() as u64);
    out.extend_from_slice(e.bytes());
    out
}

/// The samples of a block member of window `window`: (snapshot id, value).
fn decode_member(window: i64, bytes: &[u8]) -> rusqlite::Result<Vec<(i64, f64)>> {
    let mut pos = 0;
    let head = get_varint(bytes, &mut pos)
        .and_then(|o| i64::try_from(o).ok())
        .zip(get_varint(bytes, &mut pos).and_then(|c| usize::try_from(c).ok()));
    let Some((offset, count)) = head else {
        return Err(damaged(&chunk::ChunkError::Truncated(0)));
    };
    chunk::decode(window + offset, count, &bytes[pos..]).map_err(|e| damaged(&e))
}

fn damaged_block(e: block::BlockError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        2,
        rusqlite::types::Type::Blob,
        format!("damaged chunk block: {e}").into(),
    )
}

/// Time, run and run start of the snapshots `from..=to` (ids), in id order.
fn snapshot_times(
    conn: &Connection,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(i64, i64, i64, i64)>> {
    conn.prepare_cached(
        "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
         JOIN runs r ON r.id = sn.run_id WHERE sn.id BETWEEN ?1 AND ?2 ORDER BY sn.id",
    )?
    .query_map(params![from, to], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?
    .collect()
}

fn damaged(e: &chunk::ChunkError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        4,
        rusqlite::types::Type::Blob,
        format!("damaged chunk: {e}").into(),
    )
}

/// The first snapshot that may still have raw samples: the first of the oldest window being
/// compacted, else the one after the last window.
pub fn head_from(conn: &Connection) -> rusqlite::Result<i64> {
    if !schema::has_blocks(conn)? {
        return Ok(0);
    }
    conn.prepare_cached(
        "SELECT COALESCE((SELECT MIN(first) FROM windows WHERE cursor <= ?1),
                         (SELECT MAX(last) + 1 FROM windows), 0)",
    )?
    .query_row([MAX_SERIES], |r| r.get(0))
}

/// True if compacted samples reach `from` or later: readers of the range need the chunks.
pub fn reaches(conn: &Connection, from: i64) -> rusqlite::Result<bool> {
    if !schema::has_blocks(conn)? {
        return Ok(false);
    }
    let newest: Option<i64> = conn
        .prepare_cached("SELECT MAX(ts_last) FROM windows")?
        .query_row([], |r| r.get(0))?;
    Ok(newest.is_some_and(|n| n >= from))
}

/// The chunked samples of series `id` with `from <= ts <= to`, plus the latest chunked one
/// before `from` (for rates; `need_before`: the caller has no raw one).
pub fn series(
    conn: &Connection,
    id: i64,
    from: i64,
    to: i64,
    need_before: bool,
) -> rusqlite::Result<(Option<Obs>, Vec<Obs>)> {
    if !schema::has_blocks(conn)? {
        return Ok((None, Vec::new()));
    }
    // Nothing compacted at or after `from`, and a raw sample before it: the head has it all.
    if !need_before && !reaches(conn, from)? {
        return Ok((None, Vec::new()));
    }
    // The windows the range touches, and the last one that ends before it (for the sample
    // before `from`).
    let since: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(ts_last), ?1) FROM windows WHERE ts_last < ?1")?
        .query_row([from], |r| r.get(0))?;
    let (mut before, mut points) = (None, Vec::new());
    chunks_of(
        conn,
        since,
        to,
        |s| s == id,
        (id, id),
        i64::MIN,
        |_, obs| {
            if obs.ts < from {
                before = Some(obs);
            } else if obs.ts <= to {
                points.push(obs);
            }
        },
    )?;
    Ok((before, points))
}

/// Every chunked sample of the windows that end at or after `from`, a window at a time, as
/// (series id, sample): each series' samples come in time order (series are independent of each
/// other). For rebuilding the rollup buckets in progress after a restart.
pub fn since(conn: &Connection, from: i64, take: impl FnMut(i64, Obs)) -> rusqlite::Result<()> {
    chunks_of(
        conn,
        from,
        i64::MAX,
        |_| true,
        (0, MAX_SERIES),
        i64::MIN,
        take,
    )
}

/// The chunked samples of the windows that end at or after `from` and begin at or before `to`
/// (whole windows: callers keep what they need), of the series with ids in `span` that `wants`,
/// a window at a time, as (series id, sample); each series' samples in time order. Chunks of
/// other series are not decoded, and samples before `keep_from` are not passed on (a window
/// with none after it is not read).
pub fn chunks_of(
    conn: &Connection,
    from: i64,
    to: i64,
    wants: impl Fn(i64) -> bool,
    span: (i64, i64),
    keep_from: i64,
    mut take: impl FnMut(i64, Obs),
) -> rusqlite::Result<()> {
    if !schema::has_blocks(conn)? {
        return Ok(());
    }
    let windows: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT first, last FROM windows WHERE ts_last >= ?1
               AND first <= COALESCE((SELECT MAX(id) FROM snapshots WHERE ts <= ?2), 0)
             ORDER BY first",
        )?
        .query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt =
        conn.prepare_cached("SELECT key & ?3, data FROM chunk_blocks WHERE key BETWEEN ?1 AND ?2")?;
    for (first, last) in windows {
        let times = snapshot_times(conn, first, last)?;
        let kept = times.partition_point(|t| t.1 < keep_from);
        let Some(&(first_kept, ..)) = times.get(kept) else {
            continue;
        };
        let mut rows = stmt.query(params![
            block_key(first, CHUNKS.group(span.0)),
            block_key(first, CHUNKS.group(span.1)),
            MAX_GROUP
        ])?;
        while let Some(r) = rows.next()? {
            let grp: i64 = r.get(0)?;
            for member in CHUNKS.members(grp, r.get_ref(1)?.as_blob()?) {
                let (series, bytes) = member.map_err(damaged_block)?;
                if series < span.0 || series > span.1 || !wants(series) {
                    continue;
                }
                for (snapshot, value) in decode_member(first, bytes)? {
                    if snapshot < first_kept {
                        continue;
                    }
                    let Ok(i) = times[kept..].binary_search_by_key(&snapshot, |t| t.0) else {
                        continue;
                    };
                    let (_, ts, run, run_start) = times[kept + i];
                    take(
                        series,
                        Obs {
                            ts,
                            value,
                            run,
                            run_start,
                        },
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every chunked sample of snapshot `snapshot`: (series id, value).
pub fn snapshot(conn: &Connection, snapshot: i64) -> rusqlite::Result<Vec<(i64, f64)>> {
    if !schema::has_blocks(conn)? {
        return Ok(Vec::new());
    }
    let window: Option<i64> = conn
        .query_row(
            "SELECT first FROM windows WHERE first <= ?1 AND last >= ?1",
            [snapshot],
            |r| r.get(0),
        )
        .optional()?;
    let Some(window) = window else {
        return Ok(Vec::new());
    };
    let mut stmt =
        conn.prepare_cached("SELECT key & ?3, data FROM chunk_blocks WHERE key BETWEEN ?1 AND ?2")?;
    let mut rows = stmt.query(params![
        block_key(window, 0),
        block_key(window, MAX_GROUP),
        MAX_GROUP
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let grp: i64 = r.get(0)?;
        for member in CHUNKS.members(grp, r.get_ref(1)?.as_blob()?) {
            let (series, bytes) = member.map_err(damaged_block)?;
            let samples = decode_member(window, bytes)?;
            if let Ok(i) = samples.binary_search_by_key(&snapshot, |s| s.0) {
                out.push((series, samples[i].1));
            }
        }
    }
    Ok(out)
}

/// Deletes the chunks and snapshots of windows that ended before `cutoff_ms` (at most `limit`
/// windows); returns the blocks deleted.
pub fn prune(tx: &Transaction<'_>, cutoff_ms: i64, limit: i64) -> rusqlite::Result<u64> {
    let expired: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT first, last FROM windows WHERE ts_last < ?1 AND cursor > ?2 ORDER BY first LIMIT ?3",
        )?
        .query_map(params![cutoff_ms, MAX_SERIES, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut pruned = 0;
    for (first, last) in expired {
        pruned += tx.execute(
            "DELETE FROM chunk_blocks WHERE key BETWEEN ?1 AND ?2",
            [block_key(first, 0), block_key(first, MAX_GROUP)],
        )? as u64;
        tx.execute(
            "DELETE FROM snapshots WHERE id BETWEEN ?1 AND ?2",
            [first, last],
        )?;
        tx.execute("DELETE FROM windows WHERE first = ?1", [first])?;
    }
    Ok(pruned)
}

/// Moves the chunks of a version-3 database (one row per series and window, in `chunks`) into
/// blocks; part of the migration to version 4.
pub fn convert_chunks(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(
        "SELECT window_id, series_id, first, count, data FROM chunks ORDER BY window_id, series_id",
    )?;
    let mut rows = stmt.query([])?;
    let mut insert =
        tx.prepare("INSERT OR REPLACE INTO chunk_blocks (key, data) VALUES (?1, ?2)")?;
    let mut open: Option<(i64, i64, Builder)> = None;
    while let Some(r) = rows.next()? {
        let (window, id, first, count): (i64, i64, i64, i64) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
        let key = (window, CHUNKS.group(id));
        if open.as_ref().is_some_and(|o| (o.0, o.1) != key) {
            let (w, g, b) = open.take().expect("checked above");
            insert.execute(params![block_key(w, g), b.finish()])?;
        }
        let mut bytes = Vec::new();
        put_varint(&mut bytes, (first - window).cast_unsigned());
        put_varint(&mut bytes, count.cast_unsigned());
        bytes.extend_from_slice(r.get_ref(4)?.as_blob()?);
        open.get_or_insert_with(|| (key.0, key.1, CHUNKS.builder()))
            .2
            .push(id, &bytes);
    }
    if let Some((w, g, b)) = open {
        insert.execute(params![block_key(w, g), b.finish()])?;
    }
    Ok(())
}
