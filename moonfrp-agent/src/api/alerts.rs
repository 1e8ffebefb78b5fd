//! `/api/v1/alerts`: pending and firing alerts; `/api/v1/alerts/history`: the alert log;
//! `/api/v1/alerts/test`: a test notification.
use std::time::SystemTime;

use serde_json::json;

use super::{Answer, HistoryApi, connect, query_error, success};
use crate::{
    history::query::{QueryError, bad, parse_since, parse_time},
    time::{ms_to_s, unix_ms},
    untrusted::shown,
};

/// `GET /api/v1/alerts`: pending and firing alerts as of the latest evaluation.
pub fn alerts(shared: Option<&crate::alerts::Shared>) -> Answer {
    let active = shared
        .map(crate::alerts::Shared::active)
        .unwrap_or_default();
    success(&json!({
        "enabled": shared.is_some(),
        "alerts": active.iter().map(|a| json!({
            "alertname": a.alertname,
            "state": a.state,
            "severity": a.severity,
            "value": a.value,
            "threshold": a.threshold,
            "since": ms_to_s(a.active_since),
            "labels": a.labels,
            "annotations": a.annotations,
        })).collect::<Vec<_>>(),
    }))
}

/// `POST /api/v1/alerts/test[?channel=NAME]`: a clearly marked test notification through one
/// channel or all; 200 when every channel took it, 502 when one did not (the answers say which
/// and why), 404 for an unknown channel, 409 without channels.
pub async fn test(shared: Option<&crate::alerts::Shared>, query: &str) -> Answer {
    let mut only = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "channel" {
            only = Some(v.into_owned());
        } else {
            return super::error(
                400,
                &format!("`{}`: unknown parameter; use channel", shown(&k)),
            );
        }
    }
    let Some(shared) = shared else {
        return super::error(
            409,
            "alerts are disabled in the configuration ([alerts] enabled = false)",
        );
    };
    match crate::alerts::send_tests(&shared.channels, only.as_deref(), &shared.generator).await {
        Ok(results) => {
            let status = if results.iter().all(|r| r.ok) {
                200
            } else {
                502
            };
            super::json_answer(
                status,
                &json!({
                    "status": if status == 200 { "success" } else { "error" },
                    "data": { "results": results },
                }),
            )
        }
        Err(e @ crate::alerts::TestError::NoChannels) => super::error(409, &e.to_string()),
        Err(e) => super::error(404, &e.to_string()),
    }
}

/// Most events one answer carries, and the default.
const HISTORY_LIMIT: usize = 1_000;
const HISTORY_DEFAULT: usize = 100;

/// A parsed `/api/v1/alerts/history` query.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct EventQuery {
    alertname: Option<String>,
    tunnel: Option<String>,
    event: Option<String>,
    severity: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    limit: usize,
}

impl EventQuery {
    pub(crate) fn parse(query: &str, now_ms: i64) -> Result<Self, QueryError> {
        let mut q = Self {
            limit: HISTORY_DEFAULT,
            ..Self::default()
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "alertname" => q.alertname = Some(v.into_owned()),
                "tunnel" => q.tunnel = Some(v.into_owned()),
                "event" => {
                    if !EVENTS.contains(&v.as_ref()) {
                        return Err(bad(
                            "event",
                            format!("`{}`: use one of {}", shown(&v), EVENTS.join(", ")),
                        ));
                    }
                    q.event = Some(v.into_owned());
                }
                "severity" => q.severity = Some(v.into_owned()),
                "from" => q.from = Some(parse_time(&v, now_ms).map_err(|p| bad("from", p))?),
                "to" => q.to = Some(parse_time(&v, now_ms).map_err(|p| bad("to", p))?),
                "since" => q.from = Some(parse_since(&v, now_ms)?),
                "limit" => {
                    q.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=HISTORY_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(
                                "limit",
                                format!("`{}`: use 1 to {HISTORY_LIMIT}", shown(&v)),
                            )
                        })?;
                }
                other => {
                    return Err(bad(
                        other,
                        "unknown parameter; use alertname, tunnel, event, severity, from, to, since or limit",
                    ));
                }
            }
        }
        Ok(q)
    }
}

/// One event of the alert log, as `/api/v1/alerts/history` answers it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertEventRow {
    /// Unix seconds.
    pub time: f64,
    pub alertname: String,
    /// `firing`, `repeat`, `severity_changed` or `resolved`.
    pub event: String,
    pub severity: String,
    pub value: Option<f64>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub summary: String,
    /// Unix seconds.
    pub active_since: f64,
}

/// The answer of `/api/v1/alerts/history`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertLog {
    pub limit: usize,
    /// Newest first.
    pub events: Vec<AlertEventRow>,
}

/// What the alert log records.
const EVENTS: [&str; 4] = ["firing", "repeat", "severity_changed", "resolved"];

/// `GET /api/v1/alerts/history` (blocking): the alert log (every notification the rules made,
/// kept as long as the coarsest rollup), newest first, filtered by alert name, tunnel, event,
/// severity and time.
pub fn history(h: Option<&HistoryApi>, query: &str) -> Answer {
    let now = unix_ms(SystemTime::now());
    let run = || -> Result<AlertLog, QueryError> {
        let q = EventQuery::parse(query, now)?;
        let (conn, _) = connect(h)?;
        let mut stmt = conn.prepare(
            "SELECT ts, alertname, event, severity, value, labels, summary, active_since
             FROM alert_events
             WHERE (?1 IS NULL OR alertname = ?1)
               AND (?2 IS NULL OR json_extract(labels, '$.tunnel') = ?2)
               AND (?3 IS NULL OR event = ?3)
               AND (?4 IS NULL OR severity = ?4)
               AND ts >= ?5 AND ts <= ?6
             ORDER BY ts DESC, rowid DESC
             LIMIT ?7",
        )?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            rusqlite::params![
                q.alertname,
                q.tunnel,
                q.event,
                q.severity,
                q.from.unwrap_or(0),
                q.to.unwrap_or(i64::MAX),
                limit
            ],
            |r| {
                let labels: String = r.get(5)?;
                Ok(AlertEventRow {
                    time: ms_to_s(r.get(0)?),
                    alertname: r.get(1)?,
                    event: r.get(2)?,
                    severity: r.get(3)?,
                    value: r.get(4)?,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    summary: r.get(6)?,
                    active_since: ms_to_s(r.get(7)?),
                })
            },
        )?;
        let events = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(AlertLog {
            limit: q.limit,
            events,
        })
    };
    match run() {
        Ok(v) => success(&v),
        Err(e) => query_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::history::{AlertEvent, Settings, store::Store};

    fn event(alertname: &str, event: &'static str, tunnel: &str) -> AlertEvent {
        AlertEvent {
            alertname: alertname.into(),
            event,
            severity: "warning",
            value: 1.0,
            labels: BTreeMap::from([("tunnel".to_owned(), tunnel.to_owned())]),
            summary: format!("{alertname} on {tunnel}"),
            active_since: 1_000,
        }
    }

    #[test]
    fn the_alert_log_is_filtered_and_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_ms(SystemTime::now());
        let (mut store, _) = Store::open(dir.path(), Settings::default(), now).unwrap();
        store
            .record_alerts(now - 3_000, &[event("TunnelDown", "firing", "ssh")])
            .unwrap();
        store
            .record_alerts(
                now - 2_000,
                &[
                    event("TunnelDown", "resolved", "ssh"),
                    event("TunnelConnectionsRefused", "firing", "web\"\n"),
                ],
            )
            .unwrap();
        drop(store);
        let api = HistoryApi::new(dir.path().join("history.db"), Settings::default());
        let ask = |q: &str| {
            let a = history(Some(&api), q);
            let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            (a.status, v)
        };
        let (status, all) = ask("");
        assert_eq!(status, 200, "{all}");
        let names: Vec<_> = all["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["alertname"].as_str().unwrap(),
                    e["event"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("TunnelConnectionsRefused", "firing"),
                ("TunnelDown", "resolved"),
                ("TunnelDown", "firing")
            ]
        );
        let (_, ssh) = ask("tunnel=ssh&event=firing");
        assert_eq!(ssh["data"]["events"].as_array().unwrap().len(), 1);
        assert_eq!(ssh["data"]["events"][0]["labels"]["tunnel"], "ssh");
        let (_, odd) = ask("tunnel=web%22%0A");
        assert_eq!(
            odd["data"]["events"][0]["summary"],
            "TunnelConnectionsRefused on web\"\n"
        );
        let (_, recent) = ask("since=2500ms&limit=1");
        assert_eq!(recent["data"]["events"].as_array().unwrap().len(), 1);
        let (_, none) = ask("alertname=HostCpuHigh");
        assert!(none["data"]["events"].as_array().unwrap().is_empty());
        for (q, param) in [
            ("event=burning", "event"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("from=yesterday", "from"),
            ("tunel=ssh", "tunel"),
        ] {
            let (status, v) = ask(q);
            assert_eq!(status, 400, "{q}: {v}");
            assert!(
                v["error"].as_str().unwrap().contains(&format!("`{param}`")),
                "{q}: {v}"
            );
        }
        assert_eq!(history(None, "").status, 503);
    }
}
