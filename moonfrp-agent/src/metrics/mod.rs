//! Exposition of the latest snapshot: a scrape-time collector for prometheus-client (OpenMetrics),
//! and the Prometheus text format 0.0.4 derived from it for scrapers that do not ask for
//! OpenMetrics. Kernel counters are cumulative, so they are exported as const counters.
mod agent;
mod alerts;
mod history;
pub mod names;
mod system;
mod text;
mod tunnels;

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
pub use text::openmetrics_to_text;

use crate::snapshot::Latest;

/// Reads the latest snapshot at scrape time.
#[derive(Debug)]
pub struct SnapshotCollector {
    latest: Arc<Latest>,
    extras: Extras,
}

/// Parts of the agent reported as they are at scrape time, not from the snapshot.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub history: Option<Arc<crate::history::writer::Stats>>,
    pub alerts: Option<Arc<crate::alerts::Shared>>,
}

/// A registry with moonfrp's collector in it.
pub fn registry(latest: Arc<Latest>) -> Registry {
    registry_with(latest, Extras::default())
}

/// A registry that also reports the history writer and the alerts.
pub fn registry_with(latest: Arc<Latest>, extras: Extras) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SnapshotCollector { latest, extras }));
    r
}

/// Encodes one snapshot (not necessarily the latest) as OpenMetrics text.
pub fn encode_snapshot(s: Arc<crate::snapshot::Snapshot>) -> String {
    let latest = Arc::new(Latest::default());
    latest.publish_arc(s);
    encode_openmetrics(&registry(latest))
}

/// Encodes the registry as OpenMetrics text (with `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        {
            let mut m = enc.encode_descriptor(
                "moonfrp_agent_build",
                "Version of the running agent.",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        }
        if let Some(h) = &self.extras.history {
            history::encode(h, &mut enc)?;
        }
        if let Some(a) = &self.extras.alerts {
            alerts::encode(a, &mut enc)?;
        }
        let Some(s) = self.latest.get() else {
            return Ok(());
        };
        tunnels::encode(&s, &mut enc)?;
        system::encode(&s.system, &mut enc)?;
        agent::encode(&s, &mut enc)
    }
}

/// One family of counters, one sample per label set.
fn counters<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a, N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One family of gauges, one sample per label set.
fn gauges<'a, L: prometheus_client::encoding::EncodeLabelSet + 'a, N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, N)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: N,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// A counter without labels.
fn counter<N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: N,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

#[cfg(test)]
mod tests;
