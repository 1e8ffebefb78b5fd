//! A small HTTP/1.1 client (hyper's client connection) for the frps and frpc web servers, and
//! for the command-line clients asking the agent: basic auth, one deadline for the whole answer,
//! and a bound on its size. Errors name the API and what went wrong, never the credentials.
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Secret, config::WebServer};
use crate::untrusted::Limit;

/// Largest answer read from an frps/frpc API: a v1 list of ~25,000 proxies.
pub const MAX_API_BODY: u64 = 8 << 20;

/// Where an API is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Largest answer body read; a longer one is an error, not a bigger buffer.
    pub max_body: u64,
    /// Speak TLS (to an agent with a web config).
    pub tls: Option<TlsTarget>,
}

/// TLS settings of an endpoint and the name its certificate must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl PartialEq for TlsTarget {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for TlsTarget {}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.server_name)
    }
}

impl Endpoint {
    /// An endpoint without credentials.
    pub fn new(addr: String, max_body: u64) -> Self {
        Self {
            addr,
            user: None,
            password: None,
            max_body,
            tls: None,
        }
    }

    pub fn from_web(w: &WebServer) -> Self {
        // frp's web server listening on all addresses is reached through loopback.
        let host = match w.addr.as_str() {
            "" | "0.0.0.0" => "127.0.0.1",
            "::" => "::1",
            other => other,
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{}", w.port)
        } else {
            format!("{host}:{}", w.port)
        };
        Self {
            addr,
            user: w.user.clone(),
            password: w.password.clone(),
            max_body: MAX_API_BODY,
            tls: None,
        }
    }
}

/// A failed GET: nobody answered, or the answer was not a 200.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Connection refused, nobody listening: asking again at once will not help.
    #[error("{0}")]
    Unreachable(String),
    /// Connected, but no whole answer before the deadline (a hung or dripping server).
    #[error("{0}")]
    Timeout(String),
    /// The answer's body is larger than the endpoint allows.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Answer(String),
}

impl From<GetError> for String {
    fn from(e: GetError) -> Self {
        e.to_string()
    }
}

/// Longest wait for a connection to be accepted (loopback or a LAN: a refused or unrouted
/// address fails long before).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` on the endpoint; the body of a 200 answer.
pub async fn get(ep: &Endpoint, path: &str, timeout: Duration) -> Result<String, GetError> {
    let (status, body) = get_any(ep, path, timeout).await?;
    match status {
        StatusCode::OK => Ok(body),
        StatusCode::UNAUTHORIZED => Err(GetError::Answer(format!(
            "GET {path}: 401 unauthorized: the user and password of webServer in the frp config are wrong or missing"
        ))),
        other => Err(GetError::Answer(format!("GET {path}: HTTP {other}"))),
    }
}

/// `GET path` on the endpoint: the status and body of whatever it answers.
pub async fn get_any(
    ep: &Endpoint,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), GetError> {
    request(ep, "GET", path, timeout).await
}

/// `method path` (no body) on the endpoint: the status and body of whatever it answers, all
/// of it within `timeout` (a server that drips its answer runs out of time like a silent one).
pub async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), GetError> {
    // Messages name no durations: a caller that retries with what is left of its own deadline
    // gets the same message for the same problem (and logs it once).
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT.min(timeout), TcpStream::connect(&ep.addr))
        .await
        .map_err(|_| {
            GetError::Unreachable(format!("cannot connect to {}: no answer in time", ep.addr))
        })?
        .map_err(|e| GetError::Unreachable(format!("cannot connect to {}: {e}", ep.addr)))?;
    let answer = async {
        match &ep.tls {
            None => fetch(stream, ep, method, path).await,
            Some(t) => {
                let tls = tokio_rustls::TlsConnector::from(t.config.clone())
                    .connect(t.server_name.clone(), stream)
                    .await
                    .map_err(|e| {
                        GetError::Answer(format!("TLS handshake with {}: {e}", ep.addr))
                    })?;
                fetch(tls, ep, method, path).await
            }
        }
    };
    tokio::time::timeout_at(deadline, answer)
        .await
        .map_err(|_| {
            GetError::Timeout(format!(
                "{method} {path}: {} accepted the connection but gave no whole answer in time",
                ep.addr
            ))
        })?
}

async fn fetch<S>(
    stream: S,
    ep: &Endpoint,
    method: &str,
    path: &str,
) -> Result<(StatusCode, String), GetError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| GetError::Unreachable(format!("HTTP handshake with {}: {e}", ep.addr)))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &ep.addr);
    if let Some(user) = &ep.user {
        let pass = ep.password.as_ref().map_or("", Secret::expose);
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req = req.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::Answer(format!("GET {path}: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| GetError::Answer(format!("GET {path}: {e}")))?;
    let status = resp.status();
    let too_large = || {
        Limit::ResponseSize.hit();
        GetError::TooLarge(format!(
            "{method} {path}: the answer is larger than {} bytes",
            ep.max_body
        ))
    };
    // A declared length over the limit is refused before anything is read.
    if resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > ep.max_body)
    {
        return Err(too_large());
    }
    let limit = usize::try_from(ep.max_body).unwrap_or(usize::MAX);
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                GetError::Answer(format!("{method} {path}: reading the body: {e}"))
            }
        })?
        .to_bytes();
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| GetError::Answer(format!("{method} {path}: the answer is not UTF-8")))?;
    Ok((status, body))
}
