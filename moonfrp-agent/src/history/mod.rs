//! History: every series of every snapshot in an embedded SQLite database, with rollups, a query
//! API and a CSV export. The writer runs on its own thread so that a slow or full disk never
//! delays a collection; readers open their own read-only connections (WAL lets them run beside
//! the writer).
pub mod block;
pub mod buckets;
pub mod chunk;
pub mod compact;
pub mod config;
pub mod head;
pub mod query;
pub mod rollup;
pub mod schema;
mod state;
pub mod store;
pub mod writer;

use std::{path::PathBuf, time::Duration};

pub use store::{FILE_NAME, Store, StoreError};

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/moonfrp";
/// Default raw retention.
pub const DEFAULT_RETENTION: Duration = Duration::from_hours(24);
/// Most points one query may return per series (as Prometheus' range queries).
pub const DEFAULT_MAX_POINTS: usize = 11_000;

/// One rollup level: buckets of `step`, kept for `keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub step: Duration,
    pub keep: Duration,
}

impl Level {
    #[allow(clippy::cast_possible_wrap)]
    pub const fn step_ms(&self) -> i64 {
        self.step.as_millis() as i64
    }

    #[allow(clippy::cast_possible_wrap)]
    pub const fn step_s(&self) -> i64 {
        self.step.as_secs() as i64
    }

    #[allow(clippy::cast_possible_wrap)]
    pub const fn keep_ms(&self) -> i64 {
        self.keep.as_millis() as i64
    }

    /// `1h`, `1d`: the name used in API answers.
    pub fn name(&self) -> String {
        humantime::format_duration(self.step)
            .to_string()
            .replace(' ', "")
    }
}

/// How history is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub retention: Duration,
    /// Finest first; each step a multiple of the previous one.
    pub levels: Vec<Level>,
    pub max_points: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
            levels: vec![
                Level {
                    step: Duration::from_hours(1),
                    keep: Duration::from_hours(7 * 24),
                },
                Level {
                    step: Duration::from_hours(24),
                    keep: Duration::from_hours(90 * 24),
                },
            ],
            max_points: DEFAULT_MAX_POINTS,
        }
    }
}

impl Settings {
    #[allow(clippy::cast_possible_wrap)]
    pub const fn retention_ms(&self) -> i64 {
        self.retention.as_millis() as i64
    }

    /// Checks the rollup levels fit together; the message names the level.
    pub fn validate(&self) -> Result<(), String> {
        if self.retention > MAX_RETENTION {
            return Err(format!(
                "retention {} is longer than {}; keep older data in rollups",
                humantime::format_duration(self.retention),
                humantime::format_duration(MAX_RETENTION)
            ));
        }
        let mut finer: Option<&Level> = None;
        for (i, l) in self.levels.iter().enumerate() {
            if l.step < Duration::from_mins(1) || l.keep > MAX_KEEP {
                return Err(format!(
                    "rollups[{i}]: step must be at least 1m and keep at most {} (step {}, keep {})",
                    humantime::format_duration(MAX_KEEP),
                    humantime::format_duration(l.step),
                    humantime::format_duration(l.keep)
                ));
            }
            let whole_seconds = l.step.subsec_nanos() == 0 && l.step.as_secs() > 0;
            if !whole_seconds {
                return Err(format!(
                    "rollups[{i}]: step {:?} must be a whole number of seconds",
                    l.step
                ));
            }
            if l.keep < l.step {
                return Err(format!(
                    "rollups[{i}]: keep ({}) is shorter than step ({}); keep at least one bucket",
                    humantime::format_duration(l.keep),
                    humantime::format_duration(l.step)
                ));
            }
            match finer {
                None if l.step > self.retention => {
                    return Err(format!(
                        "rollups[{i}]: the first step ({}) is longer than the raw retention ({}); raise retention or shorten the step",
                        humantime::format_duration(l.step),
                        humantime::format_duration(self.retention)
                    ));
                }
                Some(f) if l.step <= f.step || l.step.as_secs() % f.step.as_secs() != 0 => {
                    return Err(format!(
                        "rollups[{i}]: step {} must be a multiple of the previous level's step {}",
                        humantime::format_duration(l.step),
                        humantime::format_duration(f.step)
                    ));
                }
                _ => {}
            }
            finer = Some(l);
        }
        Ok(())
    }
}

/// One alert notification, as the alert log (`alert_events`) keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub alertname: String,
    /// `firing`, `repeat`, `severity_changed` or `resolved`.
    pub event: &'static str,
    pub severity: &'static str,
    pub value: f64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub summary: String,
    /// Unix ms the condition started to hold.
    pub active_since: i64,
}

/// Counter or gauge, as history stores a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cumulative: rates and increases apply, resets are detected.
    Counter,
    Gauge,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "counter" {
            Self::Counter
        } else {
            Self::Gauge
        }
    }
}

/// Longest raw retention accepted.
pub const MAX_RETENTION: Duration = Duration::from_hours(400 * 24);
/// Longest a rollup level may be kept.
pub const MAX_KEEP: Duration = Duration::from_hours(3650 * 24);

/// `[history]` plus the data directory, as the agent runs with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    pub enabled: bool,
    pub data_dir: PathBuf,
    pub settings: Settings,
}

impl HistoryConfig {
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(FILE_NAME)
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            settings: Settings::default(),
        }
    }
}

#[cfg(test)]
mod tests;
