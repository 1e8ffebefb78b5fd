//! The JSON API: `/api/v1/history` (JSON or CSV), `/api/v1/summary` and `/api/v1/tunnels`.
//! History queries run on the blocking pool with their own read-only connection, at most two at
//! a time, so a heavy query never holds up a collection or a scrape.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::SystemTime,
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    cycle::InspectError,
    history::{
        Settings,
        query::{self, Format, QueryError, Request},
        store::open_read_only,
    },
    snapshot::{Snapshot, TunnelMeta, TunnelSample},
    time::{ms_to_s, unix_ms},
    untrusted,
};

/// Where the history database is, for readers.
#[derive(Clone, Debug)]
pub struct HistoryApi {
    pub db: PathBuf,
    pub settings: Settings,
}

/// An API answer: status, content type, body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const JSON: &str = "application/json";

fn json_answer(status: u16, v: &impl Serialize) -> Answer {
    Answer {
        status,
        content_type: JSON,
        body: serde_json::to_string(v).expect("API values serialize") + "\n",
    }
}

/// A 200 answer `{"status": "success", "data": …}`.
fn success(data: &Value) -> Answer {
    json_answer(200, &json!({ "status": "success", "data": data }))
}

fn error(status: u16, message: &str) -> Answer {
    json_answer(status, &json!({ "status": "error", "error": message }))
}

fn query_error(e: &QueryError) -> Answer {
    let mut body = json!({ "status": "error", "error": e.to_string() });
    if let QueryError::UnknownMetric { known, .. } = e {
        body["known_metrics"] = json!(known);
    }
    json_answer(e.status(), &body)
}

fn connect(h: Option<&HistoryApi>) -> Result<(rusqlite::Connection, &HistoryApi), QueryError> {
    let h = h.ok_or_else(|| {
        QueryError::NoDatabase("(history is disabled in the configuration)".into())
    })?;
    if !h.db.exists() {
        return Err(QueryError::NoDatabase(h.db.display().to_string()));
    }
    Ok((open_read_only(&h.db)?, h))
}

/// `GET /api/v1/history?metric=…` (blocking).
pub fn history(h: Option<&HistoryApi>, query_string: &str) -> Answer {
    let now = unix_ms(SystemTime::now());
    let run = || {
        let (req, format) = Request::from_query(query_string, now)?;
        let (conn, h) = connect(h)?;
        Ok::<_, QueryError>((query::run(&conn, &h.settings, &req, now)?, format))
    };
    match run() {
        Ok((a, Format::Json)) => success(&json!(a)),
        Ok((a, Format::Csv)) => Answer {
            status: 200,
            content_type: "text/csv; charset=utf-8",
            body: query::to_csv(&a),
        },
        Err(e) => query_error(&e),
    }
}

/// Latest value and last-hour statistics of a list of points.
fn stats(points: &[(f64, f64)]) -> Value {
    let Some(last) = points.last() else {
        return Value::Null;
    };
    let n = points.len() as f64;
    let (min, max, sum) = points.iter().fold(
        (f64::INFINITY, f64::NEG_INFINITY, 0.0),
        |(lo, hi, s), (_, v)| (lo.min(*v), hi.max(*v), s + v),
    );
    json!({ "now": last.1, "avg": sum / n, "min": min, "max": max })
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
    let run = || -> Result<Value, QueryError> {
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
        let mut tunnels: BTreeMap<(String, String, String), serde_json::Map<String, Value>> =
            BTreeMap::new();
        for (field, metric, rate) in TUNNEL_HEADLINES {
            for s in window(metric, rate)? {
                let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
                let row = tunnels
                    .entry((label("tunnel"), label("port"), label("proto")))
                    .or_default();
                row.insert(field.to_owned(), stats(&s.samples));
            }
        }
        let tunnels: Vec<Value> = tunnels
            .into_iter()
            .map(|((tunnel, port, proto), mut fields)| {
                fields.insert("tunnel".into(), json!(tunnel));
                fields.insert("port".into(), json!(port));
                fields.insert("proto".into(), json!(proto));
                Value::Object(fields)
            })
            .collect();
        let mut system = serde_json::Map::new();
        for (field, metric) in SYSTEM_HEADLINES {
            let series = window(metric, false)?;
            system.insert(
                field.to_owned(),
                series.first().map_or(Value::Null, |s| stats(&s.samples)),
            );
        }
        Ok(json!({
            "status": "success",
            "data": {
                "time": ms_to_s(now),
                "window_seconds": 3600,
                "tunnels": tunnels,
                "system": system,
            }
        }))
    };
    match run() {
        Ok(v) => json_answer(200, &v),
        Err(e) => query_error(&e),
    }
}

use crate::view::model::rate;

/// Per tunnel name: connections refused and errors (resets + retransmits) over the last hour,
/// from history (blocking; empty without history).
fn last_hour(h: Option<&HistoryApi>, now: i64) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    let Ok((conn, h)) = connect(h) else {
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

/// `GET /api/v1/status` (blocking): the latest snapshot grouped for `status` and `top`.
pub fn status(
    cur: Option<&Snapshot>,
    prev: Option<&Snapshot>,
    alerts: Option<&crate::alerts::Shared>,
    h: Option<&HistoryApi>,
) -> Answer {
    let Some(cur) = cur else {
        return error(
            503,
            "no snapshot taken yet; the first comes one interval after start",
        );
    };
    let active = alerts
        .map(crate::alerts::Shared::active)
        .unwrap_or_default();
    let hour = last_hour(h, unix_ms(SystemTime::now()));
    let s = crate::view::model::Status::build(cur, prev, &active, &hour);
    success(&json!(s))
}

fn meta_json(m: &TunnelMeta) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    o.insert("type".into(), json!(m.kind));
    o.insert(
        "role".into(),
        json!(m.role.map(crate::frp::discovery::Role::as_str)),
    );
    o.insert("up".into(), json!(m.health.up));
    o.insert(
        "reason".into(),
        json!((!m.health.reason.is_empty()).then_some(&m.health.reason)),
    );
    o.insert("frp_status".into(), json!(m.frp_status));
    o.insert("failures_total".into(), json!(m.failures));
    o.insert(
        "last_error".into(),
        m.last_error.as_ref().map_or(
            Value::Null,
            |e| json!({ "reason": e.reason, "time": ms_to_s(unix_ms(e.at)) }),
        ),
    );
    o
}

fn tunnel_json(t: &TunnelSample, prev: Option<&TunnelSample>, seconds: f64) -> Value {
    use moonfrp_common::{EGRESS, INGRESS};
    let mut o = meta_json(&t.meta);
    o.insert("tunnel".into(), json!(t.spec.name));
    o.insert("port".into(), json!(t.spec.port));
    o.insert("proto".into(), json!(t.spec.proto.as_str()));
    o.insert("source".into(), json!(t.spec.source.as_str()));
    for (field, dir) in [("receive", INGRESS), ("transmit", EGRESS)] {
        let cur = t.traffic.dir[dir].bytes;
        let before = prev.map(|p| p.traffic.dir[dir].bytes);
        o.insert(format!("{field}_bytes_total"), json!(cur));
        o.insert(
            format!("{field}_bytes_per_second"),
            json!(rate(cur, before, seconds)),
        );
    }
    if let Some(tcp) = &t.tcp {
        let c = &tcp.counters;
        o.insert("connections_active".into(), json!(tcp.active));
        o.insert(
            "connections_opened_total".into(),
            json!(c.opened_passive + c.opened_active),
        );
        o.insert("connections_refused_total".into(), json!(c.refused));
        o.insert("resets_sent_total".into(), json!(c.resets_sent));
        o.insert("resets_received_total".into(), json!(c.resets_received));
        o.insert("retransmits_total".into(), json!(c.retransmits));
    }
    Value::Object(o)
}

/// Whose peers: a tunnel by name, or any watched (port, protocol).
pub enum PeersOf {
    Tunnel(String),
    Port(u16, moonfrp_common::Proto),
}

/// `GET /api/v1/tunnels/{name}/peers` and `GET /api/v1/peers?port=P&proto=tcp` (blocking): the
/// remote addresses of a watched port with their traffic, most bytes first (at most `limit`), and
/// the connection-duration distribution of the tunnel. Never on `/metrics` (label cardinality).
pub fn peers(
    table: Option<&crate::ebpf::maps::PeerTable>,
    capacity: u32,
    cur: Option<&Snapshot>,
    of: &PeersOf,
    limit: usize,
) -> Answer {
    let Some(table) = table else {
        return error(
            503,
            "the peer table is not available (kernel programs not loaded)",
        );
    };
    if capacity == 0 {
        return error(
            503,
            "peer counting is off (`kernel.peers = 0` in the config)",
        );
    }
    let find = |t: &&TunnelSample| match of {
        PeersOf::Tunnel(name) => &t.spec.name == name,
        PeersOf::Port(port, proto) => t.spec.port == *port && t.spec.proto == *proto,
    };
    let tunnel = cur.and_then(|c| c.tunnels.iter().find(find));
    let (port, proto) = match (of, tunnel) {
        (_, Some(t)) => (t.spec.port, t.spec.proto),
        (PeersOf::Port(port, proto), None) => (*port, *proto),
        (PeersOf::Tunnel(name), None) => {
            let known: Vec<&str> = cur
                .map(|c| c.tunnels.iter().map(|t| t.spec.name.as_str()).collect())
                .unwrap_or_default();
            return json_answer(
                404,
                &json!({
                    "status": "error",
                    "error": format!("no watched tunnel named `{name}`"),
                    "tunnels": known,
                }),
            );
        }
    };
    let (list, entries) = table.of(port, proto);
    let total = list.len();
    let rows: Vec<Value> = list
        .iter()
        .take(limit)
        .map(|p| {
            let c = &p.counters;
            json!({
                "address": p.address.to_string(),
                "receive_bytes": c.dir[moonfrp_common::INGRESS].bytes,
                "transmit_bytes": c.dir[moonfrp_common::EGRESS].bytes,
                "receive_payload_bytes": c.dir[moonfrp_common::INGRESS].payload_bytes,
                "transmit_payload_bytes": c.dir[moonfrp_common::EGRESS].payload_bytes,
                "packets": c.dir[0].packets + c.dir[1].packets,
                "connection_attempts": c.syns,
            })
        })
        .collect();
    let durations: Vec<Value> = tunnel
        .and_then(|t| t.tcp.as_ref())
        .map(|tcp| {
            tcp.counters
                .duration_buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(b, n)| json!({ "le_seconds": f64::from(1u32 << b.min(31)) / 1000.0, "count": n }))
                .collect()
        })
        .unwrap_or_default();
    success(&json!({
        "tunnel": tunnel.map(|t| t.spec.name.clone()),
        "port": port,
        "proto": proto.as_str(),
        "peers_total": total,
        "table": { "entries": entries, "capacity": capacity },
        "peers": rows,
        "durations": durations,
    }))
}

/// `POST /api/v1/inspect?port=P[&proto=tcp|udp][&ttl=30s]` watches a port for a while (renew by
/// asking again); `DELETE` with the same port ends it. The port is counted under its tunnel's
/// name if one covers it, else as `inspect-<port>-<proto>` (blocking).
pub fn inspect(
    collector: Option<&std::sync::Mutex<crate::cycle::Cycle>>,
    query: &str,
    start: bool,
) -> Answer {
    let Some(collector) = collector else {
        return error(503, "the collector is not available");
    };
    let mut port = None;
    let mut proto = moonfrp_common::Proto::Tcp;
    let mut ttl = std::time::Duration::from_secs(30);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "port" => match v.parse::<u16>() {
                Ok(p) if p != 0 => port = Some(p),
                _ => {
                    return error(
                        400,
                        &format!(
                            "parameter `port`: `{}` is not a port (1-65535)",
                            untrusted::shown(&v)
                        ),
                    );
                }
            },
            "proto" => match v.as_ref() {
                "tcp" => proto = moonfrp_common::Proto::Tcp,
                "udp" => proto = moonfrp_common::Proto::Udp,
                other => {
                    return error(
                        400,
                        &format!(
                            "parameter `proto`: `{}`: use tcp or udp",
                            untrusted::shown(other)
                        ),
                    );
                }
            },
            "ttl" => match humantime::parse_duration(&v) {
                Ok(d)
                    if (std::time::Duration::from_secs(1)..=std::time::Duration::from_hours(1))
                        .contains(&d) =>
                {
                    ttl = d;
                }
                _ => {
                    return error(
                        400,
                        &format!(
                            "parameter `ttl`: `{}` is not a duration from 1s to 1h",
                            untrusted::shown(&v)
                        ),
                    );
                }
            },
            other => {
                return error(
                    400,
                    &format!(
                        "parameter `{}` is unknown; use port, proto, ttl",
                        untrusted::shown(other)
                    ),
                );
            }
        }
    }
    let Some(port) = port else {
        return error(400, "parameter `port` is missing");
    };
    let mut c = collector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if start {
        match c.inspect(port, proto, ttl) {
            Ok(name) => success(&json!({
                "tunnel": name,
                "port": port,
                "proto": proto.as_str(),
                "ttl_seconds": ttl.as_secs_f64(),
            })),
            Err(e @ (InspectError::TooMany | InspectError::NoSlot(_))) => {
                error(409, &format!("cannot watch {port}/{}: {e}", proto.as_str()))
            }
            Err(e) => error(500, &format!("cannot watch {port}/{}: {e}", proto.as_str())),
        }
    } else {
        match c.end_inspect(port, proto) {
            Ok(true) => json_answer(200, &json!({ "status": "success" })),
            Ok(false) => error(
                404,
                &format!(
                    "{port}/{} is not being inspected (a tunnel's port ends with the tunnel)",
                    proto.as_str()
                ),
            ),
            Err(e) => error(500, &e.to_string()),
        }
    }
}

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

/// `GET /api/v1/tunnels`: the tunnel table from the latest snapshot, rates against the one before.
pub fn tunnels(cur: Option<&Snapshot>, prev: Option<&Snapshot>) -> Answer {
    let Some(cur) = cur else {
        return error(
            503,
            "no snapshot taken yet; the first comes one interval after start",
        );
    };
    let seconds = crate::view::model::interval(cur, prev);
    let mut rows: Vec<Value> = cur
        .tunnels
        .iter()
        .map(|t| tunnel_json(t, crate::view::model::before(t, prev), seconds))
        .collect();
    rows.extend(cur.portless.iter().map(|p| {
        let mut o = meta_json(&p.meta);
        o.insert("tunnel".into(), json!(p.name));
        o.insert("port".into(), Value::Null);
        Value::Object(o)
    }));
    success(&json!({
        "time": ms_to_s(unix_ms(cur.taken_at)),
        "interval_seconds": seconds,
        "tunnels": rows,
    }))
}
