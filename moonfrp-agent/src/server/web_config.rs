//! The web config file (`--web.config.file`, or `web_config_file` under `[server]`): TLS and
//! basic auth in the format of the Prometheus exporter-toolkit, so the file an operator wrote
//! for node_exporter works here as it is. Checked for changes on every connection (the file and
//! every file it names: a renewed certificate is picked up without a restart); a change that
//! does not load keeps the last good settings, logs why, and sets
//! `moonfrp_agent_web_config_last_reload_successful` to 0.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use hyper::header::{HeaderName, HeaderValue};
use rustls::{ServerConfig, server::WebPkiClientVerifier, version};
use serde::Deserialize;
use tracing::{error, info};

use crate::{tls, untrusted};

/// Largest web config file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most users in `basic_auth_users`.
const MAX_USERS: usize = 1_000;
/// Most extra response headers.
const MAX_HEADERS: usize = 64;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// Accepted for compatibility; moonfrp serves HTTP/1.1.
    #[serde(default, rename = "http2")]
    _http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// What the server applies to a connection: loaded from one version of the file.
pub struct Web {
    /// TLS on, with these settings.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Every client presented a certificate the CA signed (`RequireAndVerifyClientCert`): it
    /// is an authenticated client.
    pub client_cert_required: bool,
    /// User name → bcrypt hash; empty: no basic auth.
    pub users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Passwords that matched, by digest, so a scrape every few seconds costs no bcrypt run.
    pub(super) verified: super::access::Verified,
}

impl Web {
    /// No file: plain HTTP, no auth.
    pub fn open() -> Self {
        Self {
            tls: None,
            client_cert_required: false,
            users: BTreeMap::new(),
            headers: Vec::new(),
            verified: super::access::Verified::default(),
        }
    }

    /// True when a request must prove who it is (basic auth, or a verified client
    /// certificate): the write endpoints then need that, not a loopback peer.
    pub fn authenticates(&self) -> bool {
        !self.users.is_empty() || self.client_cert_required
    }
}

/// Reads and parses the file; the files it names are made absolute from its directory (as the
/// exporter-toolkit does).
fn parse(path: &Path) -> Result<File, String> {
    let text = untrusted::read_text(path, MAX_FILE_BYTES)
        .map_err(|e| format!("web config {}: cannot read it: {e}", untrusted::path(path)))?;
    parse_text(path, &text)
}

/// Parses the text of the file at `path`.
fn parse_text(path: &Path, text: &str) -> Result<File, String> {
    let shown = untrusted::path(path);
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    let mut file: File = serde_yaml_ng::from_str(text).map_err(|e| {
        format!(
            "web config {shown}: {} (the format is exporter-toolkit's: tls_server_config, basic_auth_users, http_server_config)",
            untrusted::message(&untrusted::redact_secrets(&e.to_string(), text), 500)
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(t) = &mut file.tls_server_config {
        for f in [&mut t.cert_file, &mut t.key_file, &mut t.client_ca_file]
            .into_iter()
            .flatten()
        {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        }
    }
    Ok(file)
}

/// Loads and checks the file at `path`; the error names the file and the key.
pub fn load(path: &Path) -> Result<Web, String> {
    check(path, parse(path)?)
}

/// Checks `text` as if it were the file at `path` (the fuzz target's entry).
#[cfg(feature = "fuzzing")]
pub(crate) fn from_text(path: &Path, text: &str) -> Result<Web, String> {
    check(path, parse_text(path, text)?)
}

fn check(path: &Path, file: File) -> Result<Web, String> {
    let shown = untrusted::path(path);
    let at = |key: &str, problem: String| format!("web config {shown}: key `{key}`: {problem}");
    let tls = match &file.tls_server_config {
        None => None,
        Some(t) => Some(server_tls(t).map_err(|(key, p)| at(key, p))?),
    };
    let client_cert_required = file
        .tls_server_config
        .as_ref()
        .and_then(|t| t.client_auth_type.as_deref())
        == Some("RequireAndVerifyClientCert");
    if file.basic_auth_users.len() > MAX_USERS {
        return Err(at(
            "basic_auth_users",
            format!("{} users; at most {MAX_USERS}", file.basic_auth_users.len()),
        ));
    }
    for (user, hash) in &file.basic_auth_users {
        let key = format!("basic_auth_users.{}", untrusted::shown(user));
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(at(
                &key,
                "a user name must be non-empty, without `:` or control characters".into(),
            ));
        }
        hash.parse::<bcrypt::HashParts>().map_err(|e| {
            at(
                &key,
                format!(
                    "not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'` or Python's bcrypt.hashpw"
                ),
            )
        })?;
    }
    let headers = file
        .http_server_config
        .as_ref()
        .map(|h| response_headers(&h.headers))
        .transpose()
        .map_err(|(key, p)| at(&key, p))?
        .unwrap_or_default();
    Ok(Web {
        tls,
        client_cert_required,
        users: file.basic_auth_users,
        headers,
        verified: super::access::Verified::default(),
    })
}

type KeyError = (&'static str, String);

fn server_tls(t: &TlsFile) -> Result<tokio_rustls::TlsAcceptor, KeyError> {
    let cert_file = t.cert_file.as_deref().ok_or((
        "tls_server_config.cert_file",
        "missing: TLS needs a certificate (PEM) and its key".into(),
    ))?;
    let key_file = t.key_file.as_deref().ok_or((
        "tls_server_config.key_file",
        "missing: TLS needs a certificate (PEM) and its key".into(),
    ))?;
    let chain = tls::certs(cert_file).map_err(|e| ("tls_server_config.cert_file", e))?;
    let key = tls::key(key_file).map_err(|e| ("tls_server_config.key_file", e))?;
    let min = tls_version(
        "tls_server_config.min_version",
        t.min_version.as_deref(),
        12,
    )?;
    let max = tls_version(
        "tls_server_config.max_version",
        t.max_version.as_deref(),
        13,
    )?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &version::TLS12), (13, &version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        return Err((
            "tls_server_config.max_version",
            "is below min_version: no TLS version left".into(),
        ));
    }
    let builder = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&versions)
        .map_err(|e| ("tls_server_config", e.to_string()))?;
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let verifier = |optional: bool| {
        let ca = t.client_ca_file.as_deref().ok_or((
            "tls_server_config.client_ca_file",
            format!(
                "missing: client_auth_type {auth_type} verifies client certificates against it"
            ),
        ))?;
        let roots = tls::roots(ca).map_err(|e| ("tls_server_config.client_ca_file", e))?;
        let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider());
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build()
            .map_err(|e| ("tls_server_config.client_ca_file", e.to_string()))
    };
    let builder = match auth_type {
        "NoClientCert" => {
            if t.client_ca_file.is_some() {
                return Err((
                    "tls_server_config.client_ca_file",
                    "set without a client_auth_type that uses it; add client_auth_type: RequireAndVerifyClientCert (or VerifyClientCertIfGiven)".into(),
                ));
            }
            builder.with_no_client_auth()
        }
        "VerifyClientCertIfGiven" => builder.with_client_cert_verifier(verifier(true)?),
        "RequireAndVerifyClientCert" => builder.with_client_cert_verifier(verifier(false)?),
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err((
                "tls_server_config.client_auth_type",
                format!(
                    "{auth_type} accepts certificates nobody verified; moonfrp verifies every client certificate: use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
                ),
            ));
        }
        other => {
            return Err((
                "tls_server_config.client_auth_type",
                format!(
                    "`{}` is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert",
                    untrusted::shown(other)
                ),
            ));
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        (
            "tls_server_config.key_file",
            format!("does not match the certificate, or is not usable: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `TLS12` → 12; rustls speaks 1.2 and 1.3 only.
fn tls_version(key: &'static str, v: Option<&str>, default: u8) -> Result<u8, KeyError> {
    match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some("TLS10" | "TLS11") => Err((
            key,
            "TLS 1.0 and 1.1 are not offered (obsolete, RFC 8996); use TLS12 or TLS13".into(),
        )),
        Some(other) => Err((
            key,
            format!("`{}` is not TLS12 or TLS13", untrusted::shown(other)),
        )),
    }
}

fn response_headers(
    h: &BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, (String, String)> {
    if h.len() > MAX_HEADERS {
        return Err((
            "http_server_config.headers".into(),
            format!("{} headers; at most {MAX_HEADERS}", h.len()),
        ));
    }
    h.iter()
        .map(|(k, v)| {
            let key = format!("http_server_config.headers.{}", untrusted::shown(k));
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| (key.clone(), "not a valid header name".to_owned()))?;
            // What the server sets itself (and what would break a response) stays its own.
            if matches!(
                name.as_str(),
                "content-type"
                    | "content-length"
                    | "content-encoding"
                    | "transfer-encoding"
                    | "www-authenticate"
                    | "connection"
                    | "date"
            ) {
                return Err((key, "is set by the server; it cannot be overridden".into()));
            }
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|_| (key, "not a valid header value".to_owned()))?;
            Ok((name, value))
        })
        .collect()
}

/// What identifies one version of a file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, i64, i64, u64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    Stamp(
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size())),
    )
}

/// The files a version of the config depends on: the file itself and those it names.
fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    if let Ok(File {
        tls_server_config: Some(t),
        ..
    }) = parse(path)
    {
        files.extend(
            [t.cert_file, t.key_file, t.client_ca_file]
                .into_iter()
                .flatten(),
        );
    }
    files
}

struct Loaded {
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    web: Arc<Web>,
    /// The stamps of a version that failed to load: not tried (nor logged) again.
    failed: Option<Vec<Stamp>>,
}

/// The web config in force: the file's path and the last version that loaded.
pub struct WebConfig {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

/// Whether the last change of the web config loaded (`moonfrp_agent_web_config_last_reload_successful`).
static LAST_RELOAD_OK: AtomicBool = AtomicBool::new(true);

pub fn last_reload_successful() -> bool {
    LAST_RELOAD_OK.load(Relaxed)
}

impl WebConfig {
    /// No file: plain HTTP, no auth.
    pub fn none() -> Self {
        Self {
            path: None,
            loaded: Mutex::new(Loaded {
                files: Vec::new(),
                stamps: Vec::new(),
                web: Arc::new(Web::open()),
                failed: None,
            }),
        }
    }

    /// The web config at start: none without a file; a file that does not load is an error
    /// (the agent stops before it listens).
    pub fn start(path: Option<&Path>) -> Result<Self, String> {
        path.map_or_else(|| Ok(Self::none()), Self::load)
    }

    /// Loads the file at start: an error stops the agent before it listens.
    pub fn load(path: &Path) -> Result<Self, String> {
        let files = files_of(path);
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let web = load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            loaded: Mutex::new(Loaded {
                files,
                stamps,
                web: Arc::new(web),
                failed: None,
            }),
        })
    }

    /// Whether TLS is on now.
    pub fn tls(&self) -> bool {
        self.current().tls.is_some()
    }

    /// The settings for a new connection: re-read first if a file changed.
    pub fn current(&self) -> Arc<Web> {
        let mut l = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(path) = &self.path else {
            return l.web.clone();
        };
        let stamps: Vec<Stamp> = l.files.iter().map(|f| stamp(f)).collect();
        if stamps == l.stamps || l.failed.as_ref() == Some(&stamps) {
            return l.web.clone();
        }
        // The file may name other files now: stamp those too, before reading them.
        let files = files_of(path);
        let stamps_now: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
        match load(path) {
            Ok(web) => {
                info!(path = %path.display(), tls = web.tls.is_some(), users = web.users.len(), "web config reloaded");
                LAST_RELOAD_OK.store(true, Relaxed);
                *l = Loaded {
                    files,
                    stamps: stamps_now,
                    web: Arc::new(web),
                    failed: None,
                };
            }
            Err(e) => {
                error!(error = %e, "the changed web config does not load; keeping the previous one");
                LAST_RELOAD_OK.store(false, Relaxed);
                // Watch every file either version names, so fixing any of them retries.
                for f in files {
                    if !l.files.contains(&f) {
                        l.files.push(f);
                    }
                }
                l.failed = Some(l.files.iter().map(|f| stamp(f)).collect());
            }
        }
        l.web.clone()
    }
}
