//! The alert engine's own series.
use std::{collections::BTreeMap, fmt, sync::atomic::Ordering::Relaxed};

use prometheus_client::encoding::DescriptorEncoder;

use super::{counter, counters, gauge, gauges};
use crate::alerts::Shared;

pub(super) fn encode(s: &Shared, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "moonfrp_alert_rules",
        "Alert rules evaluated on every snapshot.",
        None,
        i64::try_from(s.rules).unwrap_or(i64::MAX),
    )?;
    let mut firing: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for a in s.active().iter().filter(|a| a.state == "firing") {
        *firing
            .entry((a.alertname.clone(), a.severity.as_str()))
            .or_default() += 1;
    }
    gauges(
        enc,
        "moonfrp_alerts_active",
        "Firing alert instances, by rule and severity.",
        None,
        firing
            .iter()
            .map(|((name, sev), n)| ([("alertname", name.as_str()), ("severity", *sev)], *n)),
    )?;
    let sent = s.notifications.snapshot();
    counters(
        enc,
        "moonfrp_alert_notifications",
        "Notifications by channel and result: sent, failed (after retries or the hook's timeout), dropped (queue full).",
        None,
        sent.iter()
            .map(|((ch, result), n)| ([("channel", ch.as_str()), ("result", *result)], *n)),
    )?;
    counter(
        enc,
        "moonfrp_alerts_tunnel_failures",
        "TunnelDown alerts that fired.",
        None,
        s.tunnel_failures.load(Relaxed),
    )
}
