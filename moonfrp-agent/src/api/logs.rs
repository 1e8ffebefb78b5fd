//! `/api/v1/logs`: the agent's recent log records from its in-memory ring
//! ([`crate::logging::ring`]), filtered by level and time; `after=SEQ&wait=30s` long-polls for
//! the next records (what `moonfrp-agent logs -f` does).
use std::time::{Duration, SystemTime};

use super::{Answer, query_error, success};
use crate::{
    history::query::{QueryError, bad, parse_since, parse_time},
    logging::ring::{self, Ring},
    time::{ms_to_s, unix_ms},
    untrusted::shown,
};

/// Most records one answer carries, and the default.
const LIMIT: usize = ring::MAX_RECORDS;
const DEFAULT_LIMIT: usize = 100;
/// Longest a follower may wait for the next record.
pub const MAX_WAIT: Duration = Duration::from_mins(1);

/// A parsed `/api/v1/logs` query.
#[derive(Debug, PartialEq)]
pub struct LogQuery {
    /// Most verbose level answered ([`ring::severity`]).
    pub level: u8,
    /// Unix seconds.
    pub since: f64,
    pub after: u64,
    pub limit: usize,
    pub wait: Duration,
}

impl LogQuery {
    pub fn parse(query: &str, now_ms: i64) -> Result<Self, QueryError> {
        let mut q = Self {
            level: 5,
            since: 0.0,
            after: 0,
            limit: DEFAULT_LIMIT,
            wait: Duration::ZERO,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "level" => {
                    q.level = ring::severity(&v.to_ascii_lowercase()).ok_or_else(|| {
                        bad(
                            "level",
                            format!("`{}`: use error, warn, info, debug or trace", shown(&v)),
                        )
                    })?;
                }
                "since" => q.since = ms_to_s(parse_since(&v, now_ms)?),
                "from" => q.since = ms_to_s(parse_time(&v, now_ms).map_err(|p| bad("from", p))?),
                "after" => {
                    q.after = v.parse().map_err(|_| {
                        bad(
                            "after",
                            format!("`{}`: use a record's seq (0 for all)", shown(&v)),
                        )
                    })?;
                }
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad("limit", format!("`{}`: use 1 to {LIMIT}", shown(&v)))
                        })?;
                }
                "wait" => {
                    q.wait = crate::untrusted::duration_in(&v, Duration::ZERO, MAX_WAIT)
                        .map_err(|p| bad("wait", p))?;
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown parameter; use level, since, from, after, limit or wait",
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// `GET /api/v1/logs`: waits up to `wait` for a record after `after` (none waits not at all),
/// then answers what matches.
pub async fn logs(ring: &Ring, query: &str) -> Answer {
    let q = match LogQuery::parse(query, unix_ms(SystemTime::now())) {
        Ok(q) => q,
        Err(e) => return query_error(&e),
    };
    let started = tokio::time::Instant::now();
    loop {
        let page = ring.read(q.after, q.level, q.since, q.limit);
        let left = q.wait.saturating_sub(started.elapsed());
        // A follower waits for a record it will be shown, not for any record: a debug line
        // does not end a `--level warn` wait.
        if !page.records.is_empty() || left.is_zero() {
            return success(&page);
        }
        ring.wait_after(page.last, left).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parameters_and_names_a_bad_one() {
        let q = LogQuery::parse("level=WARN&after=7&limit=5&wait=30s&since=1m", 120_000).unwrap();
        assert_eq!(
            q,
            LogQuery {
                level: 2,
                since: 60.0,
                after: 7,
                limit: 5,
                wait: Duration::from_secs(30)
            }
        );
        for (query, param) in [
            ("level=loud", "level"),
            ("limit=0", "limit"),
            ("limit=999999", "limit"),
            ("wait=2h", "wait"),
            ("after=-1", "after"),
            ("colour=red", "colour"),
        ] {
            let e = LogQuery::parse(query, 0).unwrap_err().to_string();
            assert!(e.contains(param), "{query}: {e}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_follower_is_answered_when_a_record_it_wants_arrives() {
        let ring = std::sync::Arc::new(Ring::new(100, 1 << 20));
        let r2 = ring.clone();
        let push = |level: &str| ring::Record {
            seq: 0,
            time: 1.0,
            level: level.into(),
            target: "t".into(),
            message: level.into(),
            fields: std::collections::BTreeMap::new(),
        };
        let (d, w) = (push("debug"), push("warn"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r2.push(d);
            tokio::time::sleep(Duration::from_millis(100)).await;
            r2.push(w);
        });
        let a = logs(&ring, "level=warn&wait=10s").await;
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["data"]["records"][0]["message"], "warn", "{v}");
        assert_eq!(v["data"]["records"][0]["seq"], 2);
        // Nothing new: the wait ends empty at its end.
        let started = std::time::Instant::now();
        let a = logs(&ring, "after=2&wait=300ms").await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["data"]["records"], serde_json::json!([]), "{v}");
        assert_eq!(v["data"]["last"], 2);
    }
}
