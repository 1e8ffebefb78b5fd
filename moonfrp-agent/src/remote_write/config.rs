//! `[[remote_write]]`: where to push, how to log in, what to add, how much to queue. Checked at
//! start; secrets come from files (never from the config text itself) and never reach the log.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::untrusted::{self, duration_in, shown};

/// Most `[[remote_write]]` entries.
pub const MAX_ENDPOINTS: usize = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthFile {
    pub username: String,
    pub password_file: PathBuf,
}

// The keys are the config file's (`ca_file`, as Prometheus names them).
#[allow(clippy::struct_field_names)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueFile {
    pub capacity: usize,
    pub max_samples_per_send: usize,
    pub min_backoff: String,
    pub max_backoff: String,
    pub retry_on_http_429: bool,
}

impl Default for QueueFile {
    fn default() -> Self {
        // Prometheus' defaults (queue_config).
        Self {
            capacity: 10_000,
            max_samples_per_send: 2_000,
            min_backoff: "30ms".into(),
            max_backoff: "5s".into(),
            retry_on_http_429: true,
        }
    }
}

/// One `[[remote_write]]` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthFile>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub queue: QueueFile,
}

/// How a request proves who sends it.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// One checked endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// The URL as the self-metrics' `url` label shows it (no user info).
    pub label: String,
    pub timeout: Duration,
    pub auth: Auth,
    pub tls: TlsFile,
    pub headers: Vec<(String, String)>,
    /// Sorted by name; `instance` is the host name unless set.
    pub external_labels: Vec<(String, String)>,
    pub capacity: usize,
    pub max_samples_per_send: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub retry_on_http_429: bool,
}

/// Headers the protocol sets itself.
const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "content-encoding",
    "content-type",
    "content-length",
    "user-agent",
    "x-prometheus-remote-write-version",
];

fn secret(key: &str, path: &std::path::Path) -> Result<String, String> {
    let s = untrusted::read_secret(path)
        .map_err(|e| format!("key `{key}`: cannot read {}: {e}", untrusted::path(path)))?;
    if s.is_empty() {
        return Err(format!("key `{key}`: {} is empty", untrusted::path(path)));
    }
    Ok(s)
}

fn label_name_ok(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

/// The host name, for the default `instance` label.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn auth(basic: Option<BasicAuthFile>, bearer: Option<PathBuf>) -> Result<Auth, String> {
    Ok(match (basic, bearer) {
        (Some(_), Some(_)) => {
            return Err("basic_auth and bearer_token_file exclude each other; keep one".into());
        }
        (Some(b), None) => {
            if b.username.is_empty() || b.username.contains(':') {
                return Err("key `basic_auth.username`: empty or with `:`".into());
            }
            Auth::Basic {
                password: secret("basic_auth.password_file", &b.password_file)?,
                username: b.username,
            }
        }
        (None, Some(p)) => Auth::Bearer(secret("bearer_token_file", &p)?),
        (None, None) => Auth::None,
    })
}

fn headers(h: BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    h.into_iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!(
                    "key `headers.{}`: set by the protocol (use basic_auth or bearer_token_file for Authorization)",
                    shown(&k)
                ));
            }
            if reqwest::header::HeaderName::try_from(k.as_str()).is_err()
                || reqwest::header::HeaderValue::try_from(v.as_str()).is_err()
            {
                return Err(format!("key `headers.{}`: not a valid header", shown(&k)));
            }
            Ok((k, v))
        })
        .collect()
}

/// Checks every entry; the error names the entry (`remote_write[i]`) and the key.
pub fn validate(files: Vec<EndpointFile>) -> Result<Vec<Endpoint>, String> {
    if files.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{} [[remote_write]] entries; at most {MAX_ENDPOINTS}",
            files.len()
        ));
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, f)| one(f).map_err(|e| format!("remote_write[{i}]: {e}")))
        .collect()
}

fn one(f: EndpointFile) -> Result<Endpoint, String> {
    let url = reqwest::Url::parse(&f.url).map_err(|e| {
        format!(
            "key `url`: `{}` is not a URL ({e}); use e.g. http://prometheus:9090/api/v1/write",
            shown(&f.url)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "key `url`: `{}` is not http or https",
            shown(&f.url)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "key `url`: credentials in the URL would show in logs and metrics; use basic_auth with password_file"
                .into(),
        );
    }
    let timeout = match &f.timeout {
        None => Duration::from_secs(30),
        Some(t) => duration_in(t, Duration::from_millis(100), Duration::from_mins(5))
            .map_err(|e| format!("key `timeout`: {e}"))?,
    };
    let auth = auth(f.basic_auth, f.bearer_token_file)?;
    if f.tls.cert_file.is_some() != f.tls.key_file.is_some() {
        return Err("keys `tls.cert_file` and `tls.key_file` go together".into());
    }
    let headers = headers(f.headers)?;
    let mut external_labels: Vec<(String, String)> = f.external_labels.into_iter().collect();
    for (k, _) in &external_labels {
        if !label_name_ok(k) {
            return Err(format!(
                "key `external_labels.{}`: not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
                shown(k)
            ));
        }
    }
    if !external_labels.iter().any(|(k, _)| k == "instance") {
        external_labels.push(("instance".into(), host_name()));
        external_labels.sort();
    }
    let q = f.queue;
    let min_backoff = duration_in(
        &q.min_backoff,
        Duration::from_millis(1),
        Duration::from_mins(1),
    )
    .map_err(|e| format!("key `queue.min_backoff`: {e}"))?;
    let max_backoff = duration_in(&q.max_backoff, min_backoff, Duration::from_mins(10))
        .map_err(|e| format!("key `queue.max_backoff`: {e} (and at least min_backoff)"))?;
    untrusted::in_range(
        "queue.max_samples_per_send",
        q.max_samples_per_send,
        1,
        100_000,
    )?;
    untrusted::in_range(
        "queue.capacity",
        q.capacity,
        q.max_samples_per_send,
        10_000_000,
    )?;
    let mut label = url.clone();
    label.set_query(None);
    Ok(Endpoint {
        url: f.url,
        label: label.to_string(),
        timeout,
        auth,
        tls: f.tls,
        headers,
        external_labels,
        capacity: q.capacity,
        max_samples_per_send: q.max_samples_per_send,
        min_backoff,
        max_backoff,
        retry_on_http_429: q.retry_on_http_429,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str) -> EndpointFile {
        EndpointFile {
            url: url.into(),
            ..EndpointFile::default()
        }
    }

    #[test]
    fn defaults_and_the_instance_label() {
        let e = validate(vec![file("http://p:9090/api/v1/write")]).unwrap();
        assert_eq!(e[0].max_samples_per_send, 2_000);
        assert_eq!(e[0].min_backoff, Duration::from_millis(30));
        assert!(
            e[0].external_labels
                .iter()
                .any(|(k, v)| k == "instance" && !v.is_empty())
        );
    }

    #[test]
    fn bad_entries_name_the_key() {
        let cases: [(EndpointFile, &str); 5] = [
            (file("ftp://x/"), "url"),
            (file("http://u:p@x/"), "credentials"),
            (
                EndpointFile {
                    headers: [("Content-Type".into(), "x".into())].into(),
                    ..file("http://x/")
                },
                "headers.Content-Type",
            ),
            (
                EndpointFile {
                    external_labels: [("__x".into(), "y".into())].into(),
                    ..file("http://x/")
                },
                "external_labels.__x",
            ),
            (
                EndpointFile {
                    bearer_token_file: Some("/nonexistent/token".into()),
                    ..file("http://x/")
                },
                "bearer_token_file",
            ),
        ];
        for (f, want) in cases {
            let err = validate(vec![f]).unwrap_err();
            assert!(
                err.contains("remote_write[0]") && err.contains(want),
                "{err}"
            );
        }
    }
}
