//! The database layout, versioned with `PRAGMA user_version`. Each migration runs once, in a
//! transaction; a database written by a newer agent is refused rather than touched. The README
//! ("History") documents these tables for people who open the file with `sqlite3`.
use rusqlite::{Connection, Transaction};

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: raw samples, time-major so that each interval appends; rollups keyed the same way.
    "
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at INTEGER NOT NULL,   -- Unix ms
        version TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,           -- Unix ms
        run_id INTEGER NOT NULL REFERENCES runs(id)
    );
    CREATE INDEX snapshots_ts ON snapshots(ts);
    CREATE TABLE metrics (
        name TEXT PRIMARY KEY,         -- sample name as on /metrics
        type TEXT NOT NULL,            -- counter | gauge
        unit TEXT NOT NULL,
        help TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        metric TEXT NOT NULL REFERENCES metrics(name),
        labels TEXT NOT NULL,          -- JSON object, keys sorted
        UNIQUE (metric, labels)
    );
    -- key = snapshot_id << 24 | series_id: a rowid table appends into full pages, which a
    -- two-column key would leave about a third empty. The view below unpacks it.
    CREATE TABLE samples (
        key INTEGER PRIMARY KEY,
        value REAL NOT NULL
    );
    CREATE TABLE rollups (
        step INTEGER NOT NULL,         -- bucket width, seconds
        start INTEGER NOT NULL,        -- bucket start, Unix ms
        series_id INTEGER NOT NULL,
        samples INTEGER NOT NULL,      -- raw samples in the bucket
        points INTEGER NOT NULL,       -- values (gauges) or rates (counters) behind min/max/mean
        min REAL, max REAL, mean REAL,
        last REAL NOT NULL,
        increase REAL,                 -- counters only
        seconds REAL,                  -- counters only: time the increase covers
        PRIMARY KEY (step, start, series_id)
    ) WITHOUT ROWID;
    CREATE VIEW history AS
        SELECT sn.ts AS ts, se.metric AS metric, se.labels AS labels, sa.value AS value
        FROM samples sa
        JOIN snapshots sn ON sn.id = sa.key >> 24
        JOIN series se ON se.id = sa.key & 16777215;
    ",
    // 2: the alert log.
    "
    CREATE TABLE alert_events (
        ts INTEGER NOT NULL,           -- Unix ms
        alertname TEXT NOT NULL,
        event TEXT NOT NULL,           -- firing | repeat | severity_changed | resolved
        severity TEXT NOT NULL,
        value REAL,
        labels TEXT NOT NULL,          -- JSON object
        summary TEXT NOT NULL,
        active_since INTEGER NOT NULL  -- Unix ms
    );
    CREATE INDEX alert_events_ts ON alert_events(ts);
    ",
    // 3: compressed chunks. Raw samples (`samples`, the head) older than about two hours are
    // moved, a window of snapshots at a time, into one chunk per series and window
    // (`history::chunk`); `windows` says which snapshots a window covers and how far its
    // compaction has come (series ids below `cursor` are done).
    "
    CREATE TABLE windows (
        first INTEGER PRIMARY KEY,     -- first snapshot id
        last INTEGER NOT NULL,         -- last snapshot id
        ts_last INTEGER NOT NULL,      -- Unix ms of the last snapshot
        cursor INTEGER NOT NULL        -- series ids below this are in chunks
    );
    CREATE TABLE chunks (
        series_id INTEGER NOT NULL,
        window_id INTEGER NOT NULL,    -- windows.first
        first INTEGER NOT NULL,        -- snapshot id of the chunk's first sample
        count INTEGER NOT NULL,        -- samples in the chunk
        data BLOB NOT NULL,
        PRIMARY KEY (series_id, window_id)
    ) WITHOUT ROWID;
    CREATE INDEX chunks_window ON chunks(window_id);
    ",
    // 4: blocks (`history::block`): the head and chunks of 64 series, rollup buckets of 16,
    // with neighbouring ids per row. The chunks of version 3 are moved into blocks by `compact::convert_chunks` in
    // this migration's transaction (version 3 keeps at most a day of them); rows of `rollups`
    // are read in place and moved a bucket at a time while the agent runs
    // (`buckets::convert`).
    "
    -- key = window_id << 20 | grp: the window (windows.first) and the block (series ids
    -- grp * 64 .. grp * 64 + 63), one rowid so that compaction appends into full pages.
    CREATE TABLE chunk_blocks (
        key INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    -- The head (`history::head`): key = snapshot id << 20 | grp, the raw values of one
    -- snapshot's block of 64 series. `samples` keeps what an earlier version wrote until it is
    -- compacted; the `history` view over it goes (`moonfrp-agent history --csv` reads any
    -- range, compressed or raw).
    CREATE TABLE head_blocks (
        key INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    DROP VIEW history;
    CREATE TABLE rollup_blocks (
        step INTEGER NOT NULL,         -- bucket width, seconds
        start INTEGER NOT NULL,        -- bucket start, Unix ms
        grp INTEGER NOT NULL,          -- series ids grp * 16 .. grp * 16 + 15
        data BLOB NOT NULL,
        PRIMARY KEY (step, start, grp)
    ) WITHOUT ROWID;
    ",
];

/// The version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the history database has schema version {found}, newer than this agent's {VERSION}: it was written by a newer moonfrp-agent; upgrade the agent or point --data-dir elsewhere (the file is left as it is)"
    )]
    TooNew { found: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// True if the file has blocks (version 4 or later). False for a database of an earlier
/// version not yet opened by this agent, which the `history` command may read: its samples and
/// buckets are all in `samples` and `rollups` (version 3's chunks are read only once the agent
/// has moved them into blocks).
pub fn has_blocks(conn: &Connection) -> rusqlite::Result<bool> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(version >= 4)
}

/// True if `table` of an earlier version (`samples`, `rollups`) still holds rows to move into
/// blocks.
pub fn has_legacy_rows(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    use rusqlite::OptionalExtension as _;
    Ok(conn
        .prepare_cached(&format!("SELECT 1 FROM {table} LIMIT 1"))?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Brings the schema up to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx: Transaction<'_> = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i + 1 == 4 {
            super::compact::convert_chunks(&tx)?;
            tx.execute_batch("DROP INDEX chunks_window; DROP TABLE chunks;")?;
        }
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}
