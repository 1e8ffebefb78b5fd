//! The history writer thread: takes each snapshot's series from the agent loop through a
//! one-slot queue (a write still running when the next snapshot comes means that snapshot is
//! skipped and counted, never that the collection waits) and writes them.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Instant,
};

use tracing::{error, info, warn};

use super::{AlertEvent, HistoryConfig, Store, StoreError};
use crate::series::Series;

/// What the writer has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub up: AtomicBool,
    pub writes_ok: AtomicU64,
    pub writes_failed: AtomicU64,
    pub skipped: AtomicU64,
    /// Damaged databases moved aside.
    pub recoveries: AtomicU64,
    pub pruned_rows: AtomicU64,
    /// Raw samples moved into compressed chunks.
    pub compacted_samples: AtomicU64,
    /// `f64` bits.
    pub last_write_seconds: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub series: AtomicU64,
}

impl Stats {
    pub fn last_write_seconds(&self) -> f64 {
        f64::from_bits(self.last_write_seconds.load(Relaxed))
    }
}

/// Work for the writer thread.
enum Job {
    /// One snapshot's series, taken at Unix ms.
    Snapshot(i64, Arc<Series>),
    Alerts(i64, Vec<AlertEvent>),
}

/// Handle to the writer thread; dropping it lets the thread finish its queue and exit.
pub struct Writer {
    tx: Option<SyncSender<Job>>,
    /// A snapshot is queued and not yet being written.
    snapshot_queued: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Opens the database (moving a damaged one aside) and starts the thread.
    pub fn start(cfg: &HistoryConfig, now_ms: i64) -> Result<Self, StoreError> {
        let stats = Arc::new(Stats::default());
        let (store, recovery) = Store::open(&cfg.data_dir, cfg.settings.clone(), now_ms)?;
        if let Some(r) = recovery {
            error!(moved_to = %r.moved_to.display(), reason = %r.reason, "the history database was damaged: moved it aside and started a new one");
            stats.recoveries.fetch_add(1, Relaxed);
        }
        info!(path = %store.path().display(), retention = %humantime::format_duration(cfg.settings.retention), "keeping history");
        stats.up.store(true, Relaxed);
        stats.disk_bytes.store(store.disk_bytes(), Relaxed);
        let (tx, rx) = mpsc::sync_channel::<Job>(16);
        let snapshot_queued = Arc::new(AtomicBool::new(false));
        let queued = snapshot_queued.clone();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("moonfrp-history".into())
            .spawn(move || {
                let mut w = Worker {
                    store,
                    stats: thread_stats,
                    last_error: None,
                };
                for job in rx {
                    match job {
                        Job::Snapshot(ts, text) => {
                            queued.store(false, Relaxed);
                            w.write(ts, &text);
                        }
                        Job::Alerts(ts, alerts) => {
                            if let Err(e) = w.store.record_alerts(ts, &alerts) {
                                warn!(error = %e, "history: cannot log alert notifications");
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Dir {
                path: cfg.data_dir.clone(),
                source: e,
            })?;
        Ok(Self {
            tx: Some(tx),
            snapshot_queued,
            stats,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Queues a snapshot's series (taken at Unix ms `ts`); if the previous snapshot is still
    /// waiting for the writer, this one is skipped and counted.
    pub fn submit(&self, ts: i64, series: Arc<Series>) {
        if self.snapshot_queued.swap(true, Relaxed) {
            self.stats.skipped.fetch_add(1, Relaxed);
            warn!("history: the previous write is still running; this interval is not stored");
            return;
        }
        if !self.send(Job::Snapshot(ts, series)) {
            self.snapshot_queued.store(false, Relaxed);
            self.stats.skipped.fetch_add(1, Relaxed);
        }
    }

    /// Queues alert notifications for the alert log.
    pub fn record_alerts(&self, ts: i64, alerts: Vec<AlertEvent>) {
        if !self.send(Job::Alerts(ts, alerts)) {
            warn!("history: the writer is behind; alert notifications not logged");
        }
    }

    fn send(&self, job: Job) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.stats.up.store(false, Relaxed);
                false
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    store: Store,
    stats: Arc<Stats>,
    /// Logged once until the next success.
    last_error: Option<String>,
}

impl Worker {
    fn write(&mut self, ts: i64, series: &Series) {
        let started = Instant::now();
        match self.store.write(ts, series) {
            Ok(s) => {
                self.stats.writes_ok.fetch_add(1, Relaxed);
                self.stats.pruned_rows.fetch_add(s.pruned, Relaxed);
                self.stats.compacted_samples.fetch_add(s.compacted, Relaxed);
                self.stats.up.store(true, Relaxed);
                if self.last_error.take().is_some() {
                    info!("history writes work again");
                }
            }
            Err(e) => {
                self.stats.writes_failed.fetch_add(1, Relaxed);
                self.stats.up.store(false, Relaxed);
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    error!(error = %msg, "history: cannot store this interval (collection and /metrics go on)");
                    self.last_error = Some(msg);
                }
                if e.is_corruption() {
                    self.recover(ts);
                }
            }
        }
        self.stats
            .last_write_seconds
            .store(started.elapsed().as_secs_f64().to_bits(), Relaxed);
        self.stats
            .disk_bytes
            .store(self.store.disk_bytes(), Relaxed);
        self.stats
            .series
            .store(self.store.series_count() as u64, Relaxed);
    }

    /// The file went bad while running: move it aside and carry on with a new one.
    fn recover(&mut self, now_ms: i64) {
        let dir = self
            .store
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let settings = self.store.settings().clone();
        match super::store::move_aside(self.store.path(), now_ms)
            .and_then(|moved| Store::open(&dir, settings, now_ms).map(|s| (moved, s)))
        {
            Ok((moved, (store, _))) => {
                error!(moved_to = %moved.display(), "the history database was damaged: moved it aside and started a new one");
                self.stats.recoveries.fetch_add(1, Relaxed);
                self.store = store;
            }
            Err(e) => error!(error = %e, "history: cannot replace the damaged database"),
        }
    }
}
