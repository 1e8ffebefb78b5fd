//! `/api/v1/alerts`: pending and firing alerts.
use serde_json::json;

use super::{Answer, success};
use crate::time::ms_to_s;

/// `GET /api/v1/alerts`: pending and firing alerts as of the latest evaluation.
pub fn alerts(shared: Option<&crate::alerts::Shared>) -> Answer {
    let active = shared
        .map(crate::alerts::Shared::active)
        .unwrap_or_default();
    success(&json!({
        "enabled": shared.is_some(),
        "alerts": active.iter().map(|a| json!({
            "alertname": a.alertname,
            "state": a.state,
            "severity": a.severity,
            "value": a.value,
            "threshold": a.threshold,
            "since": ms_to_s(a.active_since),
            "labels": a.labels,
            "annotations": a.annotations,
        })).collect::<Vec<_>>(),
    }))
}
