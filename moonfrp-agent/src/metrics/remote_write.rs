//! Each remote_write endpoint's own series, named as Prometheus' remote storage reports its own.
use std::sync::atomic::Ordering::Relaxed;

use crate::{
    remote_write::Stats,
    series::{Builder, Text, Unit},
};

pub(super) fn build(endpoints: &[std::sync::Arc<Stats>], b: &mut Builder) {
    if endpoints.is_empty() {
        return;
    }
    let url = |s: &Stats| Text::of(&s.url);
    b.counters(
        "moonfrp_remote_write_samples",
        "Samples by what became of them: sent (the receiver took them), retried (sent again after a 5xx, a 429 or a network error), failed (refused with a 4xx: not sent again), dropped (the queue was full).",
        None,
        endpoints.iter().flat_map(|s| {
            [
                ("sent", s.sent.load(Relaxed)),
                ("retried", s.retried.load(Relaxed)),
                ("failed", s.failed.load(Relaxed)),
                ("dropped", s.dropped.load(Relaxed)),
            ]
            .map(|(result, n)| ([("url", url(s)), ("result", Text::from(result))], n))
        }),
    );
    b.gauges(
        "moonfrp_remote_write_samples_pending",
        "Samples queued for the endpoint.",
        None,
        endpoints
            .iter()
            .map(|s| ([("url", url(s))], s.pending.load(Relaxed))),
    );
    b.gauges(
        "moonfrp_remote_write_last_send_timestamp",
        "When the receiver last took a request (Unix seconds; 0 before the first).",
        Some(Unit::Seconds),
        endpoints.iter().map(|s| {
            (
                [("url", url(s))],
                s.last_send_ms.load(Relaxed) as f64 / 1000.0,
            )
        }),
    );
    b.gauges(
        "moonfrp_remote_write_highest_sent_timestamp",
        "Newest sample timestamp the receiver took (Unix seconds; 0 before the first).",
        Some(Unit::Seconds),
        endpoints.iter().map(|s| {
            (
                [("url", url(s))],
                s.highest_sent_ms.load(Relaxed) as f64 / 1000.0,
            )
        }),
    );
}
