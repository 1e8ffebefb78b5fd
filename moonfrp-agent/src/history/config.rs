//! `[history]`: whether history is kept, for how long, in which rollups, and where.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{HistoryConfig, Level, Settings};
use crate::untrusted::{in_range, shown};

/// `[history]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    enabled: Option<bool>,
    retention: Option<String>,
    rollups: Option<Vec<RollupFile>>,
    max_points: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollupFile {
    step: String,
    keep: String,
}

impl HistoryFile {
    /// Validates the section, with the data directory it will live in; errors name the key.
    pub fn validate(self, data_dir: PathBuf) -> Result<HistoryConfig, String> {
        let duration = |k: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| {
                format!(
                    "key `history.{k}`: `{}` is not a duration ({e}); use e.g. 24h or 7d",
                    shown(v)
                )
            })
        };
        let mut settings = Settings::default();
        if let Some(r) = self.retention {
            settings.retention = duration("retention", &r)?;
            if settings.retention < Duration::from_mins(1) {
                return Err(format!(
                    "key `history.retention`: `{}` is shorter than 1m",
                    shown(&r)
                ));
            }
        }
        if let Some(levels) = self.rollups {
            settings.levels = levels
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    Ok(Level {
                        step: duration(&format!("rollups[{i}].step"), &l.step)?,
                        keep: duration(&format!("rollups[{i}].keep"), &l.keep)?,
                    })
                })
                .collect::<Result<_, String>>()?;
        }
        if let Some(m) = self.max_points {
            settings.max_points = in_range("history.max_points", m, 2, 1_000_000)?;
        }
        settings
            .validate()
            .map_err(|p| format!("section `history`: {p}"))?;
        Ok(HistoryConfig {
            enabled: self.enabled.unwrap_or(true),
            data_dir,
            settings,
        })
    }
}
