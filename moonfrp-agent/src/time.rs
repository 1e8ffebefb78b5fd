//! Time as the agent writes it: Unix milliseconds inside, Unix seconds and RFC 3339 outside.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds (0 before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[allow(clippy::cast_precision_loss)]
pub fn ms_to_s(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// RFC 3339 (UTC, seconds) of Unix seconds; a time RFC 3339 cannot write (before 1970, after
/// 9999, not a number) is shown as the number itself.
pub fn rfc3339(ts: f64) -> String {
    /// 9999-12-31T23:59:59Z.
    const LAST: f64 = 253_402_300_799.0;
    if !(0.0..=LAST).contains(&ts) {
        return format!("@{ts}");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let t = UNIX_EPOCH + Duration::from_millis((ts * 1000.0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_no_calendar_can_write_are_numbers() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1e12), "@1000000000000");
        assert_eq!(rfc3339(f64::NAN), "@NaN");
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(ms_to_s(1500), 1.5);
    }
}
