//! `/api/v1/tunnels/{name}/peers` and `/api/v1/peers`: a watched port's remote addresses.
use serde_json::{Value, json};

use super::{Answer, error, json_answer, success};
use crate::snapshot::{Snapshot, TunnelSample};

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
