//! A small HTTP/1.1 GET for the frps and frpc web servers (hyper's client connection), with
//! basic auth and a deadline. Errors name the API and what went wrong, never the credentials.
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Secret, config::WebServer};

/// Where an API is and how to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

impl Endpoint {
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
        }
    }
}

/// A failed GET: nobody answered, or the answer was not a 200.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Connection refused, no answer in time: asking again at once will not help.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Answer(String),
}

impl From<GetError> for String {
    fn from(e: GetError) -> Self {
        e.to_string()
    }
}

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

/// `method path` (no body) on the endpoint: the status and body of whatever it answers.
pub async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), GetError> {
    tokio::time::timeout(timeout, fetch(ep, method, path))
        .await
        .map_err(|_| {
            GetError::Unreachable(format!("{method} {path}: no answer within {timeout:?}"))
        })?
}

async fn fetch(ep: &Endpoint, method: &str, path: &str) -> Result<(StatusCode, String), GetError> {
    let stream = TcpStream::connect(&ep.addr)
        .await
        .map_err(|e| GetError::Unreachable(format!("cannot connect to {}: {e}", ep.addr)))?;
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
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| GetError::Answer(format!("GET {path}: reading the body: {e}")))?
        .to_bytes();
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| GetError::Answer(format!("GET {path}: the answer is not UTF-8")))?;
    Ok((status, body))
}
