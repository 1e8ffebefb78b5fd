//! Alerting: rules evaluated on every snapshot by the agent itself (no Prometheus needed), an
//! inactive → pending → firing → resolved state machine per alert instance, and notification
//! channels (webhook, Slack, Discord, Alertmanager API v2, exec hook, email) that never hold up the
//! collection.
pub mod config;
pub mod email;
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
    /// The channels, for test notifications.
    pub channels: Vec<config::ChannelConfig>,
    /// Where Alertmanager's `generatorURL` points.
    pub generator: String,
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
            channels: cfg.channels.clone(),
            generator: generator(listen),
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

/// Alertmanager's `generatorURL` for an agent listening on `listen`.
pub fn generator(listen: &str) -> String {
    format!("http://{listen}/api/v1/alerts")
}

/// What one channel answered to a test notification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TestResult {
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub ok: bool,
    /// The channel's answer when it took the notification, the error when not.
    pub answer: String,
}

/// Why no test was sent.
#[derive(Debug, PartialEq, Eq)]
pub enum TestError {
    NoChannels,
    UnknownChannel { name: String, known: Vec<String> },
}

impl std::fmt::Display for TestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoChannels => f.write_str(
                "no alert channel is configured; add [[alerts.channels]] (README: Alerts)",
            ),
            Self::UnknownChannel { name, known } => write!(
                f,
                "no alert channel is named `{}`; the channels are: {}",
                crate::untrusted::shown(name),
                known.join(", ")
            ),
        }
    }
}

/// Sends a clearly marked test notification ([`notify::test_alert`]) through `only` (a channel
/// name) or every channel, one after the other, each with its own retries; answers what each
/// channel said.
pub async fn send_tests(
    channels: &[config::ChannelConfig],
    only: Option<&str>,
    generator: &str,
) -> Result<Vec<TestResult>, TestError> {
    if channels.is_empty() {
        return Err(TestError::NoChannels);
    }
    let chosen: Vec<&config::ChannelConfig> = channels
        .iter()
        .filter(|c| only.is_none_or(|n| c.name == n))
        .collect();
    if chosen.is_empty() {
        return Err(TestError::UnknownChannel {
            name: only.unwrap_or_default().to_owned(),
            known: channels.iter().map(|c| c.name.clone()).collect(),
        });
    }
    let client = notify::http_client();
    let now = crate::time::unix_ms(std::time::SystemTime::now());
    let mut results = Vec::new();
    for ch in chosen {
        let alert = notify::test_alert(&ch.name, now);
        let r = notify::deliver(ch, client.as_ref(), &[alert], generator, true).await;
        match &r {
            Ok(a) => tracing::info!(channel = %ch.name, answer = %a, "test notification sent"),
            Err(e) => tracing::warn!(channel = %ch.name, error = %e, "test notification failed"),
        }
        results.push(TestResult {
            channel: ch.name.clone(),
            kind: ch.kind.as_str().to_owned(),
            ok: r.is_ok(),
            answer: r.unwrap_or_else(|e| e),
        });
    }
    Ok(results)
}
