//! Alerting: rules evaluated on every snapshot by the agent itself (no Prometheus needed), an
//! inactive → pending → firing → resolved state machine per alert instance, and notification
//! channels (webhook, Slack, Discord, Alertmanager API v2, exec hook) that never hold up the
//! collection.
pub mod config;
pub mod eval;
pub mod notify;
pub mod rules;
pub mod state;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering::Relaxed},
};

pub use config::AlertsConfig;
use eval::{Alert, Engine};
use notify::{Counts, Dispatcher};

/// What the API and `/metrics` read.
#[derive(Debug, Default)]
pub struct Shared {
    active: Mutex<Vec<Arc<Alert>>>,
    pub notifications: Arc<Counts>,
    /// TunnelDown alerts that fired.
    pub tunnel_failures: AtomicU64,
    pub rules: usize,
}

impl Shared {
    /// Pending and firing alerts, as of the latest evaluation.
    pub fn active(&self) -> Vec<Arc<Alert>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub struct Alerts {
    engine: Engine,
    dispatcher: Dispatcher,
    shared: Arc<Shared>,
}

impl Alerts {
    /// Starts the channel tasks (on the current runtime).
    pub fn start(cfg: &AlertsConfig, listen: &str) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let shared = Arc::new(Shared {
            rules: cfg.rules.len(),
            ..Shared::default()
        });
        Self {
            engine: Engine::new(cfg.rules.clone(), ms(cfg.repeat_interval), ms(cfg.cooldown)),
            dispatcher: Dispatcher::start(&cfg.channels, shared.notifications.clone(), listen),
            shared,
        }
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Evaluates one snapshot's series taken at `now` (Unix ms), queues the notifications,
    /// and returns them (for the history's alert log).
    pub fn evaluate(&mut self, now: i64, series: &crate::series::Series) -> Vec<Alert> {
        let e = self.engine.evaluate(now, series);
        for n in &e.notifications {
            tracing::info!(alert = %n.alertname, event = n.event, severity = n.severity.as_str(), value = n.value, labels = ?n.labels, "alert");
            if n.alertname == "TunnelDown" && n.event == "firing" {
                self.shared.tunnel_failures.fetch_add(1, Relaxed);
            }
        }
        self.dispatcher.dispatch(now, &e.notifications, &e.active);
        *self
            .shared
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e.active;
        e.notifications
    }
}
