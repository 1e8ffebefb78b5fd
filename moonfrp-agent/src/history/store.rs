//! The history database: one SQLite file (WAL) written once per interval by one writer.
//!
//! Raw samples are keyed (snapshot, series) so each interval appends at the end of the table, and
//! one series is read back by one index lookup per snapshot. Rollup buckets are filled in memory
//! as samples arrive and written when a bucket ends; after a restart the bucket in progress is
//! rebuilt from what is stored. Pruning deletes a bounded number of rows per interval.
use std::{
    collections::HashSet,
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, Transaction, params};

use super::{
    AlertEvent, Kind, Level, Settings, buckets, compact, head,
    rollup::{self, Obs},
    schema::{self, SchemaError},
    state::{Order, States, Walk, series_key},
};
use crate::series::{Family, Point, Series};

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "history.db";
/// Raw rows deleted per interval at most (pruning never stalls a collection).
const PRUNE_BUDGET: u64 = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source} (choose another with --data-dir)")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history database {path}: {source}")]
    Open { path: PathBuf, source: SchemaError },
    /// Something in the data directory the agent must not use: a symlink, a file or
    /// directory of another user.
    #[error("{path}: {problem}")]
    Unsafe { path: PathBuf, problem: String },
    #[error("cannot move the damaged history database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// The file is damaged (as opposed to full, read-only or busy).
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::Sqlite(e)
            | Self::Open {
                source: SchemaError::Sqlite(e),
                ..
            } => is_corrupt(e),
            _ => false,
        }
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// A damaged database that was moved aside at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub moved_to: PathBuf,
    pub reason: String,
}

/// What one write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub samples: usize,
    pub new_series: usize,
    pub rollup_rows: usize,
    pub pruned: u64,
    /// Raw samples moved into compressed chunks.
    pub compacted: u64,
}

/// A write's values, by slot (kept for the next write: a snapshot's size, allocated anew every
/// interval it would cost page faults). A series that comes twice in a snapshot keeps its last
/// value.
#[derive(Default)]
struct Scratch {
    values: Vec<f64>,
    present: Vec<bool>,
    /// Points written, duplicates included.
    points: usize,
}

impl Scratch {
    /// Empties it for a write over `slots` slots (more may be added during it).
    fn begin(&mut self, slots: usize) {
        self.present.clear();
        self.present.resize(slots, false);
        self.values.resize(slots, 0.0);
        self.points = 0;
    }

    fn set(&mut self, slot: u32, value: f64) {
        let s = slot as usize;
        if s >= self.present.len() {
            self.present.resize(s + 1, false);
            self.values.resize(s + 1, 0.0);
        }
        self.present[s] = true;
        self.values[s] = value;
        self.points += 1;
    }

    fn get(&self, slot: u32) -> Option<f64> {
        let s = slot as usize;
        self.present
            .get(s)
            .copied()
            .unwrap_or(false)
            .then(|| self.values[s])
    }

    /// The slots with a value, in slot order.
    fn iter(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.present
            .iter()
            .zip(&self.values)
            .zip(0u32..)
            .filter(|((p, _), _)| **p)
            .map(|((_, v), slot)| (slot, *v))
    }
}

pub struct Store {
    /// First, so that it is dropped (its connection closed) before `conn`: the last connection
    /// to close checkpoints the whole WAL into the file.
    checkpointer: Checkpointer,
    conn: Connection,
    path: PathBuf,
    settings: Settings,
    run: i64,
    run_start: i64,
    /// The last write's series in point order.
    order: Order,
    scratch: Scratch,
    metrics: HashSet<String>,
    /// Every series' previous sample and rollup buckets in progress.
    states: States,
    /// Start of the bucket in progress, per level.
    level_start: Vec<Option<i64>>,
    /// Raw rows move into chunks as they age (off only in tests that compare the two).
    compaction: bool,
}

/// Opens (creating if needed) a read-write connection with the agent's pragmas.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(2))?;
    // WAL: readers never block the writer; NORMAL: a crash of the agent loses nothing committed,
    // a power cut at most the last transactions, never the file.
    conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", "off")?;
    Ok(conn)
}

/// Checkpoints the WAL into the database file on a thread and connection of its own, when
/// poked after each write: a passive checkpoint, which neither waits for readers nor blocks the
/// writer. SQLite's automatic checkpoint would run inside the commit that crosses its threshold,
/// and its copy and fsync were most of the slowest writes.
struct Checkpointer {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> rusqlite::Result<Self> {
        let conn = connect(path)?;
        // A checkpoint copies pages through the pager: a small cache is enough.
        conn.pragma_update(None, "cache_size", -128)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("moonfrp-checkpoint".into())
            .spawn(move || {
                for () in rx {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "history: checkpoint did not run");
                    }
                }
            })
            .ok();
        Ok(Self {
            tx: Some(tx),
            thread,
        })
    }

    /// Asks for a checkpoint (one is enough if several are asked for while it runs).
    fn poke(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the file for queries only (the API and the `history` command).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(2))?;
    // The API keeps one of these between queries: 1 MiB of page cache, not SQLite's 2.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

fn check(conn: &mut Connection) -> Result<(), SchemaError> {
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(SchemaError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(verdict),
        )));
    }
    schema::migrate(conn)
}

/// The agent's effective user.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Makes the data directory the agent's alone: created 0700 when missing; an existing one must
/// belong to the agent's user and loses any group or world access it had (logged). A data
/// directory that others can write to lets them plant a symlink where the database goes.
fn secure_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    let unsafe_dir = |problem: String| StoreError::Unsafe {
        path: dir.to_owned(),
        problem,
    };
    let meta = fs::metadata(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_dir(
            "is not a directory; choose another --data-dir".into(),
        ));
    }
    if meta.uid() != euid() {
        return Err(unsafe_dir(format!(
            "belongs to uid {}, not to the agent's user (uid {}); `chown` it to the agent's user or choose another --data-dir",
            meta.uid(),
            euid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
            unsafe_dir(format!(
                "has mode {mode:o} and cannot be made 0700: {e}; fix its mode or choose another --data-dir"
            ))
        })?;
        tracing::warn!(dir = %dir.display(), from = format!("{mode:o}"), "the data directory was open to other users; its mode is 0700 now");
    }
    Ok(())
}

/// Refuses a database file (or its WAL, SHM, journal) that is a symlink, not a regular file,
/// or another user's: SQLite would follow or trust it.
fn check_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let problem = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Dir {
                path: path.to_owned(),
                source,
            });
        }
        Ok(m) if m.file_type().is_symlink() => "is a symbolic link".to_owned(),
        Ok(m) if !m.file_type().is_file() => "is not a regular file".to_owned(),
        Ok(m) if m.uid() != euid() => format!("belongs to uid {}, not to the agent", m.uid()),
        Ok(_) => return Ok(()),
    };
    Err(StoreError::Unsafe {
        path: path.to_owned(),
        problem: format!(
            "{problem}; the agent will not use it: move it away (history stays off until then)"
        ),
    })
}

/// Creates the data directory (0700) and an empty database file (0600) if missing, after
/// checking that nothing in it would make the agent write elsewhere.
fn prepare(dir: &Path) -> Result<PathBuf, StoreError> {
    secure_dir(dir)?;
    let path = dir.join(FILE_NAME);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        check_file(Path::new(&p))?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StoreError::Dir {
                path: path.clone(),
                source,
            });
        }
    }
    Ok(path)
}

/// Renames the database and its WAL/SHM files to `history.db.corrupt-<UTC time>…`.
pub fn move_aside(path: &Path, now_ms: i64) -> Result<PathBuf, StoreError> {
    let stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0)),
    )
    .to_string()
    .replace([':', '-'], "");
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".corrupt-{stamp}"));
    let target = PathBuf::from(target);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = target.as_os_str().to_owned();
        to.push(suffix);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::MoveAside {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(target)
}

impl Store {
    /// Opens or creates `dir/history.db`. A damaged file is moved aside (never deleted) and a
    /// fresh one created; the returned [`Recovery`] says so. `now_ms` is the run's start.
    pub fn open(
        dir: &Path,
        settings: Settings,
        now_ms: i64,
    ) -> Result<(Self, Option<Recovery>), StoreError> {
        let path = prepare(dir)?;
        let opened = connect(&path)
            .map_err(SchemaError::from)
            .and_then(|mut c| check(&mut c).map(|()| c));
        let (mut conn, recovery) = match opened {
            Ok(c) => (c, None),
            Err(SchemaError::Sqlite(e)) if is_corrupt(&e) => {
                let moved_to = move_aside(&path, now_ms)?;
                prepare(dir)?;
                (
                    connect(&path)?,
                    Some(Recovery {
                        moved_to,
                        reason: e.to_string(),
                    }),
                )
            }
            Err(source) => return Err(StoreError::Open { path, source }),
        };
        schema::migrate(&mut conn).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.execute(
            "INSERT INTO runs (started_at, version) VALUES (?1, ?2)",
            params![now_ms, env!("CARGO_PKG_VERSION")],
        )?;
        let run = conn.last_insert_rowid();
        // A write appends at the right edge of its tables and compaction reads a window in key
        // order: a quarter of SQLite's default page cache (2 MiB, the largest block of the
        // writer's memory at 1,000 tunnels) serves them as well.
        conn.pragma_update(None, "cache_size", -512)?;
        // Every statement of a write, its compaction and pruning stays prepared (about 30;
        // rusqlite keeps 16, and a statement prepared again costs SQLite's parser and planner).
        conn.set_prepared_statement_cache_capacity(40);
        // Checkpoints run on their own thread: the writer's commits never copy the WAL back
        // nor wait for its fsync.
        let checkpointer = Checkpointer::start(&path)?;
        if checkpointer.thread.is_some() {
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        } else {
            tracing::warn!("history: no checkpoint thread; SQLite checkpoints inside writes");
        }
        let mut store = Self {
            checkpointer,
            level_start: vec![None; settings.levels.len()],
            states: States::new(settings.levels.len()),
            compaction: true,
            conn,
            path,
            settings,
            run,
            run_start: now_ms,
            metrics: HashSet::new(),
            order: Order::new(foldhash::fast::RandomState::default()),
            scratch: Scratch::default(),
        };
        store.rebuild()?;
        Ok((store, recovery))
    }

    /// Keeps every sample raw (for tests that compare raw and compacted answers).
    #[cfg(test)]
    pub(crate) const fn without_compaction(&mut self) {
        self.compaction = false;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Bytes of the database and its WAL.
    pub fn disk_bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Series whose state is kept (tests).
    #[cfg(test)]
    pub(crate) const fn tracked(&self) -> usize {
        self.states.len()
    }

    /// Series in the last write.
    pub fn series_count(&self) -> usize {
        self.order.len()
    }

    /// Refills the rollup buckets in progress from the stored samples and finished finer
    /// buckets, and each series' previous sample, so that a restart loses nothing.
    fn rebuild(&mut self) -> Result<(), StoreError> {
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT ts FROM snapshots WHERE run_id <> ?1 ORDER BY ts DESC LIMIT 1",
                [self.run],
                |r| r.get(0),
            )
            .optional()?;
        let Some(last) = last else { return Ok(()) };
        let starts: Vec<i64> = self
            .settings
            .levels
            .iter()
            .map(|l| rollup::bucket_start(last, l.step_ms()))
            .collect();
        let counters = self.counter_ids()?;
        // Finished finer buckets inside each coarser bucket in progress.
        for k in 1..starts.len() {
            for j in 0..k {
                let states = &mut self.states;
                buckets::scan(
                    &self.conn,
                    self.settings.levels[j].step_s(),
                    starts[j + 1],
                    starts[j],
                    |_, id, b, _| {
                        let slot = states.slot(id, counters.contains(&id));
                        states.buckets_mut(slot)[k].merge(&b);
                    },
                )?;
            }
        }
        // Raw samples from the finest bucket in progress (the one before it gives `prev`).
        let from = starts.first().copied().unwrap_or(last);
        let prev_ts: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(ts), ?1) FROM snapshots WHERE ts < ?1",
            [from],
            |r| r.get(0),
        )?;
        let states = &mut self.states;
        let mut take = |id: i64, obs: Obs| {
            let slot = states.slot(id, counters.contains(&id));
            states.feed(slot, &obs, obs.ts >= from);
        };
        // Compressed windows first (older), then the raw head: each series in time order.
        compact::since(&self.conn, prev_ts, &mut take)?;
        let snapshots: Vec<(i64, Obs)> = self
            .conn
            .prepare(
                "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
                 JOIN runs r ON r.id = sn.run_id
                 WHERE sn.ts >= ?1 AND sn.run_id <> ?2 AND sn.id >= ?3 ORDER BY sn.ts, sn.id",
            )?
            .query_map(
                params![prev_ts, self.run, compact::head_from(&self.conn)?],
                |r| {
                    Ok((
                        r.get(0)?,
                        Obs {
                            ts: r.get(1)?,
                            value: 0.0,
                            run: r.get(2)?,
                            run_start: r.get(3)?,
                        },
                    ))
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        let reader = head::Reader::new(&self.conn)?;
        for (id, obs) in snapshots {
            reader.read(id, 0, MAX_SERIES, |series, value| {
                take(series, Obs { value, ..obs });
            })?;
        }
        for (i, s) in starts.into_iter().enumerate() {
            self.level_start[i] = Some(s);
        }
        Ok(())
    }

    fn counter_ids(&self) -> rusqlite::Result<HashSet<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT se.id FROM series se JOIN metrics m ON m.name = se.metric WHERE m.type = 'counter'",
        )?;
        stmt.query_map([], |r| r.get::<_, i64>(0))?.collect()
    }

    /// Writes one snapshot's series taken at `ts_ms` in one transaction (every point: samples,
    /// and a histogram's `_sum` and `_count`), flushes rollup buckets that ended, then prunes a
    /// bounded batch of expired rows.
    pub fn write(&mut self, ts_ms: i64, series: &Series) -> Result<WriteStats, StoreError> {
        let mut stats = WriteStats::default();
        // Slots from here on are made by this write (forgotten if it fails).
        let slots_before = self.states.len();
        let empty = self.order.empty_like();
        let last = std::mem::replace(&mut self.order, empty);
        // Written only when the points differ from the last write's (rare: a tunnel added, a
        // label value changed); not kept, to hold one copy of the keys.
        let mut next = last.empty_like();
        let mut cur = std::mem::take(&mut self.scratch);
        cur.begin(self.states.len());
        let mut new_metrics: Vec<String> = Vec::new();
        let flushing: Vec<bool> = self
            .settings
            .levels
            .iter()
            .zip(&self.level_start)
            .map(|(l, s)| s.is_some_and(|s| s != rollup::bucket_start(ts_ms, l.step_ms())))
            .collect();
        let mut key = String::with_capacity(256);
        let mut replaced = false;
        let result = (|| -> Result<(), StoreError> {
            let tx = self.conn.transaction()?;
            tx.prepare_cached("INSERT INTO snapshots (ts, run_id) VALUES (?1, ?2)")?
                .execute(params![ts_ms, self.run])?;
            let snapshot = tx.last_insert_rowid();
            {
                let mut walk = Walk::new(&last, &mut next);
                for (family, p) in series.points() {
                    if let Some(slot) = walk.same_as_last(&p) {
                        walk.keep();
                        cur.set(slot, p.value);
                        continue;
                    }
                    series_key(&mut key, &p);
                    let slot = if let Some(slot) = last.find(&key) {
                        slot
                    } else {
                        if !self.metrics.contains(p.name) {
                            upsert_metric(&tx, &p, family)?;
                            new_metrics.push(p.name.to_owned());
                        }
                        stats.new_series += 1;
                        self.states.slot(series_id(&tx, &p)?, p.counter)
                    };
                    walk.put(slot, &key);
                    cur.set(slot, p.value);
                }
                replaced = walk.finish();
            }
            // In id order (head blocks and rollup rows append so).
            let tracked = &self.states;
            head::write(
                &tx,
                snapshot,
                tracked
                    .by_id()
                    .iter()
                    .filter_map(|&slot| cur.get(slot).map(|v| (tracked.id(slot), v))),
            )?;
            stats.rollup_rows += flush_levels(
                &tx,
                &self.settings,
                &self.level_start,
                &self.states,
                &flushing,
            )?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            // The last order holds only series committed before; the new slots may hold ids
            // the rolled-back transaction gave out.
            self.order = last;
            self.states.truncate(slots_before);
            return Err(e);
        }
        self.order = if replaced {
            next.finish();
            next
        } else {
            last
        };
        self.metrics.extend(new_metrics);
        stats.samples = cur.points;
        self.after_commit(ts_ms, &cur, &flushing);
        self.scratch = cur;
        stats.pruned = self.prune(ts_ms)?;
        self.checkpointer.poke();
        // A little more than one snapshot's rows per interval: a window (60 snapshots) is done in
        // about 48 intervals, before the next one is due, and no interval carries much of it.
        let budget = (self.states.len() as u64 * 5 / 4).max(1_000);
        // Not while a rollup bucket is written: compaction has slack (a window takes about 48
        // of its 60 intervals), a flush interval has none to spare.
        if self.compaction && !flushing.contains(&true) {
            stats.compacted = compact::step(&mut self.conn, budget)?;
        }
        // An earlier version's rollup rows, a bucket at a time.
        buckets::convert(&mut self.conn, budget)?;
        Ok(stats)
    }

    /// Feeds the committed points to their series' buckets, after emptying the buckets that
    /// were just written. The states are visited in slot order.
    fn after_commit(&mut self, ts_ms: i64, points: &Scratch, flushed: &[bool]) {
        for (li, level) in self.settings.levels.iter().enumerate() {
            if flushed[li] || self.level_start[li].is_none() {
                self.states.clear_level(li);
                self.level_start[li] = Some(rollup::bucket_start(ts_ms, level.step_ms()));
            }
        }
        let finest_flushed = flushed.first() == Some(&true);
        if finest_flushed {
            // A series not seen for a whole raw retention (a removed tunnel) starts anew if
            // it comes back, and is forgotten once its buckets are written.
            self.states
                .forget_before(ts_ms - self.settings.retention_ms());
        }
        let obs = Obs {
            ts: ts_ms,
            value: 0.0,
            run: self.run,
            run_start: self.run_start,
        };
        for (slot, value) in points.iter() {
            self.states.feed(slot, &Obs { value, ..obs }, true);
        }
        if finest_flushed && let Some(remap) = self.states.compact() {
            self.order.remap(&remap);
        }
    }

    /// Appends alert notifications to the alert log (kept as long as the coarsest rollup).
    pub fn record_alerts(&mut self, ts_ms: i64, alerts: &[AlertEvent]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alert_events (ts, alertname, event, severity, value, labels, summary, active_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for a in alerts {
                stmt.execute(params![
                    ts_ms,
                    a.alertname,
                    a.event,
                    a.severity,
                    a.value,
                    serde_json::to_string(&a.labels).unwrap_or_default(),
                    a.summary,
                    a.active_since,
                ])?;
            }
        }
        let keep = self
            .settings
            .levels
            .iter()
            .map(Level::keep_ms)
            .max()
            .unwrap_or(0)
            .max(self.settings.retention_ms());
        tx.execute("DELETE FROM alert_events WHERE ts < ?1", [ts_ms - keep])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes expired raw snapshots (a bounded number of rows), expired windows of chunks and
    /// expired rollup buckets.
    fn prune(&mut self, now_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now_ms - self.settings.retention_ms();
        let per_snapshot = self.states.len().max(1) as u64;
        let limit = (PRUNE_BUDGET / per_snapshot).max(1);
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt =
                tx.prepare_cached("SELECT id FROM snapshots WHERE ts < ?1 ORDER BY ts LIMIT ?2")?;
            stmt.query_map(
                params![cutoff, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<_>>()?
        };
        let mut pruned = 0;
        for id in &ids {
            pruned += head::delete_snapshot(&tx, *id)?;
            tx.prepare_cached("DELETE FROM snapshots WHERE id = ?1")?
                .execute([id])?;
        }
        pruned += compact::prune(&tx, cutoff, 4)?;
        for level in &self.settings.levels {
            pruned += buckets::prune(&tx, level.step_s(), now_ms - level.keep_ms(), 4)?;
        }
        tx.commit()?;
        Ok(pruned)
    }
}

/// Series ids fit in the low 24 bits of a sample's key.
pub const MAX_SERIES: i64 = (1 << 24) - 1;

/// The rowid of a sample: snapshot in the high bits, series in the low 24.
pub const fn sample_key(snapshot: i64, series: i64) -> i64 {
    snapshot << 24 | series
}

/// Writes the rollup buckets of every level whose bucket ended (`flushing`), each level's in
/// series id order so that a bucket's blocks append; the number of rows written.
fn flush_levels(
    tx: &Transaction<'_>,
    settings: &Settings,
    level_start: &[Option<i64>],
    states: &States,
    flushing: &[bool],
) -> rusqlite::Result<usize> {
    if !flushing.contains(&true) {
        return Ok(0);
    }
    let slots = states.by_id();
    let mut rows = 0;
    for (li, level) in settings.levels.iter().enumerate() {
        if !flushing[li] {
            continue;
        }
        let start = level_start[li].expect("flushing implies a start");
        rows += buckets::write(
            tx,
            level.step_s(),
            start,
            slots.iter().filter_map(|&slot| {
                let (id, counter, b) = states.get(slot);
                let b = &b[li];
                (b.samples > 0).then_some((id, b, counter))
            }),
        )?;
    }
    Ok(rows)
}

fn upsert_metric(tx: &Transaction<'_>, p: &Point<'_>, family: &Family) -> rusqlite::Result<()> {
    let unit = match family.unit {
        Some(u) if !p.name.ends_with("_count") => u.as_str(),
        _ => "",
    };
    let kind = if p.counter {
        Kind::Counter
    } else {
        Kind::Gauge
    };
    tx.prepare_cached(
        "INSERT INTO metrics (name, type, unit, help) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET type = excluded.type, unit = excluded.unit, help = excluded.help",
    )?
    .execute(params![p.name, kind.as_str(), unit, family.help])?;
    Ok(())
}

/// The series' row: its metric and its labels as a JSON object with sorted keys (the key
/// history has always used, so a database of an earlier version goes on with its series).
fn series_id(tx: &Transaction<'_>, p: &Point<'_>) -> rusqlite::Result<i64> {
    let sorted: std::collections::BTreeMap<&str, &str> =
        p.labels.iter().map(|(k, v)| (*k, &**v)).collect();
    let labels = serde_json::to_string(&sorted).expect("a map of strings always serializes");
    tx.prepare_cached(
        "INSERT INTO series (metric, labels) VALUES (?1, ?2)
         ON CONFLICT (metric, labels) DO UPDATE SET metric = excluded.metric RETURNING id",
    )?
    .query_row(params![p.name, labels], |r| r.get(0))
    .and_then(|id: i64| {
        if id > MAX_SERIES {
            Err(rusqlite::Error::ToSqlConversionFailure(
                format!("more than {MAX_SERIES} series were ever stored; move the history database aside to start a new one").into(),
            ))
        } else {
            Ok(id)
        }
    })
}
