//! Per-tunnel series.
use std::fmt;

use moonfrp_common::{DURATION_BUCKETS, DirCounters, EGRESS, INGRESS};
use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use super::{counters, gauges};
use crate::{
    frp::discovery::Role,
    snapshot::{Snapshot, TcpSample, TunnelMeta, TunnelSample},
};

type Labels<'a> = [(&'static str, &'a str); 3];

/// A tunnel and its label values, computed once per scrape.
struct Row<'a> {
    sample: &'a TunnelSample,
    port: String,
}

impl Row<'_> {
    fn labels(&self) -> Labels<'_> {
        [
            ("tunnel", &self.sample.spec.name),
            ("port", &self.port),
            ("proto", self.sample.spec.proto.as_str()),
        ]
    }

    fn tcp(&self) -> &TcpSample {
        self.sample.tcp.as_ref().expect("rows are filtered on tcp")
    }
}

/// A traffic family: name without unit, unit, direction, field, help.
type TrafficFamily = (
    &'static str,
    Option<Unit>,
    usize,
    fn(&DirCounters) -> u64,
    &'static str,
);
/// A TCP counter family: name, field, help.
type TcpFamily = (&'static str, fn(&TcpSample) -> u64, &'static str);

const TRAFFIC: [TrafficFamily; 6] = [
    (
        "moonfrp_tunnel_receive",
        Some(Unit::Bytes),
        INGRESS,
        |d| d.bytes,
        "IP-layer bytes received on the tunnel's local port (headers of every segment included).",
    ),
    (
        "moonfrp_tunnel_transmit",
        Some(Unit::Bytes),
        EGRESS,
        |d| d.bytes,
        "IP-layer bytes sent from the tunnel's local port (headers of every segment included).",
    ),
    (
        "moonfrp_tunnel_receive_payload",
        Some(Unit::Bytes),
        INGRESS,
        |d| d.payload_bytes,
        "TCP/UDP payload bytes received on the tunnel's local port.",
    ),
    (
        "moonfrp_tunnel_transmit_payload",
        Some(Unit::Bytes),
        EGRESS,
        |d| d.payload_bytes,
        "TCP/UDP payload bytes sent from the tunnel's local port.",
    ),
    (
        "moonfrp_tunnel_receive_packets",
        None,
        INGRESS,
        |d| d.packets,
        "Packets (GSO/GRO segments counted one by one) received on the tunnel's local port.",
    ),
    (
        "moonfrp_tunnel_transmit_packets",
        None,
        EGRESS,
        |d| d.packets,
        "Packets (GSO/GRO segments counted one by one) sent from the tunnel's local port.",
    ),
];

/// TCP counter families exported after the connection gauges and histogram.
const TCP: [TcpFamily; 5] = [
    (
        "moonfrp_tunnel_connections_closed",
        |t| t.counters.closed,
        "TCP connections on the tunnel's local port that were established and have closed.",
    ),
    (
        "moonfrp_tunnel_connections_refused",
        |t| t.counters.refused,
        "Connection attempts answered with RST because nothing listened on the port.",
    ),
    (
        "moonfrp_tunnel_resets_sent",
        |t| t.counters.resets_sent,
        "RSTs sent by sockets on the tunnel's local port (refused connections not included).",
    ),
    (
        "moonfrp_tunnel_resets_received",
        |t| t.counters.resets_received,
        "RSTs received by sockets on the tunnel's local port.",
    ),
    (
        "moonfrp_tunnel_retransmits",
        |t| t.counters.retransmits,
        "TCP segments retransmitted by sockets on the tunnel's local port.",
    ),
];

/// Histogram upper bounds exported for connection durations: every second log2 bucket
/// (1 ms, 4 ms, 16 ms, … ≈ 18.6 h), then +Inf.
const EXPORTED_BOUNDS: usize = DURATION_BUCKETS / 2;

/// (upper bound in seconds, count in that bucket) from the kernel's log2-millisecond buckets:
/// export bucket k covers kernel buckets up to 2k, i.e. durations below 4^k ms.
pub(super) fn duration_buckets(kernel: &[u64; DURATION_BUCKETS]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(EXPORTED_BOUNDS + 1);
    let mut b = 0;
    for k in 0..EXPORTED_BOUNDS {
        let top = 2 * k;
        let n: u64 = kernel[b..=top].iter().sum();
        b = top + 1;
        out.push(((1u64 << top) as f64 / 1000.0, n));
    }
    out.push((f64::INFINITY, kernel[b..].iter().sum()));
    out
}

/// Info, up, failures and frps's own numbers, for watched tunnels and for portless FRP ones
/// (which have empty `port` and `proto`).
fn encode_health(snap: &Snapshot, all: &[Row], enc: &mut DescriptorEncoder) -> fmt::Result {
    let rows: Vec<(Labels<'_>, &TunnelMeta, &str)> = all
        .iter()
        .map(|t| (t.labels(), &t.sample.meta, t.sample.spec.source.as_str()))
        .chain(snap.portless.iter().map(|p| {
            (
                [("tunnel", p.name.as_str()), ("port", ""), ("proto", "")],
                &p.meta,
                "frps-api",
            )
        }))
        .collect();
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel",
            "Tunnels: where they come from, FRP's type, role and status, and why one is down.",
            None,
            MetricType::Info,
        )?;
        for (labels, meta, source) in &rows {
            let [tunnel, port, proto] = *labels;
            m.encode_info(&[
                tunnel,
                port,
                proto,
                ("source", *source),
                ("type", meta.kind.as_str()),
                ("role", meta.role.map_or("", Role::as_str)),
                ("status", meta.frp_status.as_deref().unwrap_or("")),
                ("reason", meta.health.reason.as_str()),
            ])?;
        }
    }
    gauges(
        enc,
        "moonfrp_tunnel_up",
        "1 if the tunnel works: FRP says so (when it says), something listens on its port, and no connection was refused since the last interval.",
        None,
        rows.iter().map(|(l, m, _)| (*l, i64::from(m.health.up))),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_failures",
        "Times the tunnel went from up to down.",
        None,
        rows.iter().map(|(l, m, _)| (*l, m.failures)),
    )?;
    let api: Vec<_> = rows
        .iter()
        .filter_map(|(l, m, _)| m.api.map(|a| ([l[0], ("type", m.kind.as_str())], a)))
        .collect();
    gauges(
        enc,
        "moonfrp_frp_proxy_today_traffic_in",
        "frps's own count of bytes in today (TCP counted when a connection closes; reset daily and on restart).",
        Some(&Unit::Bytes),
        api.iter().map(|(l, a)| (*l, a.today_traffic_in as i64)),
    )?;
    gauges(
        enc,
        "moonfrp_frp_proxy_today_traffic_out",
        "frps's own count of bytes out today (TCP counted when a connection closes; reset daily and on restart).",
        Some(&Unit::Bytes),
        api.iter().map(|(l, a)| (*l, a.today_traffic_out as i64)),
    )?;
    gauges(
        enc,
        "moonfrp_frp_proxy_connections",
        "frps's own count of the proxy's current connections.",
        None,
        api.iter().map(|(l, a)| (*l, a.cur_conns as i64)),
    )
}

pub(super) fn encode(snap: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let all: Vec<Row> = snap
        .tunnels
        .iter()
        .map(|t| Row {
            sample: t,
            port: t.spec.port.to_string(),
        })
        .collect();
    let tcp: Vec<&Row> = all.iter().filter(|t| t.sample.tcp.is_some()).collect();

    super::gauge(
        enc,
        "moonfrp_tunnels",
        "Tunnels watched by this agent.",
        None,
        all.len() as i64,
    )?;
    encode_health(snap, &all, enc)?;
    for (name, unit, dir, field, help) in &TRAFFIC {
        counters(
            enc,
            name,
            help,
            unit.as_ref(),
            all.iter()
                .map(|t| (t.labels(), field(&t.sample.traffic.dir[*dir]))),
        )?;
    }

    let opened = tcp.iter().flat_map(|t| {
        let c = &t.tcp().counters;
        let [tunnel, port, proto] = t.labels();
        [("inbound", c.opened_passive), ("outbound", c.opened_active)]
            .map(|(direction, v)| ([tunnel, port, proto, ("direction", direction)], v))
    });
    counters(
        enc,
        "moonfrp_tunnel_connections_opened",
        "TCP connections established on the tunnel's local port; direction inbound = accepted (passive open), outbound = connected from the port (active open).",
        None,
        opened,
    )?;
    gauges(
        enc,
        "moonfrp_tunnel_connections_active",
        "TCP connections open now on the tunnel's local port.",
        None,
        tcp.iter().map(|t| (t.labels(), t.tcp().active)),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel_connection_duration",
            "Lifetime of closed TCP connections whose open the agent saw.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for t in &tcp {
            let c = &t.tcp().counters;
            let count = c.duration_buckets.iter().sum();
            m.encode_family(&t.labels())?
                .encode_histogram::<NoLabelSet>(
                    c.duration_sum_ns as f64 / 1e9,
                    count,
                    &duration_buckets(&c.duration_buckets),
                    None,
                )?;
        }
    }
    for (name, field, help) in &TCP {
        counters(
            enc,
            name,
            help,
            None,
            tcp.iter().map(|t| (t.labels(), field(t.tcp()))),
        )?;
    }
    encode_peers(&all, enc)
}

/// The busiest peers of each tunnel, only when `kernel.export_peers` asks for them.
fn encode_peers(all: &[Row], enc: &mut DescriptorEncoder) -> fmt::Result {
    if all.iter().all(|t| t.sample.peers.is_empty()) {
        return Ok(());
    }
    let addrs: Vec<Vec<String>> = all
        .iter()
        .map(|t| {
            t.sample
                .peers
                .iter()
                .map(|p| p.address.to_string())
                .collect()
        })
        .collect();
    for (name, dir, help) in [
        (
            "moonfrp_tunnel_peer_receive",
            INGRESS,
            "IP-layer bytes received from one of the tunnel's busiest peers (kernel.export_peers).",
        ),
        (
            "moonfrp_tunnel_peer_transmit",
            EGRESS,
            "IP-layer bytes sent to one of the tunnel's busiest peers (kernel.export_peers).",
        ),
    ] {
        let mut rows: Vec<([(&str, &str); 4], u64)> = Vec::new();
        for (t, a) in all.iter().zip(&addrs) {
            let [tunnel, port, proto] = t.labels();
            for (p, addr) in t.sample.peers.iter().zip(a) {
                rows.push((
                    [tunnel, port, proto, ("peer", addr.as_str())],
                    p.counters.dir[dir].bytes,
                ));
            }
        }
        counters(enc, name, help, Some(&Unit::Bytes), rows)?;
    }
    Ok(())
}
