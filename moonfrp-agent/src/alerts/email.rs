//! The `smtp` channel: alerts as email, through a well-kept SMTP client (lettre over rustls).
//! One message per batch of notifications; subject and body are templates with the annotations'
//! placeholders and a few of their own. Transient failures (4xx answers, a lost connection) are
//! retried with the channel's backoff; permanent ones (wrong credentials, a refused recipient)
//! are not. Errors never carry the password: lettre's do not, and ours name only the server.
use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, CertificateStore, Tls, TlsParameters},
    },
};

use super::{eval::Alert, rules};
use crate::{frp::Secret, untrusted::shown};

/// How the connection is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS (port 587); refused if the server cannot.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No TLS: only for a relay on this host.
    None,
}

/// An `smtp` channel's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Trust only this CA (PEM) instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub subject: String,
    pub body: String,
}

/// Default templates.
pub const SUBJECT: &str = "[{{status}}] {{alertname}} ({{severity}}): {{summary}}";
pub const BODY: &str = "{{status}}: {{alertname}} ({{severity}})\n{{summary}}\n\nvalue: {{value}} (threshold {{threshold}})\nsince: {{starts_at}}\nlabels: {{labels}}\n";

/// Most alerts one message carries (the rest are counted in it).
const MAX_ALERTS: usize = 100;
/// Most recipients.
pub const MAX_RECIPIENTS: usize = 50;

/// `[[alerts.channels]]` keys of an smtp channel, as written.
#[derive(Debug, Default)]
pub struct SmtpFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    pub tls: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable that holds the password.
    pub password_env: Option<String>,
    pub from: Option<String>,
    pub to: Option<super::config::OneOrMany>,
    pub subject: Option<String>,
    pub body: Option<String>,
}

impl SmtpFile {
    /// Whether any smtp key is set (they belong to smtp channels only).
    pub fn any(&self) -> bool {
        self.host.is_some()
            || self.port.is_some()
            || self.tls.is_some()
            || self.tls_ca_file.is_some()
            || self.username.is_some()
            || self.password_file.is_some()
            || self.password_env.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.subject.is_some()
            || self.body.is_some()
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn mailbox(key: &str, v: &str) -> Result<Mailbox, String> {
    v.parse::<Mailbox>().map_err(|e| {
        format!(
            "`{key}` = `{}` is not an email address ({e}); write `alerts@example.com` or `Name <alerts@example.com>`",
            shown(v)
        )
    })
}

/// The CA certificate(s) in `p` (PEM), checked.
fn read_ca(p: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = crate::untrusted::read_text(p, 1 << 20)
        .map_err(|e| format!("`tls_ca_file` {}: {e}", crate::untrusted::path(p)))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "`tls_ca_file` {}: no PEM certificate in it (`-----BEGIN CERTIFICATE-----`)",
            crate::untrusted::path(p)
        ));
    }
    Certificate::from_pem(pem.as_bytes()).map_err(|e| {
        format!(
            "`tls_ca_file` {}: not a PEM certificate ({e})",
            crate::untrusted::path(p)
        )
    })?;
    Ok(pem.into_bytes())
}

/// Validates an smtp channel; reads the password from its file or variable now, so a missing
/// one stops the start, not the first alert.
pub fn parse(f: SmtpFile) -> Result<SmtpConfig, String> {
    let host = f
        .host
        .filter(|h| !h.is_empty())
        .ok_or("an smtp channel needs `host`")?;
    let security = match f.tls.as_deref().unwrap_or("starttls") {
        "starttls" => Security::StartTls,
        "tls" => Security::Tls,
        "none" => Security::None,
        other => {
            return Err(format!(
                "`tls` = `{}` is unknown; use starttls, tls or none",
                shown(other)
            ));
        }
    };
    let port = f.port.unwrap_or(match security {
        Security::StartTls => 587,
        Security::Tls => 465,
        Security::None => 25,
    });
    if port == 0 {
        return Err("`port` = 0 is not a port".into());
    }
    let ca_pem = f.tls_ca_file.as_deref().map(read_ca).transpose()?;
    let password = match (&f.password_file, &f.password_env) {
        (Some(_), Some(_)) => return Err("give `password_file` or `password_env`, not both".into()),
        (Some(p), None) => {
            Some(Secret(crate::untrusted::read_secret(p).map_err(|e| {
                format!("`password_file` {}: {e}", crate::untrusted::path(p))
            })?))
        }
        (None, Some(var)) => Some(Secret(std::env::var(var).map_err(|_| {
            format!(
                "`password_env` = `{}`: the variable is not set in the agent's environment",
                shown(var)
            )
        })?)),
        (None, None) => None,
    };
    if password.is_some() != f.username.is_some() {
        return Err(
            "`username` and a password (`password_file` or `password_env`) go together".into(),
        );
    }
    if password.is_some() && security == Security::None && !is_loopback(&host) {
        return Err(format!(
            "`tls` = none would send the password to {} in clear; use starttls or tls",
            shown(&host)
        ));
    }
    let from = f.from.ok_or("an smtp channel needs `from`")?;
    let from = mailbox("from", &from)?;
    let to = match f.to {
        None => Vec::new(),
        Some(super::config::OneOrMany::One(t)) => vec![t],
        Some(super::config::OneOrMany::Many(t)) => t,
    };
    if to.is_empty() {
        return Err("an smtp channel needs `to` (one address or a list)".into());
    }
    if to.len() > MAX_RECIPIENTS {
        return Err(format!(
            "`to` lists {} addresses; at most {MAX_RECIPIENTS}",
            to.len()
        ));
    }
    let to = to
        .iter()
        .map(|t| mailbox("to", t))
        .collect::<Result<Vec<_>, _>>()?;
    let subject = f.subject.unwrap_or_else(|| SUBJECT.into());
    let body = f.body.unwrap_or_else(|| BODY.into());
    super::config::check_template("subject", &subject)?;
    super::config::check_template("body", &body)?;
    Ok(SmtpConfig {
        host,
        port,
        security,
        ca_pem,
        username: f.username,
        password,
        from,
        to,
        subject,
        body,
    })
}

fn rfc3339(ms: i64) -> String {
    crate::time::rfc3339(crate::time::ms_to_s(ms))
}

/// The placeholders of subject and body: the alert's labels and annotations, `value`,
/// `threshold`, and `status` (FIRING, RESOLVED), `starts_at`, `ends_at`, `labels` (all, as
/// `k=v, …`).
fn fill(template: &str, a: &Alert) -> String {
    let mut vars: BTreeMap<String, String> = a.annotations.clone();
    vars.extend(a.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let status = if a.state == "resolved" {
        "RESOLVED"
    } else {
        "FIRING"
    };
    vars.insert("status".into(), status.into());
    vars.insert("starts_at".into(), rfc3339(a.active_since));
    vars.insert(
        "ends_at".into(),
        a.ended_at.map(rfc3339).unwrap_or_default(),
    );
    vars.insert(
        "labels".into(),
        a.labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    rules::render(template, &vars, a.value, a.threshold)
}

/// Subject and body of one message for `batch` (not empty). A test is marked in both.
pub fn compose(cfg: &SmtpConfig, batch: &[Alert], test: bool) -> (String, String) {
    let first = &batch[0];
    // A subject is one line whatever the names in it hold.
    let mut subject: String = fill(&cfg.subject, first)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(250)
        .collect();
    if batch.len() > 1 {
        let _ = write!(subject, " (+{} more)", batch.len() - 1);
    }
    let mut body = String::new();
    if test {
        subject = format!("[TEST] {subject}");
        body.push_str("This is a TEST notification sent by moonfrp-agent to check this channel; no alert is firing.\n\n");
    }
    let bodies: Vec<String> = batch
        .iter()
        .take(MAX_ALERTS)
        .map(|a| fill(&cfg.body, a))
        .collect();
    body.push_str(&bodies.join("\n---\n\n"));
    if batch.len() > MAX_ALERTS {
        let _ = write!(
            body,
            "
… and {} more alerts
",
            batch.len() - MAX_ALERTS
        );
    }
    (subject, body)
}

fn transport(
    cfg: &SmtpConfig,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls_parameters = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(cfg.host.clone());
        if let Some(pem) = &cfg.ca_pem {
            let ca = Certificate::from_pem(pem).map_err(|e| format!("tls_ca_file: {e}"))?;
            b = b
                .certificate_store(CertificateStore::None)
                .add_root_certificate(ca);
        }
        b.build_rustls().map_err(|e| format!("TLS setup: {e}"))
    };
    let tls = match cfg.security {
        Security::StartTls => Tls::Required(tls_parameters()?),
        Security::Tls => Tls::Wrapper(tls_parameters()?),
        Security::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        b = b.credentials(Credentials::new(user.clone(), pass.expose().to_owned()));
    }
    Ok(b.build())
}

/// Why a send failed, and whether trying again may help.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    pub transient: bool,
}

/// Sends one message for `batch`; answers the server's reply to it (`250 …`).
pub async fn send(
    cfg: &SmtpConfig,
    timeout: Duration,
    batch: &[Alert],
    test: bool,
) -> Result<String, SendError> {
    let fatal = |message: String| SendError {
        message,
        transient: false,
    };
    let (subject, body) = compose(cfg, batch, test);
    let mut m = Message::builder()
        .from(cfg.from.clone())
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .user_agent(concat!("moonfrp-agent/", env!("CARGO_PKG_VERSION")).to_owned());
    for t in &cfg.to {
        m = m.to(t.clone());
    }
    let message = m
        .body(body)
        .map_err(|e| fatal(format!("cannot build the message: {e}")))?;
    let transport = transport(cfg, timeout).map_err(fatal)?;
    let server = format!("{}:{}", cfg.host, cfg.port);
    match tokio::time::timeout(timeout * 3, transport.send(message)).await {
        Ok(Ok(r)) => Ok(format!(
            "{} {}",
            r.code(),
            r.message().collect::<Vec<_>>().join(" ")
        )),
        Ok(Err(e)) => Err(SendError {
            transient: !e.is_permanent() && !e.is_tls(),
            message: format!("smtp {server}: {e}"),
        }),
        Err(_) => Err(SendError {
            message: format!("smtp {server}: no answer within {:?}", timeout * 3),
            transient: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::state::Severity;

    fn alert(state: &'static str) -> Alert {
        Alert {
            alertname: "TunnelDown".into(),
            state,
            severity: Severity::Critical,
            value: 0.0,
            threshold: Some(1.0),
            labels: BTreeMap::from([
                ("alertname".into(), "TunnelDown".into()),
                ("severity".into(), "critical".into()),
                ("tunnel".into(), "ssh\r\nBcc: evil@example.com".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "tunnel {{tunnel}} is down".into())]),
            active_since: 1_764_460_800_000,
            ended_at: None,
            event: "firing",
        }
    }

    fn file() -> SmtpFile {
        SmtpFile {
            host: Some("mail.example.com".into()),
            from: Some("moonfrp <alerts@example.com>".into()),
            to: Some(super::super::config::OneOrMany::Many(vec![
                "a@example.com".into(),
                "b@example.com".into(),
            ])),
            ..SmtpFile::default()
        }
    }

    #[test]
    fn subject_and_body_fill_the_placeholders_and_a_name_cannot_add_a_header() {
        let cfg = parse(file()).unwrap();
        let (subject, body) = compose(&cfg, &[alert("firing")], false);
        assert!(
            subject.starts_with("[FIRING] TunnelDown (critical): tunnel {{tunnel}} is down"),
            "{subject}"
        );
        assert!(!subject.contains('\n') && !subject.contains('\r'));
        assert!(
            body.contains("value: 0 (threshold 1)") && body.contains("since: 2025-11-30T00:00:00Z"),
            "{body}"
        );
        let (subject, body) = compose(&cfg, &[alert("resolved"), alert("firing")], true);
        assert!(
            subject.starts_with("[TEST] [RESOLVED]") && subject.ends_with("(+1 more)"),
            "{subject}"
        );
        assert!(
            body.starts_with("This is a TEST notification") && body.contains("---"),
            "{body}"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        type Edit = fn(&mut SmtpFile);
        let cases: [(Edit, &str); 8] = [
            (|f| f.host = None, "`host`"),
            (|f| f.tls = Some("ssl".into()), "`tls`"),
            (|f| f.from = Some("not an address".into()), "`from`"),
            (
                |f| f.to = Some(super::super::config::OneOrMany::Many(vec![])),
                "`to`",
            ),
            (
                |f| f.to = Some(super::super::config::OneOrMany::One("x@".into())),
                "`to`",
            ),
            (|f| f.username = Some("u".into()), "`username`"),
            (
                |f| f.password_env = Some("MOONFRP_NO_SUCH_VARIABLE_EVER".into()),
                "`password_env`",
            ),
            (|f| f.subject = Some("{{tunnel".into()), "subject"),
        ];
        for (edit, key) in cases {
            let mut f = file();
            edit(&mut f);
            let e = parse(f).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        let mut f = file();
        f.tls = Some("none".into());
        f.username = Some("u".into());
        f.password_env = Some("PATH".into());
        assert!(parse(f).unwrap_err().contains("in clear"));
        let mut f = file();
        f.host = Some("127.0.0.1".into());
        f.tls = Some("none".into());
        f.username = Some("u".into());
        f.password_env = Some("PATH".into());
        assert_eq!(parse(f).unwrap().port, 25);
    }
}
