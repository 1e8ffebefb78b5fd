//! The command-line clients of a running agent: `status` (one-shot text or JSON), `top` (a live
//! full-screen view), `inspect` (a port's peers), `history` (a metric over time) and `logs` (the agent's own log). They read
//! the agent's API and its typed answers ([`crate::api`]); nothing here runs inside the agent.
pub mod history;
pub mod inspect;
pub mod logs;
pub mod status;
pub mod top;

#[cfg(test)]
mod tests;

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::{Config, Overrides},
    frp::client::{Endpoint, GetError, request},
};

/// Where the agent is.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// The agent's configuration file (for its listen address).
    #[arg(short, long, value_name = "PATH", env = "MOONFRP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The agent's HTTP address [default: from the config, else 127.0.0.1:9477].
    #[arg(short, long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub access: AccessArgs,
}

impl ClientArgs {
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let config = Config::load(
            self.config.as_deref(),
            &Overrides {
                listen: self.listen.clone(),
                ..Overrides::default()
            },
        )
        .map_err(|e| e.to_string())?;
        self.access.endpoint(config.start.listen, MAX_ANSWER)
    }
}

/// How to reach an agent whose web config asks for TLS or a password. The password never
/// comes from the command line (other users see it in the process list).
#[derive(Clone, Debug, Default, Args)]
pub struct AccessArgs {
    /// Speak TLS to the agent, trusting the system's CA bundle (implied by --tls-ca-file).
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (PEM) that signed the agent's certificate.
    #[arg(long, value_name = "PATH", env = "MOONFRP_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for an agent that asks for one (mutual TLS); with --tls-key-file.
    #[arg(
        long,
        value_name = "PATH",
        env = "MOONFRP_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "PATH",
        env = "MOONFRP_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// The name the agent's certificate must carry [default: the address's IP].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// User for basic auth; the password comes from $MOONFRP_PASSWORD or --password-file.
    #[arg(long, value_name = "NAME", env = "MOONFRP_USER")]
    pub user: Option<String>,
    /// A file holding the basic auth password (one line).
    #[arg(long, value_name = "PATH", env = "MOONFRP_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

impl AccessArgs {
    /// The endpoint of an agent listening on `listen`. An agent listening on every address
    /// is asked on loopback.
    pub fn endpoint(
        &self,
        listen: std::net::SocketAddr,
        max_body: u64,
    ) -> Result<Endpoint, String> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let ip = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let mut ep = Endpoint::new(
            std::net::SocketAddr::new(ip, listen.port()).to_string(),
            max_body,
        );
        if self.tls || self.tls_ca_file.is_some() || self.tls_cert_file.is_some() {
            let identity = self
                .tls_cert_file
                .as_deref()
                .zip(self.tls_key_file.as_deref());
            let config = crate::tls::client_config(self.tls_ca_file.as_deref(), identity)?;
            let server_name = match &self.tls_server_name {
                Some(n) => rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("--tls-server-name `{}`: {e}", plain(n)))?,
                None => rustls::pki_types::ServerName::IpAddress(ip.into()),
            };
            ep.tls = Some(crate::frp::client::TlsTarget {
                config: std::sync::Arc::new(config),
                server_name,
            });
        }
        if let Some(user) = &self.user {
            ep.user = Some(user.clone());
            ep.password = Some(crate::frp::Secret(self.password()?));
        }
        Ok(ep)
    }

    fn password(&self) -> Result<String, String> {
        if let Some(path) = &self.password_file {
            return crate::untrusted::read_secret(path)
                .map_err(|e| format!("--password-file {}: {e}", path.display()));
        }
        std::env::var("MOONFRP_PASSWORD").map_err(|_| {
            "--user needs a password: set MOONFRP_PASSWORD or give --password-file".to_owned()
        })
    }
}

/// Why the agent gave no status.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// Nobody answers at the address.
    NotRunning(String),
    /// The agent runs but has taken no snapshot yet.
    NoSnapshot,
    Other(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRunning(e) => write!(f, "moonfrp-agent is not running or not reachable: {e}"),
            Self::NoSnapshot => write!(
                f,
                "moonfrp-agent is running but has no snapshot yet (the first one comes right after start; is it still loading?)"
            ),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Largest answer `status`, `top` and `inspect` read from the agent (its status at thousands of
/// tunnels is a few MiB).
pub const MAX_ANSWER: u64 = 64 << 20;

/// A blocking GET of the agent's API: status and body.
pub fn get(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    path: &str,
) -> Result<(u16, String), FetchError> {
    call(rt, ep, "GET", path, Duration::from_secs(5))
}

/// A blocking request without a body (`GET`, `POST`) of the agent's API, answered within
/// `timeout`: status and body.
pub fn call(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), FetchError> {
    match rt.block_on(request(ep, method, path, timeout)) {
        Ok((status, _)) if status == hyper::StatusCode::UNAUTHORIZED => {
            Err(FetchError::Other(unauthorized(ep)))
        }
        Ok((status, body)) => Ok((status.as_u16(), body)),
        Err(GetError::Unreachable(e)) => Err(FetchError::NotRunning(e)),
        Err(e) => Err(FetchError::Other(e.to_string())),
    }
}

/// `GET /api/v1/status`.
pub fn fetch_status(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
) -> Result<crate::api::status::Status, FetchError> {
    let (code, body) = get(rt, ep, "/api/v1/status")?;
    if code == 503 {
        return Err(FetchError::NoSnapshot);
    }
    decode_data(ep, code, &body, "status")
}

/// The `data` of an API answer `{"status": "success", "data": …}`; the API's error otherwise.
pub fn decode_data<T: serde::de::DeserializeOwned>(
    ep: &Endpoint,
    code: u16,
    body: &str,
    what: &str,
) -> Result<T, FetchError> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        FetchError::Other(format!(
            "{}: HTTP {code}, not the agent's API ({e}); is it moonfrp-agent?",
            ep.addr
        ))
    })?;
    if code != 200 {
        return Err(FetchError::Other(crate::untrusted::message(
            v["error"].as_str().unwrap_or("error"),
            2000,
        )));
    }
    serde_json::from_value(v["data"].clone())
        .map_err(|e| FetchError::Other(format!("unexpected {what} from the agent: {e}")))
}

/// The endpoint and a runtime for a one-shot client command, or what to exit with.
pub fn start(
    args: &ClientArgs,
) -> Result<(Endpoint, tokio::runtime::Runtime), (u8, String, String)> {
    let ep = args.endpoint().map_err(|e| (2, String::new(), e))?;
    let rt = runtime().map_err(|e| (1, String::new(), e))?;
    Ok((ep, rt))
}

/// What to say when the agent answers 401.
pub fn unauthorized(ep: &Endpoint) -> String {
    if ep.user.is_some() {
        format!(
            "{}: 401 unauthorized: the user or password is wrong",
            ep.addr
        )
    } else {
        format!(
            "{}: 401 unauthorized: this agent asks for a user and password; give --user (or $MOONFRP_USER) and the password in $MOONFRP_PASSWORD or --password-file",
            ep.addr
        )
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// `s` escaped for a terminal, whole.
pub fn plain(s: &str) -> std::borrow::Cow<'_, str> {
    crate::untrusted::escape(s)
}

/// `1.2 MB`, `340 B`: decimal units, as bandwidth is usually quoted.
pub fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `1.5 GiB`: binary units, for memory and disks.
pub fn ibytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut x = v as f64;
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v} B")
    } else {
        format!("{x:.1} {}", UNITS[i])
    }
}

/// `s` escaped for a terminal ([`crate::untrusted::escape`]) and cut to `n` characters,
/// ending with `…` when cut. Everything the views print from the agent goes through here or
/// [`plain`]: a name is whatever an frpc chose.
pub fn fit(s: &str, n: usize) -> String {
    let s = crate::untrusted::escape(s);
    if s.chars().count() <= n {
        return s.into_owned();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}
