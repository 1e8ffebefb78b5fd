//! Per-tunnel series.
use moonfrp_common::{DURATION_BUCKETS, DirCounters, EGRESS, INGRESS};

use super::Settings;
use crate::{
    frp::discovery::Role,
    series::{Builder, Histogram, Labels, Text, Unit, extend},
    snapshot::{Snapshot, TcpSample, TunnelMeta, TunnelSample},
};

/// A tunnel and its labels, made once per snapshot and shared by all its series.
struct Row<'a> {
    sample: &'a TunnelSample,
    labels: Labels,
}

impl Row<'_> {
    fn labels(&self) -> Labels {
        self.labels.clone()
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

/// The histogram's buckets from the kernel's log2-millisecond ones: for each chosen kernel
/// bucket `b` (bound 2^b ms) the connections shorter than that, cumulative; then +Inf.
pub(super) fn duration_buckets(
    kernel: &[u64; DURATION_BUCKETS],
    bounds: &[usize],
) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    for &b in bounds {
        let below: u64 = kernel[..=b.min(DURATION_BUCKETS - 1)].iter().sum();
        out.push(((1u64 << b) as f64 / 1000.0, below));
    }
    out.push((f64::INFINITY, kernel.iter().sum()));
    out
}

/// Info, up, failures and frps's own numbers, for watched tunnels and for portless FRP ones
/// (which have empty `port` and `proto`).
fn build_health(snap: &Snapshot, all: &[Row], b: &mut Builder) {
    let rows: Vec<(Labels, &TunnelMeta, &'static str)> = all
        .iter()
        .map(|t| (t.labels(), &t.sample.meta, t.sample.spec.source.as_str()))
        .chain(snap.portless.iter().map(|p| {
            (
                Labels::from([
                    ("tunnel", Text::of(&p.name)),
                    ("port", Text::Static("")),
                    ("proto", Text::Static("")),
                ]),
                &p.meta,
                "frps-api",
            )
        }))
        .collect();
    b.info(
        "moonfrp_tunnel",
        "Tunnels: where they come from, FRP's type, role and status, and why one is down.",
        rows.iter().map(|(labels, meta, source)| {
            extend(
                labels,
                [
                    ("source", Text::Static(source)),
                    ("type", Text::of(&meta.kind)),
                    ("role", Text::Static(meta.role.map_or("", Role::as_str))),
                    ("status", Text::of(meta.frp_status.as_deref().unwrap_or(""))),
                    ("reason", Text::of(&meta.health.reason)),
                ],
            )
        }),
    );
    b.gauges(
        "moonfrp_tunnel_up",
        "1 if the tunnel works: FRP says so (when it says), something listens on its port, and no connection was refused since the last interval.",
        None,
        rows.iter().map(|(l, m, _)| (l.clone(), i64::from(m.health.up))),
    );
    b.counters(
        "moonfrp_tunnel_failures",
        "Times the tunnel went from up to down.",
        None,
        rows.iter().map(|(l, m, _)| (l.clone(), m.failures)),
    );
    let api: Vec<(Labels, _)> = rows
        .iter()
        .filter_map(|(l, m, _)| {
            m.api
                .map(|a| (Labels::from([l[0].clone(), ("type", Text::of(&m.kind))]), a))
        })
        .collect();
    b.gauges(
        "moonfrp_frp_proxy_today_traffic_in",
        "frps's own count of bytes in today (TCP counted when a connection closes; reset daily and on restart).",
        Some(Unit::Bytes),
        api.iter()
            .map(|(l, a)| (l.clone(), a.today_traffic_in as i64)),
    );
    b.gauges(
        "moonfrp_frp_proxy_today_traffic_out",
        "frps's own count of bytes out today (TCP counted when a connection closes; reset daily and on restart).",
        Some(Unit::Bytes),
        api.iter()
            .map(|(l, a)| (l.clone(), a.today_traffic_out as i64)),
    );
    b.gauges(
        "moonfrp_frp_proxy_connections",
        "frps's own count of the proxy's current connections.",
        None,
        api.into_iter().map(|(l, a)| (l, a.cur_conns as i64)),
    );
}

pub(super) fn build(snap: &Snapshot, settings: &Settings, b: &mut Builder) {
    let all: Vec<Row> = snap
        .tunnels
        .iter()
        .map(|t| Row {
            sample: t,
            labels: Labels::from([
                ("tunnel", Text::of(&t.spec.name)),
                ("port", Text::from(t.spec.port.to_string())),
                ("proto", Text::Static(t.spec.proto.as_str())),
            ]),
        })
        .collect();
    let tcp: Vec<&Row> = all.iter().filter(|t| t.sample.tcp.is_some()).collect();

    b.gauge(
        "moonfrp_tunnels",
        "Tunnels watched by this agent.",
        None,
        all.len() as i64,
    );
    build_health(snap, &all, b);
    for (name, unit, dir, field, help) in &TRAFFIC {
        let wanted = if name.ends_with("_payload") {
            settings.payload
        } else if name.ends_with("_packets") {
            settings.packets
        } else {
            true
        };
        if !wanted {
            continue;
        }
        b.counters(
            name,
            help,
            *unit,
            all.iter()
                .map(|t| (t.labels(), field(&t.sample.traffic.dir[*dir]))),
        );
    }

    let opened = tcp.iter().flat_map(|t| {
        let c = &t.tcp().counters;
        [("inbound", c.opened_passive), ("outbound", c.opened_active)].map(|(direction, v)| {
            (
                extend(&t.labels, [("direction", Text::Static(direction))]),
                v,
            )
        })
    });
    b.counters(
        "moonfrp_tunnel_connections_opened",
        "TCP connections established on the tunnel's local port; direction inbound = accepted (passive open), outbound = connected from the port (active open).",
        None,
        opened,
    );
    b.gauges(
        "moonfrp_tunnel_connections_active",
        "TCP connections open now on the tunnel's local port.",
        None,
        tcp.iter().map(|t| (t.labels(), t.tcp().active)),
    );
    if settings.connection_duration {
        b.histograms(
            "moonfrp_tunnel_connection_duration",
            "Lifetime of closed TCP connections whose open the agent saw.",
            Some(Unit::Seconds),
            tcp.iter().map(|t| {
                let c = &t.tcp().counters;
                (
                    t.labels(),
                    Histogram {
                        sum: c.duration_sum_ns as f64 / 1e9,
                        count: c.duration_buckets.iter().sum(),
                        buckets: duration_buckets(&c.duration_buckets, &settings.duration_buckets),
                    },
                )
            }),
        );
    }
    for (name, field, help) in &TCP {
        b.counters(
            name,
            help,
            None,
            tcp.iter().map(|t| (t.labels(), field(t.tcp()))),
        );
    }
    build_peers(&all, b);
}

/// The busiest peers of each tunnel, only when `kernel.export_peers` asks for them.
fn build_peers(all: &[Row], b: &mut Builder) {
    if all.iter().all(|t| t.sample.peers.is_empty()) {
        return;
    }
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
        let rows = all.iter().flat_map(|t| {
            t.sample.peers.iter().map(move |p| {
                (
                    extend(&t.labels, [("peer", Text::from(p.address.to_string()))]),
                    p.counters.dir[dir].bytes,
                )
            })
        });
        b.counters(name, help, Some(Unit::Bytes), rows);
    }
}
