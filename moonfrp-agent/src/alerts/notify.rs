//! Notification channels. Each channel has its own task and bounded queue: a slow or dead channel
//! fills its own queue (further notifications are dropped and counted) and never delays the
//! collection or another channel. HTTP and email deliveries are retried with exponential
//! backoff (email only on transient failures); the exec hook is killed at its timeout.
use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt as _, sync::mpsc};
use tracing::{debug, warn};

use super::{
    config::{ChannelConfig, ChannelKind},
    eval::Alert,
    state::Severity,
};

/// Deliveries by channel and result (`sent`, `failed`, `dropped`).
#[derive(Debug, Default)]
pub struct Counts(Mutex<BTreeMap<(String, &'static str), u64>>);

impl Counts {
    pub fn add(&self, channel: &str, result: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((channel.to_owned(), result))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// Queued notifications per channel.
const QUEUE: usize = 64;

struct Channel {
    cfg: Arc<ChannelConfig>,
    tx: mpsc::Sender<Vec<Alert>>,
    /// Alertmanager: when the firing alerts were last re-sent.
    last_resend: i64,
}

pub struct Dispatcher {
    channels: Vec<Channel>,
    counts: Arc<Counts>,
}

impl Dispatcher {
    /// Starts one task per channel on the current runtime.
    pub fn start(cfgs: &[ChannelConfig], counts: Arc<Counts>, listen: &str) -> Self {
        let client = http_client();
        let channels = cfgs
            .iter()
            .map(|cfg| {
                let cfg = Arc::new(cfg.clone());
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(run_channel(
                    cfg.clone(),
                    rx,
                    client.clone(),
                    counts.clone(),
                    super::generator(listen),
                ));
                Channel {
                    cfg,
                    tx,
                    last_resend: i64::MIN,
                }
            })
            .collect();
        Self { channels, counts }
    }

    /// Queues this evaluation's notifications on every channel that wants them; Alertmanager
    /// channels also get every firing alert again once per `resend`, as Prometheus does.
    pub fn dispatch(&mut self, now: i64, notifications: &[Alert], active: &[Arc<Alert>]) {
        for ch in &mut self.channels {
            let mut batch: Vec<Alert> = notifications
                .iter()
                .filter(|a| ch.cfg.wants(a))
                .cloned()
                .collect();
            if ch.cfg.kind == ChannelKind::Alertmanager
                && now.saturating_sub(ch.last_resend) >= ch.cfg.resend_ms()
            {
                ch.last_resend = now;
                for a in active
                    .iter()
                    .filter(|a| a.state == "firing" && ch.cfg.wants(a))
                {
                    if !batch.iter().any(|b| b.labels == a.labels) {
                        batch.push((**a).clone());
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if ch.tx.try_send(batch).is_err() {
                warn!(channel = %ch.cfg.name, "alert channel queue is full: notification dropped");
                self.counts.add(&ch.cfg.name, "dropped");
            }
        }
    }
}

async fn run_channel(
    cfg: Arc<ChannelConfig>,
    mut rx: mpsc::Receiver<Vec<Alert>>,
    client: Option<reqwest::Client>,
    counts: Arc<Counts>,
    generator: String,
) {
    while let Some(batch) = rx.recv().await {
        match deliver(&cfg, client.as_ref(), &batch, &generator, false).await {
            Ok(answer) => {
                debug!(channel = %cfg.name, answer = %answer, "alert notification sent");
                counts.add(&cfg.name, "sent");
            }
            Err(e) => {
                warn!(channel = %cfg.name, error = %e, "alert notification failed");
                counts.add(&cfg.name, "failed");
            }
        }
    }
}

/// The HTTP client of the channels.
pub fn http_client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("moonfrp-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

/// Sends `batch` through the channel, retrying what may pass later; answers what the channel
/// said (`HTTP 200 OK`, `250 2.0.0 queued`, `exit status 0`). `test` marks an email as a test
/// (the other kinds carry the mark in the alert itself, [`test_alert`]).
pub async fn deliver(
    cfg: &ChannelConfig,
    client: Option<&reqwest::Client>,
    batch: &[Alert],
    generator: &str,
    test: bool,
) -> Result<String, String> {
    match cfg.kind {
        ChannelKind::Exec => run_hooks(cfg, batch).await,
        ChannelKind::Smtp => mail_with_retries(cfg, batch, test).await,
        kind => match client {
            Some(c) => post_with_retries(cfg, c, &body(kind, &cfg.name, batch, generator)).await,
            None => Err("no HTTP client (TLS setup failed at start)".into()),
        },
    }
}

/// A clearly marked alert for checking a channel: `MoonfrpTestNotification`, label
/// `test="true"`, a summary that says so; it ends by itself five minutes after `now` (Unix ms).
pub fn test_alert(channel: &str, now: i64) -> Alert {
    let labels = BTreeMap::from([
        ("alertname".to_owned(), "MoonfrpTestNotification".to_owned()),
        ("severity".to_owned(), "warning".to_owned()),
        ("test".to_owned(), "true".to_owned()),
        ("channel".to_owned(), channel.to_owned()),
    ]);
    let summary = format!(
        "TEST notification from moonfrp-agent through channel `{channel}`; no alert is firing"
    );
    Alert {
        alertname: "MoonfrpTestNotification".into(),
        state: "firing",
        severity: Severity::Warning,
        value: 0.0,
        threshold: None,
        labels,
        annotations: BTreeMap::from([("summary".to_owned(), summary)]),
        active_since: now,
        ended_at: Some(now + 5 * 60 * 1000),
        event: "firing",
    }
}

async fn mail_with_retries(
    cfg: &ChannelConfig,
    batch: &[Alert],
    test: bool,
) -> Result<String, String> {
    let smtp = cfg
        .smtp
        .as_ref()
        .ok_or("smtp channel without smtp settings")?;
    let mut backoff = cfg.backoff;
    let mut attempt = 0;
    loop {
        match super::email::send(smtp, cfg.timeout, batch, test).await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.transient && attempt < cfg.retries => {
                debug!(channel = %cfg.name, attempt, error = %e.message, "email delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(e) if attempt > 0 => {
                return Err(format!("{} (after {} attempts)", e.message, attempt + 1));
            }
            Err(e) => return Err(e.message),
        }
    }
}

async fn post_with_retries(
    cfg: &ChannelConfig,
    client: &reqwest::Client,
    body: &Value,
) -> Result<String, String> {
    let url = cfg.post_url();
    let mut backoff = cfg.backoff;
    let mut last = String::new();
    for attempt in 0..=cfg.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        match client
            .post(&url)
            .timeout(cfg.timeout)
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Ok(format!(
                    "HTTP {status}{}{}",
                    if text.trim().is_empty() { "" } else { ": " },
                    crate::untrusted::message(text.trim(), 200)
                ));
            }
            Ok(r) => last = format!("{url}: HTTP {}", r.status()),
            Err(e) => last = format!("{url}: {e}"),
        }
        debug!(channel = %cfg.name, attempt, error = %last, "alert delivery failed; retrying");
    }
    Err(format!("{last} (after {} attempts)", cfg.retries + 1))
}

fn rfc3339(ms: i64) -> String {
    crate::time::rfc3339(crate::time::ms_to_s(ms))
}

fn alert_json(a: &Alert) -> Value {
    json!({
        "status": if a.state == "resolved" { "resolved" } else { "firing" },
        "alertname": a.alertname,
        "severity": a.severity,
        "value": a.value,
        "threshold": a.threshold,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.active_since),
        "endsAt": a.ended_at.map(rfc3339),
    })
}

fn headline(a: &Alert) -> String {
    let status = if a.state == "resolved" {
        "RESOLVED"
    } else {
        "FIRING"
    };
    let summary = a.annotations.get("summary").map_or("", String::as_str);
    format!(
        "[{status}] {} ({}): {summary}",
        a.alertname,
        a.severity.as_str()
    )
}

const fn color(a: &Alert) -> u32 {
    match (a.state.as_bytes()[0], a.severity) {
        (b'r', _) => 0x2e_b8_86,
        (_, Severity::Critical) => 0xd0_00_00,
        (_, Severity::Warning) => 0xe0_a0_00,
    }
}

/// The request body of each HTTP channel kind (README: Alerts, channels).
pub fn body(kind: ChannelKind, receiver: &str, batch: &[Alert], generator: &str) -> Value {
    match kind {
        ChannelKind::Webhook | ChannelKind::Exec | ChannelKind::Smtp => {
            let firing = batch.iter().any(|a| a.state != "resolved");
            json!({
                "version": "1",
                "receiver": receiver,
                "status": if firing { "firing" } else { "resolved" },
                "alerts": batch.iter().map(alert_json).collect::<Vec<_>>(),
            })
        }
        ChannelKind::Slack => json!({
            "text": batch.iter().map(headline).collect::<Vec<_>>().join("\n"),
            "attachments": batch.iter().map(|a| json!({
                "color": format!("#{:06x}", color(a)),
                "title": headline(a),
                "text": details(a),
            })).collect::<Vec<_>>(),
        }),
        ChannelKind::Discord => json!({
            "content": batch.iter().map(headline).collect::<Vec<_>>().join("\n"),
            "embeds": batch.iter().take(10).map(|a| json!({
                "title": headline(a),
                "description": details(a),
                "color": color(a),
            })).collect::<Vec<_>>(),
        }),
        ChannelKind::Alertmanager => Value::Array(
            batch
                .iter()
                .map(|a| {
                    let mut v = json!({
                        "labels": a.labels,
                        "annotations": a.annotations,
                        "startsAt": rfc3339(a.active_since),
                        "generatorURL": generator,
                    });
                    if let Some(end) = a.ended_at {
                        v["endsAt"] = json!(rfc3339(end));
                    }
                    v
                })
                .collect(),
        ),
    }
}

fn details(a: &Alert) -> String {
    let labels: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "value {} (threshold {}), since {}; {}",
        super::rules::format_value(a.value),
        a.threshold
            .map_or_else(|| "-".into(), super::rules::format_value),
        rfc3339(a.active_since),
        labels.join(", ")
    )
}

/// Runs the hook once per alert: the alert in `MOONFRP_ALERT_*` variables and as JSON on stdin.
async fn run_hooks(cfg: &ChannelConfig, batch: &[Alert]) -> Result<String, String> {
    for a in batch {
        run_hook(cfg, a).await?;
    }
    Ok(format!("{} exited with status 0", cfg.command[0]))
}

async fn run_hook(cfg: &ChannelConfig, a: &Alert) -> Result<(), String> {
    let (program, args) = cfg.command.split_first().ok_or("empty command")?;
    let status = if a.state == "resolved" {
        "resolved"
    } else {
        "firing"
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("MOONFRP_ALERT_NAME", &a.alertname)
        .env("MOONFRP_ALERT_STATUS", status)
        .env("MOONFRP_ALERT_SEVERITY", a.severity.as_str())
        .env("MOONFRP_ALERT_VALUE", super::rules::format_value(a.value))
        .env(
            "MOONFRP_ALERT_TUNNEL",
            a.labels.get("tunnel").map_or("", String::as_str),
        )
        .env(
            "MOONFRP_ALERT_SUMMARY",
            a.annotations.get("summary").map_or("", String::as_str),
        )
        .env(
            "MOONFRP_ALERT_LABELS",
            serde_json::to_string(&a.labels).unwrap_or_default(),
        )
        .env("MOONFRP_ALERT_STARTS_AT", rfc3339(a.active_since))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let json = alert_json(a).to_string();
        // A hook that does not read its input is fine.
        let _ = stdin.write_all(json.as_bytes()).await;
    }
    match tokio::time::timeout(cfg.timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("{program} exited with {s}")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "{program} did not finish within {:?}; killed",
                cfg.timeout
            ))
        }
    }
}
