//! `/api/v1/tunnels`: the tunnel table of the latest snapshot, with per-second rates against the
//! snapshot before. [`TunnelRow`] is the one shape of a tunnel in the API: `/api/v1/status`
//! uses it too, and the clients read it.
use moonfrp_common::{EGRESS, INGRESS};
use serde::{Deserialize, Serialize};

use super::{Answer, error, success};
use crate::{
    frp::discovery::Role,
    snapshot::{PortlessTunnel, Snapshot, TunnelMeta, TunnelSample},
    time::{ms_to_s, unix_ms},
};

/// Why a tunnel was last down, and when (Unix seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub reason: String,
    pub time: f64,
}

/// A tunnel as the API shows it. Counters are totals since the port started being watched;
/// TCP-only fields are `null` for UDP tunnels, and every counter is `null` for a tunnel FRP knows
/// without a port of its own (an http proxy on the vhost port, a P2P one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelRow {
    pub tunnel: String,
    pub port: Option<u16>,
    /// `tcp`, `udp`, or empty without a port.
    pub proto: String,
    /// `cli`, `config`, `frp-config`, `frps-api` or `inspect`.
    pub source: String,
    /// frp proxy type (`tcp`, `http`…), `transport`, `vhost`, or empty for explicit tunnels.
    #[serde(rename = "type")]
    pub kind: String,
    pub role: Option<String>,
    pub up: bool,
    pub reason: Option<String>,
    pub frp_status: Option<String>,
    pub failures_total: u64,
    pub last_error: Option<LastError>,
    pub receive_bytes_total: Option<u64>,
    pub transmit_bytes_total: Option<u64>,
    /// What the applications wrote (TCP/UDP payload), as `…_payload_bytes_total`.
    #[serde(default)]
    pub receive_payload_bytes_total: Option<u64>,
    #[serde(default)]
    pub transmit_payload_bytes_total: Option<u64>,
    pub receive_bytes_per_second: Option<f64>,
    pub transmit_bytes_per_second: Option<f64>,
    pub connections_active: Option<u64>,
    pub connections_opened_total: Option<u64>,
    pub connections_refused_total: Option<u64>,
    pub resets_sent_total: Option<u64>,
    pub resets_received_total: Option<u64>,
    pub retransmits_total: Option<u64>,
    /// Connections refused over the last hour, from history (in `/api/v1/status` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_last_hour: Option<f64>,
    /// Resets and retransmits over the last hour, from history (in `/api/v1/status` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_last_hour: Option<f64>,
}

impl TunnelRow {
    /// Bytes per second both ways.
    pub fn bandwidth(&self) -> f64 {
        self.receive_bytes_per_second.unwrap_or(0.0) + self.transmit_bytes_per_second.unwrap_or(0.0)
    }

    /// Resets sent and received plus retransmits, since the port was watched.
    pub fn errors_total(&self) -> u64 {
        [
            self.resets_sent_total,
            self.resets_received_total,
            self.retransmits_total,
        ]
        .iter()
        .flatten()
        .sum()
    }
}

/// Seconds between two snapshots (0 without the earlier one).
pub fn interval(cur: &Snapshot, prev: Option<&Snapshot>) -> f64 {
    prev.and_then(|p| cur.taken_at.duration_since(p.taken_at).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The same (port, protocol) in the earlier snapshot.
pub fn before<'a>(t: &TunnelSample, prev: Option<&'a Snapshot>) -> Option<&'a TunnelSample> {
    prev.and_then(|p| {
        p.tunnels
            .iter()
            .find(|q| q.spec.port == t.spec.port && q.spec.proto == t.spec.proto)
    })
}

/// Reset-aware per-second rate of a counter between two snapshots.
pub fn rate(cur: u64, prev: Option<u64>, seconds: f64) -> Option<f64> {
    let prev = prev?;
    if seconds <= 0.0 {
        return None;
    }
    let inc = if cur >= prev { cur - prev } else { cur };
    #[allow(clippy::cast_precision_loss)]
    Some(inc as f64 / seconds)
}

/// The fields every tunnel has, from FRP's word and the health verdict.
fn with_meta(tunnel: &str, source: &str, m: &TunnelMeta) -> TunnelRow {
    TunnelRow {
        tunnel: tunnel.to_owned(),
        source: source.to_owned(),
        kind: m.kind.clone(),
        role: m.role.map(|r| Role::as_str(r).to_owned()),
        up: m.health.up,
        reason: (!m.health.reason.is_empty()).then(|| m.health.reason.clone()),
        frp_status: m.frp_status.clone(),
        failures_total: m.failures,
        last_error: m.last_error.as_ref().map(|e| LastError {
            reason: e.reason.clone(),
            time: ms_to_s(unix_ms(e.at)),
        }),
        ..TunnelRow::default()
    }
}

/// A watched tunnel's row, with rates against `prev` over `seconds`.
pub fn row(t: &TunnelSample, prev: Option<&TunnelSample>, seconds: f64) -> TunnelRow {
    let dir = |d: usize| {
        (
            t.traffic.dir[d].bytes,
            rate(
                t.traffic.dir[d].bytes,
                prev.map(|p| p.traffic.dir[d].bytes),
                seconds,
            ),
        )
    };
    let ((rx, rx_rate), (tx, tx_rate)) = (dir(INGRESS), dir(EGRESS));
    let tcp = t.tcp.as_ref();
    let c = tcp.map(|s| s.counters);
    TunnelRow {
        port: Some(t.spec.port),
        proto: t.spec.proto.as_str().to_owned(),
        receive_bytes_total: Some(rx),
        transmit_bytes_total: Some(tx),
        receive_payload_bytes_total: Some(t.traffic.dir[INGRESS].payload_bytes),
        transmit_payload_bytes_total: Some(t.traffic.dir[EGRESS].payload_bytes),
        receive_bytes_per_second: rx_rate,
        transmit_bytes_per_second: tx_rate,
        connections_active: tcp.map(|s| s.active),
        connections_opened_total: c.map(|c| c.opened_passive + c.opened_active),
        connections_refused_total: c.map(|c| c.refused),
        resets_sent_total: c.map(|c| c.resets_sent),
        resets_received_total: c.map(|c| c.resets_received),
        retransmits_total: c.map(|c| c.retransmits),
        ..with_meta(&t.spec.name, t.spec.source.as_str(), &t.meta)
    }
}

/// A portless FRP tunnel's row (no counters).
pub fn portless_row(p: &PortlessTunnel) -> TunnelRow {
    with_meta(&p.name, "frps-api", &p.meta)
}

/// Every tunnel of `cur` (watched ones, then portless ones), rates against `prev`.
pub fn rows(cur: &Snapshot, prev: Option<&Snapshot>) -> Vec<TunnelRow> {
    let seconds = interval(cur, prev);
    cur.tunnels
        .iter()
        .map(|t| row(t, before(t, prev), seconds))
        .chain(cur.portless.iter().map(portless_row))
        .collect()
}

/// `/api/v1/tunnels`' data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tunnels {
    /// Unix seconds of the latest snapshot.
    pub time: f64,
    pub interval_seconds: f64,
    pub tunnels: Vec<TunnelRow>,
}

/// `GET /api/v1/tunnels`.
pub fn tunnels(cur: Option<&Snapshot>, prev: Option<&Snapshot>) -> Answer {
    let Some(cur) = cur else {
        return error(
            503,
            "no snapshot taken yet; the first comes one interval after start",
        );
    };
    success(&serde_json::json!(Tunnels {
        time: ms_to_s(unix_ms(cur.taken_at)),
        interval_seconds: interval(cur, prev),
        tunnels: rows(cur, prev),
    }))
}
