//! `/api/v1/history` (JSON or CSV) and `/api/v1/summary`, from the history database. Queries
//! run with their own read-only connection, at most two at a time.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;
use serde_json::{Value, json};

use super::{Answer, HistoryApi, connect, query_error, success};
use crate::{
    history::query::{self, Format, QueryError, Request},
    time::{ms_to_s, unix_ms},
};

/// `GET /api/v1/history?metric=…` (blocking).
pub fn history(h: Option<&HistoryApi>, query_string: &str) -> Answer {
    let now = unix_ms(SystemTime::now());
    let run = || {
        let (req, format) = Request::from_query(query_string, now)?;
        let (conn, h) = connect(h)?;
        Ok::<_, QueryError>((query::run(&conn, &h.settings, &req, now)?, format))
    };
    match run() {
        Ok((a, Format::Json)) => success(&a),
        Ok((a, Format::Csv)) => Answer {
            status: 200,
            content_type: "text/csv; charset=utf-8",
            body: query::to_csv(&a),
        },
        Err(e) => query_error(&e),
    }
}

/// Latest value and last-hour statistics of a list of points.
#[derive(Debug, Serialize)]
struct Stats {
    now: f64,
    avg: f64,
    min: f64,
    max: f64,
}

/// `None` (null) without points.
fn stats(points: &[(f64, f64)]) -> Option<Stats> {
    let last = points.last()?;
    let n = points.len() as f64;
    let (min, max, sum) = points.iter().fold(
        (f64::INFINITY, f64::NEG_INFINITY, 0.0),
        |(lo, hi, s), (_, v)| (lo.min(*v), hi.max(*v), s + v),
    );
    Some(Stats {
        now: last.1,
        avg: sum / n,
        min,
        max,
    })
}

/// `/api/v1/summary`'s data.
#[derive(Debug, Serialize)]
struct Summary {
    time: f64,
    window_seconds: u32,
    tunnels: Vec<TunnelLine>,
    system: serde_json::Map<String, Value>,
}

/// A headline of a tunnel: its statistics, or null when its series has no point in the hour.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Headline {
    Points(Stats),
    NoPoint(()),
}

/// A tunnel's line of the summary: a headline is left out when the tunnel has no such series,
/// null when its series has no point in the hour.
#[derive(Debug, Default, Serialize)]
struct TunnelLine {
    tunnel: String,
    port: String,
    proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    receive_bytes_per_second: Option<Headline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transmit_bytes_per_second: Option<Headline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_active: Option<Headline>,
}

impl TunnelLine {
    fn headline(&mut self, field: &str) -> &mut Option<Headline> {
        match field {
            "receive_bytes_per_second" => &mut self.receive_bytes_per_second,
            "transmit_bytes_per_second" => &mut self.transmit_bytes_per_second,
            _ => &mut self.connections_active,
        }
    }
}

/// The headline series: per-tunnel bandwidth and connections, host CPU, memory and load.
const TUNNEL_HEADLINES: [(&str, &str, bool); 3] = [
    (
        "receive_bytes_per_second",
        "moonfrp_tunnel_receive_bytes_total",
        true,
    ),
    (
        "transmit_bytes_per_second",
        "moonfrp_tunnel_transmit_bytes_total",
        true,
    ),
    (
        "connections_active",
        "moonfrp_tunnel_connections_active",
        false,
    ),
];
const SYSTEM_HEADLINES: [(&str, &str); 4] = [
    ("cpu_usage_ratio", "moonfrp_system_cpu_usage_ratio"),
    ("memory_used_bytes", "moonfrp_system_memory_used_bytes"),
    (
        "memory_available_bytes",
        "moonfrp_system_memory_available_bytes",
    ),
    ("load1", "moonfrp_system_load1"),
];

/// `GET /api/v1/summary` (blocking): latest value and last-hour avg/min/max of the headline
/// series, from history.
pub fn summary(h: Option<&HistoryApi>) -> Answer {
    let now = unix_ms(SystemTime::now());
    let run = || -> Result<Summary, QueryError> {
        let (conn, h) = connect(h)?;
        let window = |metric: &str, rate: bool| -> Result<_, QueryError> {
            let req = Request::window(metric, now - 3_600_000, now, rate);
            match query::run(&conn, &h.settings, &req, now) {
                Ok(a) => Ok(a.series),
                // Nothing stored under that name yet (no tunnel of that kind).
                Err(QueryError::UnknownMetric { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        };
        let mut tunnels: BTreeMap<(String, String, String), TunnelLine> = BTreeMap::new();
        for (field, metric, rate) in TUNNEL_HEADLINES {
            for s in window(metric, rate)? {
                let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                let key = (label("tunnel"), label("port"), label("proto"));
                let line = tunnels.entry(key).or_default();
                *line.headline(field) =
                    Some(stats(&s.samples).map_or(Headline::NoPoint(()), Headline::Points));
            }
        }
        let tunnels: Vec<TunnelLine> = tunnels
            .into_iter()
            .map(|((tunnel, port, proto), line)| TunnelLine {
                tunnel,
                port,
                proto,
                ..line
            })
            .collect();
        let mut system = serde_json::Map::new();
        for (field, metric) in SYSTEM_HEADLINES {
            let series = window(metric, false)?;
            system.insert(
                field.to_owned(),
                json!(series.first().and_then(|s| stats(&s.samples))),
            );
        }
        Ok(Summary {
            time: ms_to_s(now),
            window_seconds: 3600,
            tunnels,
            system,
        })
    };
    match run() {
        Ok(v) => success(&v),
        Err(e) => query_error(&e),
    }
}

/// Per tunnel name: (refused, errors) over the last hour, read at a time.
#[derive(Debug)]
pub struct LastHour {
    read_at: std::time::Instant,
    per_tunnel: Arc<HashMap<String, (f64, f64)>>,
}

/// How long a reading of the last hour is reused: reading it scans an hour of four series per
/// tunnel, and it changes little in a few seconds.
const LAST_HOUR_REUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// Per tunnel name: connections refused and errors (resets + retransmits) over the last hour,
/// from history (blocking; empty without history). Read at most every 10 s; callers meanwhile
/// share the last reading (one reads while the others wait for it).
pub(crate) fn last_hour(h: Option<&HistoryApi>, now: i64) -> Arc<HashMap<String, (f64, f64)>> {
    let Some(api) = h else {
        return Arc::default();
    };
    let mut cached = api
        .last_hour
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = cached.as_ref()
        && c.read_at.elapsed() < LAST_HOUR_REUSE
    {
        return c.per_tunnel.clone();
    }
    let per_tunnel = Arc::new(read_last_hour(api, now));
    *cached = Some(LastHour {
        read_at: std::time::Instant::now(),
        per_tunnel: per_tunnel.clone(),
    });
    per_tunnel
}

fn read_last_hour(api: &HistoryApi, now: i64) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    let Ok((conn, h)) = connect(Some(api)) else {
        return out;
    };
    for (metric, refused) in [
        ("moonfrp_tunnel_connections_refused_total", true),
        ("moonfrp_tunnel_resets_sent_total", false),
        ("moonfrp_tunnel_resets_received_total", false),
        ("moonfrp_tunnel_retransmits_total", false),
    ] {
        let req = Request::window(metric, now - 3_600_000, now, false);
        let Ok(a) = query::run(&conn, &h.settings, &req, now) else {
            continue;
        };
        for s in a.series {
            let increase: f64 = s
                .samples
                .windows(2)
                .map(|w| {
                    if w[1].1 >= w[0].1 {
                        w[1].1 - w[0].1
                    } else {
                        w[1].1
                    }
                })
                .sum();
            let e = out
                .entry(s.labels.get("tunnel").cloned().unwrap_or_default())
                .or_default();
            if refused {
                e.0 += increase;
            } else {
                e.1 += increase;
            }
        }
    }
    out
}
