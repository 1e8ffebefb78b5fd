//! The alert engine's own series.
use std::{collections::BTreeMap, sync::atomic::Ordering::Relaxed};

use crate::{
    alerts::Shared,
    series::{Builder, Text},
};

pub(super) fn build(s: &Shared, b: &mut Builder) {
    b.gauge(
        "moonfrp_alert_rules",
        "Alert rules evaluated on every snapshot.",
        None,
        i64::try_from(s.rules).unwrap_or(i64::MAX),
    );
    let mut firing: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for a in s.active().iter().filter(|a| a.state == "firing") {
        *firing
            .entry((a.alertname.clone(), a.severity.as_str()))
            .or_default() += 1;
    }
    b.gauges(
        "moonfrp_alerts_active",
        "Firing alert instances, by rule and severity.",
        None,
        firing.iter().map(|((name, sev), n)| {
            (
                [
                    ("alertname", Text::of(name)),
                    ("severity", Text::Static(sev)),
                ],
                *n,
            )
        }),
    );
    let sent = s.notifications.snapshot();
    b.counters("moonfrp_alert_notifications",
        "Notifications by channel and result: sent, failed (after retries or the hook's timeout), dropped (queue full).",
        None,
        sent.iter()
            .map(|((ch, result), n)| ([("channel", Text::of(ch)), ("result", Text::Static(result))], *n)),
    );
    b.counter(
        "moonfrp_alerts_tunnel_failures",
        "TunnelDown alerts that fired.",
        None,
        s.tunnel_failures.load(Relaxed),
    );
}
