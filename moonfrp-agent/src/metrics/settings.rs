//! `[metrics]`: which optional families `/metrics` (and so history) carries, and the buckets of
//! the connection-duration histogram, like node_exporter's collector switches. The default is
//! lean: 24 series per TCP tunnel, 9 per UDP tunnel.
use std::time::Duration;

use moonfrp_common::DURATION_BUCKETS;
use serde::Deserialize;

use crate::untrusted::shown;

/// The families and buckets exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `moonfrp_tunnel_connection_duration_seconds`.
    pub connection_duration: bool,
    /// Its upper bounds, as kernel buckets: bucket `b` ends at 2^b ms (+Inf is always added).
    pub duration_buckets: Vec<usize>,
    /// `moonfrp_tunnel_{receive,transmit}_packets_total`.
    pub packets: bool,
    /// `moonfrp_tunnel_{receive,transmit}_payload_bytes_total`.
    pub payload: bool,
}

/// Default bounds: ≈ 1 s, 1 min, 17 min, 4.7 h (2^10, 2^16, 2^20, 2^24 ms).
pub const DEFAULT_BUCKETS: [usize; 4] = [10, 16, 20, 24];
/// The last kernel bucket also holds everything longer, so the highest finite bound is the one
/// before it (2^26 ms ≈ 18.6 h).
const MAX_BUCKET: usize = DURATION_BUCKETS - 2;

impl Default for Settings {
    fn default() -> Self {
        Self {
            connection_duration: true,
            duration_buckets: DEFAULT_BUCKETS.to_vec(),
            packets: true,
            payload: true,
        }
    }
}

impl Settings {
    /// The histogram's finite upper bounds, in seconds.
    pub fn bounds_seconds(&self) -> Vec<f64> {
        self.duration_buckets
            .iter()
            .map(|b| (1u64 << b) as f64 / 1000.0)
            .collect()
    }
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    connection_duration: Option<bool>,
    /// Durations (`1s`, `10m`), each rounded up to the kernel bucket that holds it.
    duration_buckets: Option<Vec<String>>,
    packets: Option<bool>,
    payload: Option<bool>,
}

/// The kernel bucket whose upper bound (2^b ms) is the first at or above `d`.
fn bucket_of(d: Duration) -> usize {
    let ms = d.as_millis().max(1);
    (0..=MAX_BUCKET)
        .find(|b| (1u128 << b) >= ms)
        .unwrap_or(MAX_BUCKET + 1)
}

impl SettingsFile {
    /// Checks the bounds (1 to 16, increasing once rounded to kernel buckets, at most ≈ 18.6 h);
    /// errors name the key.
    pub fn validate(self) -> Result<Settings, String> {
        let d = Settings::default();
        let mut buckets = d.duration_buckets.clone();
        if let Some(list) = self.duration_buckets {
            if list.is_empty() || list.len() > 16 {
                return Err(format!(
                    "key `metrics.duration_buckets`: {} bounds; give 1 to 16 (+Inf is added)",
                    list.len()
                ));
            }
            buckets = Vec::with_capacity(list.len());
            for raw in &list {
                let dur = humantime::parse_duration(raw).map_err(|e| {
                    format!(
                        "key `metrics.duration_buckets`: `{}` is not a duration ({e}); use e.g. 1s, 1m, 4h",
                        shown(raw)
                    )
                })?;
                let b = bucket_of(dur);
                if b > MAX_BUCKET {
                    return Err(format!(
                        "key `metrics.duration_buckets`: `{}` is longer than the longest bound, {} s",
                        shown(raw),
                        (1u64 << MAX_BUCKET) as f64 / 1000.0
                    ));
                }
                if buckets.last().is_some_and(|last| *last >= b) {
                    return Err(format!(
                        "key `metrics.duration_buckets`: `{}` falls in the same or an earlier bucket than the bound before it (bounds are powers of two milliseconds: {} s); give increasing bounds",
                        shown(raw),
                        (1u64 << b) as f64 / 1000.0
                    ));
                }
                buckets.push(b);
            }
        }
        Ok(Settings {
            connection_duration: self.connection_duration.unwrap_or(d.connection_duration),
            duration_buckets: buckets,
            packets: self.packets.unwrap_or(d.packets),
            payload: self.payload.unwrap_or(d.payload),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_up_to_kernel_buckets() {
        let s = SettingsFile {
            duration_buckets: Some(vec!["1s".into(), "1m".into(), "15m".into(), "4h".into()]),
            ..SettingsFile::default()
        }
        .validate()
        .unwrap();
        assert_eq!(s.duration_buckets, DEFAULT_BUCKETS);
        assert_eq!(s.bounds_seconds(), [1.024, 65.536, 1048.576, 16777.216]);
        let bad = |v: &[&str]| {
            SettingsFile {
                duration_buckets: Some(v.iter().map(ToString::to_string).collect()),
                ..SettingsFile::default()
            }
            .validate()
            .unwrap_err()
        };
        assert!(bad(&["1s", "1.01s"]).contains("same or an earlier bucket"));
        assert!(bad(&["2d"]).contains("longer than the longest bound"));
        assert!(bad(&[]).contains("1 to 16"));
        assert!(bad(&["soon"]).contains("not a duration"));
    }
}
