//! Exposition of the latest snapshot: a scrape-time collector for prometheus-client (OpenMetrics),
//! and the Prometheus text format 0.0.4 derived from it for scrapers that do not ask for
//! OpenMetrics. Kernel counters are cumulative, so they are exported as const counters.
use std::{fmt, sync::Arc};

use moonfrp_common::{DURATION_BUCKETS, EGRESS, INGRESS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::{Registry, Unit},
};

use crate::snapshot::{Latest, Snapshot, TunnelSample};

/// Reads the latest snapshot at scrape time.
#[derive(Debug)]
pub struct SnapshotCollector {
    latest: Arc<Latest>,
}

/// A registry with moonfrp's collector in it.
pub fn registry(latest: Arc<Latest>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SnapshotCollector { latest }));
    r
}

/// Encodes the registry as OpenMetrics text (with `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

type Labels<'a> = [(&'static str, &'a str); 3];

/// Label values of one tunnel, computed once per scrape.
struct TunnelLabels<'a> {
    sample: &'a TunnelSample,
    port: String,
}

impl TunnelLabels<'_> {
    fn labels(&self) -> Labels<'_> {
        [
            ("tunnel", &self.sample.spec.name),
            ("port", &self.port),
            ("proto", self.sample.spec.proto.as_str()),
        ]
    }
}

fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: N,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// Histogram upper bounds exported for connection durations, in kernel bucket indexes: every
/// second log2 bucket (1 ms, 4 ms, 16 ms, … ≈ 18.6 h), then +Inf.
const EXPORTED_BOUNDS: usize = DURATION_BUCKETS / 2;

/// (upper bound in seconds, count in that bucket) from the kernel's log2-millisecond buckets:
/// export bucket k covers kernel buckets up to 2k, i.e. durations below 4^k ms.
fn duration_buckets(kernel: &[u64; DURATION_BUCKETS]) -> Vec<(f64, u64)> {
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

fn encode_tunnels(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let all: Vec<TunnelLabels> = s
        .tunnels
        .iter()
        .map(|t| TunnelLabels {
            sample: t,
            port: t.spec.port.to_string(),
        })
        .collect();
    let tcp: Vec<&TunnelLabels> = all.iter().filter(|t| t.sample.tcp.is_some()).collect();

    gauge(
        enc,
        "moonfrp_tunnels",
        "Tunnels watched by this agent.",
        None,
        all.len() as i64,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel",
            "Watched tunnels and where they were defined.",
            None,
            MetricType::Info,
        )?;
        for t in &all {
            let l = [
                ("tunnel", t.sample.spec.name.as_str()),
                ("port", t.port.as_str()),
                ("proto", t.sample.spec.proto.as_str()),
                ("source", t.sample.spec.source.as_str()),
            ];
            m.encode_info(&l)?;
        }
    }

    let bytes = Some(&Unit::Bytes);
    let traffic = |dir: usize, f: fn(&moonfrp_common::DirCounters) -> u64| {
        all.iter()
            .map(move |t| (t.labels(), f(&t.sample.traffic.dir[dir])))
    };
    counters(
        enc,
        "moonfrp_tunnel_receive",
        "IP-layer bytes received on the tunnel's local port (headers of every segment included).",
        bytes,
        traffic(INGRESS, |d| d.bytes),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_transmit",
        "IP-layer bytes sent from the tunnel's local port (headers of every segment included).",
        bytes,
        traffic(EGRESS, |d| d.bytes),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_receive_payload",
        "TCP/UDP payload bytes received on the tunnel's local port.",
        bytes,
        traffic(INGRESS, |d| d.payload_bytes),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_transmit_payload",
        "TCP/UDP payload bytes sent from the tunnel's local port.",
        bytes,
        traffic(EGRESS, |d| d.payload_bytes),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_receive_packets",
        "Packets (GSO/GRO segments counted one by one) received on the tunnel's local port.",
        None,
        traffic(INGRESS, |d| d.packets),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_transmit_packets",
        "Packets (GSO/GRO segments counted one by one) sent from the tunnel's local port.",
        None,
        traffic(EGRESS, |d| d.packets),
    )?;

    let tcp_rows = |f: fn(&crate::snapshot::TcpSample) -> u64| {
        tcp.iter().map(move |t| {
            (
                t.labels(),
                f(t.sample.tcp.as_ref().expect("filtered on tcp")),
            )
        })
    };
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel_connections_opened",
            "TCP connections established on the tunnel's local port; direction inbound = accepted (passive open), outbound = connected from the port (active open).",
            None,
            MetricType::Counter,
        )?;
        for t in &tcp {
            let c = &t.sample.tcp.as_ref().expect("filtered on tcp").counters;
            for (direction, v) in [("inbound", c.opened_passive), ("outbound", c.opened_active)] {
                let [a, b, p] = t.labels();
                ConstCounter::new(v).encode(m.encode_family(&[
                    a,
                    b,
                    p,
                    ("direction", direction),
                ])?)?;
            }
        }
    }
    counters(
        enc,
        "moonfrp_tunnel_connections_closed",
        "TCP connections on the tunnel's local port that were established and have closed.",
        None,
        tcp_rows(|t| t.counters.closed),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel_connections_active",
            "TCP connections open now on the tunnel's local port.",
            None,
            MetricType::Gauge,
        )?;
        for t in &tcp {
            ConstGauge::new(t.sample.tcp.as_ref().expect("filtered on tcp").active)
                .encode(m.encode_family(&t.labels())?)?;
        }
    }
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_tunnel_connection_duration",
            "Lifetime of closed TCP connections whose open the agent saw.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for t in &tcp {
            let c = &t.sample.tcp.as_ref().expect("filtered on tcp").counters;
            let buckets = duration_buckets(&c.duration_buckets);
            let count = c.duration_buckets.iter().sum();
            m.encode_family(&t.labels())?
                .encode_histogram::<NoLabelSet>(
                    c.duration_sum_ns as f64 / 1e9,
                    count,
                    &buckets,
                    None,
                )?;
        }
    }
    counters(
        enc,
        "moonfrp_tunnel_connections_refused",
        "Connection attempts answered with RST because nothing listened on the port.",
        None,
        tcp_rows(|t| t.counters.refused),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_resets_sent",
        "RSTs sent by sockets on the tunnel's local port (refused connections not included).",
        None,
        tcp_rows(|t| t.counters.resets_sent),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_resets_received",
        "RSTs received by sockets on the tunnel's local port.",
        None,
        tcp_rows(|t| t.counters.resets_received),
    )?;
    counters(
        enc,
        "moonfrp_tunnel_retransmits",
        "TCP segments retransmitted by sockets on the tunnel's local port.",
        None,
        tcp_rows(|t| t.counters.retransmits),
    )?;
    Ok(())
}

fn encode_agent(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_agent_probe_attached",
            "1 if the kernel probe is attached, 0 if it was skipped (the reason is in the log).",
            None,
            MetricType::Gauge,
        )?;
        for p in &s.probes {
            ConstGauge::new(i64::from(p.attached))
                .encode(m.encode_family(&[("probe", p.probe)])?)?;
        }
    }
    {
        let m = enc.encode_descriptor(
            "moonfrp_agent_snapshots",
            "Snapshots taken since the agent started.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.seq).encode(m)?;
    }
    gauge(
        enc,
        "moonfrp_agent_snapshot_duration",
        "Time taken to build the latest snapshot.",
        Some(&Unit::Seconds),
        s.build_duration.as_secs_f64(),
    )?;
    let taken = s
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge(
        enc,
        "moonfrp_agent_last_snapshot_timestamp",
        "Unix time of the latest snapshot.",
        Some(&Unit::Seconds),
        taken,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "moonfrp_agent_collection_errors",
            "Failed reads since start, by source.",
            None,
            MetricType::Counter,
        )?;
        for (source, n) in &s.agent.errors {
            ConstCounter::new(*n).encode(m.encode_family(&[("source", *source)])?)?;
        }
    }
    gauge(
        enc,
        "moonfrp_agent_config_last_reload_successful",
        "1 if the last configuration load was accepted.",
        None,
        i64::from(s.agent.config_ok),
    )?;
    gauge(
        enc,
        "moonfrp_agent_watch_slots_capacity",
        "Kernel counter slots (watched port/protocol pairs) available.",
        None,
        i64::from(s.agent.slots_capacity),
    )?;
    gauge(
        enc,
        "moonfrp_agent_watch_slots_used",
        "Kernel counter slots in use.",
        None,
        i64::from(s.agent.slots_used),
    )?;

    if let Some(p) = &s.process {
        let m = enc.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent by the agent.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(m)?;
        gauge(
            enc,
            "process_resident_memory",
            "Resident memory size of the agent.",
            Some(&Unit::Bytes),
            p.resident_bytes as i64,
        )?;
        gauge(
            enc,
            "process_virtual_memory",
            "Virtual memory size of the agent.",
            Some(&Unit::Bytes),
            p.virtual_bytes as i64,
        )?;
        gauge(
            enc,
            "process_open_fds",
            "Open file descriptors of the agent.",
            None,
            p.open_fds as i64,
        )?;
        if let Some(max) = p.max_fds {
            gauge(
                enc,
                "process_max_fds",
                "Maximum number of open file descriptors of the agent.",
                None,
                max as i64,
            )?;
        }
        gauge(
            enc,
            "process_start_time",
            "Start time of the agent since the Unix epoch.",
            Some(&Unit::Seconds),
            p.start_time_seconds,
        )?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        {
            let m = enc.encode_descriptor(
                "moonfrp_agent_build",
                "Version of the running agent.",
                None,
                MetricType::Info,
            )?;
            Info::new([("version", env!("CARGO_PKG_VERSION"))]).encode(m)?;
        }
        let Some(s) = self.latest.get() else {
            return Ok(());
        };
        encode_tunnels(&s, &mut enc)?;
        encode_agent(&s, &mut enc)
    }
}

/// Rewrites OpenMetrics text into Prometheus text format 0.0.4: counter families get their
/// `_total` name, info families become gauges named `*_info`, `# UNIT` and `# EOF` go away.
/// Sample lines are the same in both formats for the types this agent emits.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, ty) = match ty {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "stateset" => ("", "gauge"),
                other => ("", other),
            };
            if let Some((help_name, help)) = pending_help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {name}{suffix} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {ty}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
