//! `/api/v1/status`: the latest snapshot grouped by category, with per-second rates against
//! the snapshot before — what `status` and `top` show.
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Answer, HistoryApi, error,
    history::last_hour,
    success,
    tunnels::{TunnelRow, interval, rate, rows},
};
use crate::{
    alerts::eval::Alert,
    collect::cgroups::stats::Stats,
    snapshot::Snapshot,
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
    /// The exported containers (at most `collectors.max_containers`), by name.
    #[serde(default)]
    pub containers: Vec<ContainerRow>,
    pub system: SystemRow,
    pub alerts: Vec<AlertRow>,
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

/// A systemd unit: its state from systemd (empty without systemd), its resources from its cgroup
/// (absent without one).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub unit: String,
    pub state: String,
    pub restarts: u64,
    #[serde(flatten)]
    pub resources: Resources,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerRow {
    pub container: String,
    /// Short id (12 hex digits).
    pub id: String,
    #[serde(flatten)]
    pub resources: Resources,
}

/// What a unit's or a container's cgroup uses now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU seconds per second over the last interval (1 = one core busy).
    pub cpu_cores: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
    pub io_read_bytes_per_second: Option<f64>,
    pub io_write_bytes_per_second: Option<f64>,
}

impl Resources {
    fn of(now: &Stats, before: Option<&Stats>, seconds: f64) -> Self {
        let cpu = |s: &Stats| {
            s.cpu_user_seconds
                .zip(s.cpu_system_seconds)
                .map(|(u, y)| u + y)
        };
        Self {
            cpu_cores: cpu(now)
                .zip(before.and_then(cpu))
                .filter(|_| seconds > 0.0)
                .map(|(n, b)| (n - b).max(0.0) / seconds),
            cpu_seconds: cpu(now),
            memory_bytes: now.memory_bytes,
            memory_peak_bytes: now.memory_peak_bytes,
            pids: now.pids,
            oom_kills: now.oom_kills,
            io_read_bytes_per_second: now
                .io_read_bytes
                .and_then(|n| rate(n, before.and_then(|b| b.io_read_bytes), seconds)),
            io_write_bytes_per_second: now
                .io_write_bytes
                .and_then(|n| rate(n, before.and_then(|b| b.io_write_bytes), seconds)),
        }
    }
}

/// Units from systemd and from cgroups, merged by name; containers.
fn services(
    cur: &Snapshot,
    prev: Option<&Snapshot>,
    seconds: f64,
) -> (Vec<ServiceRow>, Vec<ContainerRow>) {
    let cg = cur.system.cgroups.as_ref();
    let before = prev.and_then(|p| p.system.cgroups.as_ref());
    let unit_before = |name: &str| {
        before
            .and_then(|b| b.units.iter().find(|u| u.name == name))
            .map(|u| &u.stats)
    };
    let mut rows: std::collections::BTreeMap<String, ServiceRow> = cur
        .system
        .services
        .iter()
        .flat_map(|sv| &sv.units)
        .map(|u| {
            (
                u.name.clone(),
                ServiceRow {
                    unit: u.name.clone(),
                    state: u.active_state.clone(),
                    restarts: u.restarts,
                    resources: Resources::default(),
                },
            )
        })
        .collect();
    for g in cg.iter().flat_map(|c| &c.units) {
        let row = rows.entry(g.name.clone()).or_insert_with(|| ServiceRow {
            unit: g.name.clone(),
            ..ServiceRow::default()
        });
        row.resources = Resources::of(&g.stats, unit_before(&g.name), seconds);
    }
    let containers = cg
        .iter()
        .flat_map(|c| &c.containers)
        .map(|g| ContainerRow {
            container: g.name.clone(),
            id: g.id.clone(),
            resources: Resources::of(
                &g.stats,
                before
                    .and_then(|b| b.containers.iter().find(|c| c.id == g.id))
                    .map(|c| &c.stats),
                seconds,
            ),
        })
        .collect();
    (rows.into_values().collect(), containers)
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

impl Status {
    /// Builds the view of `cur`, with rates against `prev`; `last_hour` gives, per tunnel name,
    /// (refused, errors) over the last hour when history has them.
    pub fn build(
        cur: &Snapshot,
        prev: Option<&Snapshot>,
        alerts: &[Arc<Alert>],
        last_hour: &HashMap<String, (f64, f64)>,
    ) -> Self {
        let seconds = interval(cur, prev);
        let mut tunnels = rows(cur, prev);
        for t in &mut tunnels {
            if let Some(h) = last_hour.get(&t.tunnel) {
                t.refused_last_hour = Some(h.0);
                t.errors_last_hour = Some(h.1);
            }
        }
        let s = &cur.system;
        let (services, containers) = services(cur, prev, seconds);
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
            services,
            containers,
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
    let s = Status::build(cur, prev, &active, &hour);
    success(&serde_json::json!(s))
}
