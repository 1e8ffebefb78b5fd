//! `[alerts]`: rules, channels and timings, validated at start with errors that name the rule or
//! channel.
use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{
    eval::Alert,
    rules::{self, Func, Op, Rule},
    state::Severity,
};
use crate::untrusted::shown;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Webhook,
    Slack,
    Discord,
    Alertmanager,
    Exec,
    Smtp,
}

impl ChannelKind {
    /// The `type` that names it in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Alertmanager => "alertmanager",
            Self::Exec => "exec",
            Self::Smtp => "smtp",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// HTTP channels.
    pub url: String,
    /// Exec: program and arguments.
    pub command: Vec<String>,
    /// Empty: every severity.
    pub severities: Vec<Severity>,
    pub matchers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    /// Alertmanager: re-send firing alerts this often.
    pub resend: Duration,
    /// Smtp: server, sender, recipients, templates.
    pub smtp: Option<super::email::SmtpConfig>,
}

impl ChannelConfig {
    pub fn wants(&self, a: &Alert) -> bool {
        (self.severities.is_empty() || self.severities.contains(&a.severity))
            && self
                .matchers
                .iter()
                .all(|(k, v)| a.labels.get(k).is_some_and(|l| l == v))
    }

    pub fn post_url(&self) -> String {
        if self.kind == ChannelKind::Alertmanager {
            format!("{}/api/v2/alerts", self.url.trim_end_matches('/'))
        } else {
            self.url.clone()
        }
    }

    pub fn resend_ms(&self) -> i64 {
        i64::try_from(self.resend.as_millis()).unwrap_or(i64::MAX)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// Built-in rules (minus the disabled ones, replaced by user rules of the same name) and the
    /// user's.
    pub rules: Vec<Rule>,
    pub channels: Vec<ChannelConfig>,
    pub repeat_interval: Duration,
    pub cooldown: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rules: rules::builtin(),
            channels: Vec::new(),
            repeat_interval: Duration::from_hours(4),
            cooldown: Duration::from_mins(5),
        }
    }
}

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    enabled: Option<bool>,
    builtin: Option<bool>,
    #[serde(default)]
    disable: Vec<String>,
    repeat_interval: Option<String>,
    cooldown: Option<String>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    channels: Vec<ChannelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    metric: OneOrMany,
    #[serde(default)]
    matchers: BTreeMap<String, String>,
    function: Option<String>,
    divide_by: Option<String>,
    op: String,
    warning: Option<f64>,
    critical: Option<f64>,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    severities: Vec<String>,
    #[serde(default)]
    matchers: BTreeMap<String, String>,
    timeout: Option<String>,
    retries: Option<u32>,
    backoff: Option<String>,
    resend: Option<String>,
    // smtp (serde's `flatten` does not mix with `deny_unknown_fields`).
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    tls_ca_file: Option<std::path::PathBuf>,
    username: Option<String>,
    password_file: Option<std::path::PathBuf>,
    password_env: Option<String>,
    from: Option<String>,
    to: Option<OneOrMany>,
    subject: Option<String>,
    body: Option<String>,
}

impl ChannelFile {
    fn take_smtp(&mut self) -> super::email::SmtpFile {
        super::email::SmtpFile {
            host: self.host.take(),
            port: self.port.take(),
            tls: self.tls.take(),
            tls_ca_file: self.tls_ca_file.take(),
            username: self.username.take(),
            password_file: self.password_file.take(),
            password_env: self.password_env.take(),
            from: self.from.take(),
            to: self.to.take(),
            subject: self.subject.take(),
            body: self.body.take(),
        }
    }
}

/// A duration in `lo..=hi`, the error naming `what`.
fn duration_in(what: &str, v: &str, lo: Duration, hi: Duration) -> Result<Duration, String> {
    crate::untrusted::duration_in(v, lo, hi).map_err(|p| format!("{what}: {p}"))
}

/// Checks a template (an annotation, an email's subject or body): every `{{` closed, each
/// placeholder a label name or `value`, `threshold`.
pub(crate) fn check_template(key: &str, t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "template `{}`: a `{{{{` is never closed with `}}}}`",
                shown(key)
            ));
        };
        let name = after[..end].trim();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "template `{}`: `{{{{{}}}}}` is not a placeholder; use {{{{value}}}}, {{{{threshold}}}} or a label name such as {{{{tunnel}}}}",
                shown(key),
                shown(name)
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Checks that an exec channel's program exists and can be run.
fn check_program(path: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let p = std::path::Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "`command[0]` = `{}` must be an absolute path (the agent does not search PATH)",
            shown(path)
        ));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(format!(
            "`command[0]` = `{}` is not an executable file",
            shown(path)
        )),
        Err(e) => Err(format!("`command[0]` = `{}`: {e}", shown(path))),
    }
}

/// Validates `[alerts]`; `known` tells whether a metric name exists. Errors name the rule or
/// channel (`alerts.rules[2] (\`TunnelSlow\`): …`).
pub fn parse(f: AlertsFile, known: impl Fn(&str) -> bool) -> Result<AlertsConfig, String> {
    let mut c = AlertsConfig {
        enabled: f.enabled.unwrap_or(true),
        ..AlertsConfig::default()
    };
    if let Some(r) = &f.repeat_interval {
        c.repeat_interval = duration_in(
            "alerts.repeat_interval",
            r,
            Duration::from_mins(1),
            Duration::from_hours(30 * 24),
        )?;
    }
    if let Some(r) = &f.cooldown {
        c.cooldown = duration_in(
            "alerts.cooldown",
            r,
            Duration::ZERO,
            Duration::from_hours(24),
        )?;
    }
    if !f.builtin.unwrap_or(true) {
        c.rules.clear();
    }
    for name in &f.disable {
        if !rules::builtin().iter().any(|r| &r.name == name) {
            return Err(format!(
                "alerts.disable: `{}` is not a built-in rule; they are: {}",
                shown(name),
                rules::builtin()
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    c.rules.retain(|r| !f.disable.contains(&r.name));
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in f.rules.into_iter().enumerate() {
        let origin = format!("alerts.rules[{i}] (`{}`)", shown(&r.name));
        let rule = rule(r, &known).map_err(|p| format!("{origin}: {p}"))?;
        if !names.insert(rule.name.clone()) {
            return Err(format!(
                "{origin}: a rule with this name is already defined"
            ));
        }
        c.rules.retain(|b| b.name != rule.name);
        c.rules.push(rule);
    }
    for (i, ch) in f.channels.into_iter().enumerate() {
        let origin = format!(
            "alerts.channels[{i}]{}",
            ch.name
                .as_ref()
                .map_or_else(String::new, |n| format!(" (`{}`)", shown(n)))
        );
        let ch = channel(ch, i).map_err(|p| format!("{origin}: {p}"))?;
        if c.channels.iter().any(|o| o.name == ch.name) {
            return Err(format!(
                "{origin}: another channel is named `{}`; names identify channels in metrics and logs",
                shown(&ch.name)
            ));
        }
        c.channels.push(ch);
    }
    Ok(c)
}

fn rule(r: RuleFile, known: &impl Fn(&str) -> bool) -> Result<Rule, String> {
    if r.name.is_empty()
        || r.name
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err("the name must be letters, digits and _".into());
    }
    let metrics = match r.metric {
        OneOrMany::One(m) => vec![m],
        OneOrMany::Many(m) => m,
    };
    if metrics.is_empty() {
        return Err("`metric` is empty".into());
    }
    for m in metrics.iter().chain(&r.divide_by) {
        if !known(m) {
            return Err(format!(
                "unknown metric `{}`; use a name from /metrics (README: Metrics), e.g. moonfrp_tunnel_up",
                shown(m)
            ));
        }
    }
    let func = match &r.function {
        None => Func::Value,
        Some(f) => Func::parse(f).ok_or_else(|| {
            format!(
                "function `{}` is unknown; use value, rate or increase",
                shown(f)
            )
        })?,
    };
    let op = Op::parse(&r.op).ok_or_else(|| {
        format!(
            "comparison `{}` is unknown; use >, >=, <, <=, == or !=",
            shown(&r.op)
        )
    })?;
    if r.warning.is_none() && r.critical.is_none() {
        return Err("give a `warning` or a `critical` threshold (or both)".into());
    }
    for (key, t) in [("warning", r.warning), ("critical", r.critical)] {
        if t.is_some_and(|t| !t.is_finite()) {
            return Err(format!("`{key}` must be a finite number, not nan or inf"));
        }
    }
    let for_ = match &r.for_ {
        None => Duration::ZERO,
        Some(d) => duration_in("`for`", d, Duration::ZERO, Duration::from_hours(24))?,
    };
    for (k, t) in &r.annotations {
        check_template(k, t)?;
    }
    let mut annotations = r.annotations;
    annotations
        .entry("summary".into())
        .or_insert_with(|| format!("{} is {{{{value}}}}", metrics.join(" + ")));
    Ok(Rule {
        name: r.name,
        metrics,
        matchers: r.matchers,
        func,
        divide_by: r.divide_by,
        op,
        warning: r.warning,
        critical: r.critical,
        for_,
        labels: r.labels,
        annotations,
    })
}

fn channel(mut ch: ChannelFile, i: usize) -> Result<ChannelConfig, String> {
    let smtp_file = ch.take_smtp();
    let kind = match ch.kind.as_str() {
        "webhook" => ChannelKind::Webhook,
        "slack" => ChannelKind::Slack,
        "discord" => ChannelKind::Discord,
        "alertmanager" => ChannelKind::Alertmanager,
        "exec" => ChannelKind::Exec,
        "smtp" => ChannelKind::Smtp,
        other => {
            return Err(format!(
                "type `{}` is unknown; use webhook, slack, discord, alertmanager, exec or smtp",
                shown(other)
            ));
        }
    };
    let smtp = if kind == ChannelKind::Smtp {
        Some(super::email::parse(smtp_file)?)
    } else if smtp_file.any() {
        return Err(format!(
            "host, port, tls, username, password_*, from, to, subject and body are for smtp channels, not {}",
            ch.kind
        ));
    } else {
        None
    };
    let (url, command) = if kind == ChannelKind::Smtp {
        (String::new(), Vec::new())
    } else if kind == ChannelKind::Exec {
        let cmd = ch.command.unwrap_or_default();
        if cmd.first().is_none_or(String::is_empty) {
            return Err("an exec channel needs `command = [\"/path/to/program\", …]`".into());
        }
        check_program(&cmd[0])?;
        (String::new(), cmd)
    } else {
        let url = ch.url.unwrap_or_default();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(format!(
                "`url` must be an http:// or https:// URL, not `{}`",
                shown(&url)
            ));
        }
        reqwest::Url::parse(&url).map_err(|e| format!("`url` {}: {e}", shown(&url)))?;
        (url, Vec::new())
    };
    let severities = ch
        .severities
        .iter()
        .map(|s| {
            Severity::parse(s).ok_or_else(|| {
                format!(
                    "severity `{}` is unknown; use warning or critical",
                    shown(s)
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ChannelConfig {
        name: ch.name.unwrap_or_else(|| format!("{}-{i}", ch.kind)),
        kind,
        url,
        command,
        severities,
        matchers: ch.matchers,
        timeout: ch.timeout.map_or(Ok(Duration::from_secs(10)), |t| {
            duration_in(
                "`timeout`",
                &t,
                Duration::from_millis(100),
                Duration::from_mins(5),
            )
        })?,
        retries: match ch.retries.unwrap_or(3) {
            r @ 0..=10 => r,
            r => return Err(format!("`retries` = {r} is out of range; use 0..=10")),
        },
        backoff: ch.backoff.map_or(Ok(Duration::from_secs(1)), |t| {
            duration_in("`backoff`", &t, Duration::ZERO, Duration::from_mins(10))
        })?,
        resend: ch.resend.map_or(Ok(Duration::from_mins(1)), |t| {
            duration_in(
                "`resend`",
                &t,
                Duration::from_secs(1),
                Duration::from_hours(1),
            )
        })?,
        smtp,
    })
}
