//! What `GET /api/v1/status` answers, and what `status` and `top` show: the latest snapshot
//! grouped by category, with per-second rates against the snapshot before.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    alerts::eval::Alert,
    snapshot::{Snapshot, TunnelSample},
    time::{ms_to_s, unix_ms},
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Unix seconds of the latest snapshot.
    pub time: f64,
    /// Seconds between the two latest snapshots (0 after the first).
    pub interval_seconds: f64,
    pub version: String,
    pub tunnels: Vec<TunnelRow>,
    pub processes: Vec<ProcessRow>,
    pub services: Vec<ServiceRow>,
    pub system: SystemRow,
    pub alerts: Vec<AlertRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelRow {
    pub name: String,
    /// None: a tunnel FRP knows without a port of its own.
    pub port: Option<u16>,
    pub proto: String,
    pub up: bool,
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub receive_bytes_per_second: Option<f64>,
    pub transmit_bytes_per_second: Option<f64>,
    pub connections_active: Option<u64>,
    pub refused_total: u64,
    /// Resets sent and received plus retransmits.
    pub errors_total: u64,
    /// Since an hour ago (from history; None without it).
    pub refused_last_hour: Option<f64>,
    pub errors_last_hour: Option<f64>,
}

impl TunnelRow {
    pub fn bandwidth(&self) -> f64 {
        self.receive_bytes_per_second.unwrap_or(0.0) + self.transmit_bytes_per_second.unwrap_or(0.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub process: String,
    pub config: String,
    pub running: u64,
    pub restarts: u64,
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub unit: String,
    pub state: String,
    pub restarts: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemRow {
    pub cpu_usage_ratio: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub load1: Option<f64>,
    pub cpus: Option<usize>,
    pub filesystems: Vec<FilesystemRow>,
    pub network: Vec<NetworkRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesystemRow {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkRow {
    pub device: String,
    pub receive_bytes_per_second: Option<f64>,
    pub transmit_bytes_per_second: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub alertname: String,
    pub severity: String,
    pub state: String,
    pub value: f64,
    /// Unix seconds.
    pub since: f64,
    pub summary: String,
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

impl Status {
    /// Builds the view of `cur`, with rates against `prev`; `last_hour` gives, per tunnel name,
    /// (refused, errors) over the last hour when history has them.
    pub fn build(
        cur: &Snapshot,
        prev: Option<&Snapshot>,
        alerts: &[std::sync::Arc<Alert>],
        last_hour: &HashMap<String, (f64, f64)>,
    ) -> Self {
        let seconds = interval(cur, prev);
        let tunnels = tunnel_rows(cur, prev, seconds, last_hour);
        let s = &cur.system;
        Self {
            time: ms_to_s(unix_ms(cur.taken_at)),
            interval_seconds: seconds,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tunnels,
            processes: s
                .processes
                .iter()
                .flatten()
                .map(|p| ProcessRow {
                    process: p.process.clone(),
                    config: p.config.clone(),
                    running: p.running,
                    restarts: p.restarts,
                    cpu_seconds: p.stats.map(|s| s.cpu_seconds),
                    resident_bytes: p.stats.map(|s| s.resident_bytes),
                })
                .collect(),
            services: s
                .services
                .iter()
                .flat_map(|sv| &sv.units)
                .map(|u| ServiceRow {
                    unit: u.name.clone(),
                    state: u.active_state.clone(),
                    restarts: u.restarts,
                })
                .collect(),
            system: system_row(cur, prev, seconds),
            alerts: alerts
                .iter()
                .map(|a| AlertRow {
                    alertname: a.alertname.clone(),
                    severity: a.severity.as_str().to_owned(),
                    state: a.state.to_owned(),
                    value: a.value,
                    since: ms_to_s(a.active_since),
                    summary: a.annotations.get("summary").cloned().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

fn tunnel_rows(
    cur: &Snapshot,
    prev: Option<&Snapshot>,
    seconds: f64,
    last_hour: &HashMap<String, (f64, f64)>,
) -> Vec<TunnelRow> {
    use moonfrp_common::{EGRESS, INGRESS};
    let mut tunnels: Vec<TunnelRow> = cur
        .tunnels
        .iter()
        .map(|t| {
            let before = before(t, prev);
            let dir = |d: usize| {
                rate(
                    t.traffic.dir[d].bytes,
                    before.map(|b| b.traffic.dir[d].bytes),
                    seconds,
                )
            };
            let c = t.tcp.as_ref().map(|s| s.counters).unwrap_or_default();
            let hour = last_hour.get(&t.spec.name);
            TunnelRow {
                name: t.spec.name.clone(),
                port: Some(t.spec.port),
                proto: t.spec.proto.as_str().to_owned(),
                up: t.meta.health.up,
                reason: (!t.meta.health.reason.is_empty()).then(|| t.meta.health.reason.clone()),
                last_error: t.meta.last_error.as_ref().map(|e| e.reason.clone()),
                receive_bytes_per_second: dir(INGRESS),
                transmit_bytes_per_second: dir(EGRESS),
                connections_active: t.tcp.as_ref().map(|s| s.active),
                refused_total: c.refused,
                errors_total: c.resets_sent + c.resets_received + c.retransmits,
                refused_last_hour: hour.map(|h| h.0),
                errors_last_hour: hour.map(|h| h.1),
            }
        })
        .collect();
    tunnels.extend(cur.portless.iter().map(|p| TunnelRow {
        name: p.name.clone(),
        up: p.meta.health.up,
        reason: (!p.meta.health.reason.is_empty()).then(|| p.meta.health.reason.clone()),
        last_error: p.meta.last_error.as_ref().map(|e| e.reason.clone()),
        proto: p.meta.kind.clone(),
        ..TunnelRow::default()
    }));
    tunnels
}

fn system_row(cur: &Snapshot, prev: Option<&Snapshot>, seconds: f64) -> SystemRow {
    let s = &cur.system;
    let net_before: HashMap<&str, (u64, u64)> = prev
        .and_then(|p| p.system.netdev.as_ref())
        .into_iter()
        .flatten()
        .map(|n| (n.name.as_str(), (n.rx_bytes, n.tx_bytes)))
        .collect();
    SystemRow {
        cpu_usage_ratio: s.cpu.as_ref().and_then(|c| c.usage_ratio),
        cpus: s.cpu.as_ref().map(|c| c.cpus),
        memory_used_bytes: s.memory.map(|m| m.used),
        memory_total_bytes: s.memory.map(|m| m.total),
        load1: s.host.map(|h| h.load1),
        filesystems: s
            .filesystems
            .iter()
            .flatten()
            .map(|f| FilesystemRow {
                mountpoint: f.mount.mountpoint.clone(),
                used_bytes: f.used_bytes,
                size_bytes: f.size_bytes,
            })
            .collect(),
        network: s
            .netdev
            .iter()
            .flatten()
            .filter(|n| n.name != "lo")
            .map(|n| {
                let before = net_before.get(n.name.as_str());
                NetworkRow {
                    device: n.name.clone(),
                    receive_bytes_per_second: rate(n.rx_bytes, before.map(|b| b.0), seconds),
                    transmit_bytes_per_second: rate(n.tx_bytes, before.map(|b| b.1), seconds),
                }
            })
            .collect(),
    }
}
