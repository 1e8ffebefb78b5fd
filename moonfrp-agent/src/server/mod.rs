//! The HTTP server: `/metrics` (OpenMetrics or text 0.0.4 by content negotiation, gzip on
//! request, bytes rendered once per snapshot), `/healthz`, `/readyz`, the API ([`crate::api`])
//! and the web page ([`ui`]); bounded in requests, connections and request size. Plain HTTP on
//! loopback by default; TLS and basic auth from a web config file ([`web_config`]), checked per
//! request ([`access`]).
pub mod access;
pub mod ui;
pub mod web_config;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

use crate::{
    api::{self, HistoryApi},
    exposition::{self, Format},
    snapshot::Latest,
    untrusted::Limit,
};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The HTTP server's settings (`[server]` in the config file): its bounds and its web config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Requests handled at once; one more is answered 503 at once (node_exporter's
    /// `--web.max-requests`).
    pub max_requests: u32,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: u32,
    /// TLS and basic auth (exporter-toolkit's web config format); `--web.config.file`.
    pub web_config_file: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_requests: 40,
            max_connections: 512,
            web_config_file: None,
        }
    }
}

impl ServerConfig {
    /// Checks the ranges; the error names the key.
    pub fn validate(self) -> Result<Self, String> {
        for (key, v, hi) in [
            ("server.max_requests", self.max_requests, 10_000),
            ("server.max_connections", self.max_connections, 65_536),
        ] {
            if v == 0 || v > hi {
                return Err(format!("key `{key}`: {v} is out of range; use 1..={hi}"));
            }
        }
        Ok(self)
    }
}

/// Largest request head (request line and headers) read; a larger one is answered 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a client has to send a whole request head (an idle keep-alive connection included).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
pub struct AppState {
    /// The latest snapshot's series and their renderings.
    pub exposition: Arc<exposition::Current>,
    pub latest: Arc<Latest>,
    /// Probes attached (at least one); set once after loading.
    pub probes_ok: bool,
    /// The history database, when history is on.
    pub history: Option<HistoryApi>,
    /// History queries running at once (the blocking pool also runs collections).
    pub queries: Semaphore,
    /// The alert engine's view, when alerts are on.
    pub alerts: Option<Arc<crate::alerts::Shared>>,
    /// The kernel's peer table and its capacity.
    pub peers: Option<(Arc<crate::ebpf::maps::PeerTable>, u32)>,
    /// The collector, for inspections that watch a port for a while.
    pub collector: Option<Arc<std::sync::Mutex<crate::cycle::Cycle>>>,
    /// Requests being handled, at most `max_requests`.
    pub requests: Arc<Semaphore>,
    pub max_requests: u32,
    /// TLS and basic auth in force.
    pub web: web_config::WebConfig,
    /// The agent's recent log records.
    pub logs: Arc<crate::logging::ring::Ring>,
}

impl AppState {
    pub fn new(
        exposition: Arc<exposition::Current>,
        latest: Arc<Latest>,
        probes_ok: bool,
        history: Option<HistoryApi>,
    ) -> Self {
        Self {
            exposition,
            latest,
            probes_ok,
            history,
            queries: Semaphore::new(2),
            alerts: None,
            peers: None,
            collector: None,
            requests: Arc::new(Semaphore::new(
                ServerConfig::default().max_requests as usize,
            )),
            max_requests: ServerConfig::default().max_requests,
            web: web_config::WebConfig::none(),
            logs: crate::logging::ring::global().clone(),
        }
    }

    /// Applies the server's settings and its loaded web config.
    #[must_use]
    pub fn configured(mut self, server: &ServerConfig, web: web_config::WebConfig) -> Self {
        self.requests = Arc::new(Semaphore::new(server.max_requests as usize));
        self.max_requests = server.max_requests;
        self.web = web;
        self
    }
}

/// True if the `Accept` header prefers OpenMetrics over the classic text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

/// True if `Accept-Encoding` allows gzip (as Prometheus sends it).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|a| {
        a.split(',').any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name == "*") && q > 0.0
        })
    })
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// `/api/v1/tunnels/{name}/peers` or `/api/v1/peers?port=P[&proto=tcp|udp]`.
pub(crate) fn peers_target(path: &str, query: &str) -> Option<api::peers::PeersOf> {
    if let Some(name) = path
        .strip_prefix("/api/v1/tunnels/")
        .and_then(|r| r.strip_suffix("/peers"))
    {
        let name = form_urlencoded::parse(format!("n={name}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())?;
        return Some(api::peers::PeersOf::Tunnel(name));
    }
    if path != "/api/v1/peers" {
        return None;
    }
    let mut port = None;
    let mut proto = moonfrp_common::Proto::Tcp;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "port" => port = v.parse::<u16>().ok().filter(|p| *p != 0),
            "proto" if v == "udp" => proto = moonfrp_common::Proto::Udp,
            _ => {}
        }
    }
    // Without a valid port this falls through to the 404 that lists the API.
    Some(api::peers::PeersOf::Port(port?, proto))
}

/// Runs an API handler on the blocking pool (it reads SQLite or the kernel) and answers with it.
async fn off_thread(f: impl FnOnce() -> api::Answer + Send + 'static) -> Response<Full<Bytes>> {
    let a = tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| api::Answer {
            status: 500,
            content_type: "text/plain",
            body: format!("request failed: {e}\n"),
        });
    answer(a)
}

/// An API answer as a response.
fn answer(a: api::Answer) -> Response<Full<Bytes>> {
    reply(
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        a.content_type,
        a.body,
    )
}

/// Answers within `max_requests` (503 beyond, like node_exporter), checks basic auth, routes,
/// and adds the web config's headers. Each request is one `trace` record (an access log, off
/// unless asked for).
async fn admit(
    state: Arc<AppState>,
    web: Arc<web_config::Web>,
    mut peer: access::Peer,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let access = tracing::enabled!(tracing::Level::TRACE).then(|| {
        (
            req.method().clone(),
            crate::untrusted::message(req.uri().path(), 256),
        )
    });
    let mut r = admit_inner(state, &web, &mut peer, req).await;
    if let Some((method, path)) = access {
        tracing::trace!(peer = %peer.addr, %method, path = %path, status = r.status().as_u16(), "request");
    }
    for (name, value) in &web.headers {
        r.headers_mut().insert(name.clone(), value.clone());
    }
    r
}

async fn admit_inner(
    state: Arc<AppState>,
    web: &Arc<web_config::Web>,
    peer: &mut access::Peer,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Ok(_permit) = state.requests.clone().try_acquire_owned() else {
        Limit::Requests.hit();
        let mut r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "too many requests at once (server.max_requests = {}); try again\n",
                state.max_requests
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    if !web.users.is_empty() {
        if let Err(why) = access::check(web, req.headers()).await {
            Limit::Unauthorized.hit();
            debug!(peer = %peer.addr, ?why, "basic auth failed");
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "unauthorized: this agent asks for a user and password (basic_auth_users in its web config)\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"moonfrp\", charset=\"UTF-8\""),
            );
            return r;
        }
        peer.authenticated = true;
    }
    route(state, web, *peer, req).await
}

/// Routes `/api/…` (anything that reads SQLite or the kernel off the async workers) and
/// everything else.
async fn route(
    state: Arc<AppState>,
    web: &web_config::Web,
    peer: access::Peer,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let st = state.clone();
    let writes = (path == "/api/v1/inspect"
        && (req.method() == Method::POST || req.method() == Method::DELETE))
        || (path == "/api/v1/alerts/test" && req.method() == Method::POST);
    if writes {
        if !peer.may_write(web) {
            Limit::Unauthorized.hit();
            return reply(
                StatusCode::FORBIDDEN,
                "text/plain",
                if web.authenticates() {
                    "forbidden: this request changes something or sends something, and needs an authenticated client\n"
                } else {
                    "forbidden: without authentication, inspections and test notifications are started from this host only; set basic_auth_users in a web config (--web.config.file) to allow it from elsewhere\n"
                },
            );
        }
        if path == "/api/v1/alerts/test" {
            return answer(api::alerts::test(state.alerts.as_deref(), &query).await);
        }
        let start = req.method() == Method::POST;
        return off_thread(move || api::inspect::inspect(st.collector.as_deref(), &query, start))
            .await;
    }
    if !path.starts_with("/api/") || !(req.method() == Method::GET || req.method() == Method::HEAD)
    {
        return handle(&state, &req);
    }
    if let Some(of) = peers_target(&path, &query) {
        let limit = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(20);
        return off_thread(move || {
            let cur = st.latest.get();
            let (table, capacity) = st
                .peers
                .as_ref()
                .map_or((None, 0), |(t, c)| (Some(&**t), *c));
            api::peers::peers(table, capacity, cur.as_deref(), &of, limit)
        })
        .await;
    }
    match path.as_str() {
        "/api/v1/logs" => answer(api::logs::logs(&state.logs, &query).await),
        "/api/v1/alerts" => off_thread(move || api::alerts::alerts(st.alerts.as_deref())).await,
        "/api/v1/tunnels" => {
            off_thread(move || {
                let (cur, prev) = st.latest.pair();
                api::tunnels::tunnels(cur.as_deref(), prev.as_deref())
            })
            .await
        }
        "/api/v1/status" => {
            off_thread(move || {
                let (cur, prev) = st.latest.pair();
                api::status::status(
                    cur.as_deref(),
                    prev.as_deref(),
                    st.alerts.as_deref(),
                    st.history.as_ref(),
                )
            })
            .await
        }
        "/api/v1/history" | "/api/v1/summary" | "/api/v1/alerts/history" => {
            let Ok(_permit) = state.queries.acquire().await else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n",
                );
            };
            if path == "/api/v1/summary" {
                off_thread(move || api::history::summary(st.history.as_ref())).await
            } else if path == "/api/v1/alerts/history" {
                off_thread(move || api::alerts::history(st.history.as_ref(), &query)).await
            } else {
                off_thread(move || api::history::history(st.history.as_ref(), &query)).await
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; the API has /api/v1/status, /api/v1/history, /api/v1/summary, /api/v1/tunnels, /api/v1/alerts, /api/v1/alerts/history, /api/v1/logs, /api/v1/tunnels/{name}/peers, /api/v1/peers and /api/v1/inspect\n",
        ),
    }
}

fn handle(state: &AppState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let header_of = |h| req.headers().get(h).and_then(|v| v.to_str().ok());
            let (format, content_type) = if wants_openmetrics(header_of(header::ACCEPT)) {
                (Format::OpenMetrics, OPENMETRICS)
            } else {
                (Format::Text004, TEXT_004)
            };
            let gzip = accepts_gzip(header_of(header::ACCEPT_ENCODING));
            let mut r = reply(
                StatusCode::OK,
                content_type,
                state.exposition.get().bytes(format, gzip),
            );
            if gzip {
                r.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            r
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match (state.probes_ok, state.latest.get()) {
            (true, Some(_)) => reply(StatusCode::OK, "text/plain", "ready\n"),
            (false, _) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no kernel probe attached (see the log)\n",
            ),
            (true, None) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no snapshot taken yet\n",
            ),
        },
        path if let Some(r) = ui::serve(
            path,
            accepts_gzip(
                req.headers()
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok()),
            ),
        ) =>
        {
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n",
        ),
    }
}

/// Counts and, at most once a minute, logs connections closed because `max_connections` were
/// open.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged_at: Option<std::time::Instant>,
}

impl Refusals {
    fn refuse(&mut self, max: usize) {
        Limit::Connections.hit();
        self.since_log += 1;
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_mins(1))
        {
            warn!(
                refused = self.since_log,
                "connections closed at once: {max} are open (server.max_connections)"
            );
            self.since_log = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }
}

/// Serves until `shutdown` turns true, with at most `max_connections` connections open.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(max_connections));
    let mut refusals = Refusals::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            drop(stream);
            refusals.refuse(max_connections);
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        // The web config as it is now applies to the whole connection.
        let web = state.web.current();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = web.tls.clone() else {
                let peer = access::Peer {
                    addr: peer,
                    authenticated: false,
                };
                return connection(TokioIo::new(stream), state, web, peer, shutdown).await;
            };
            let tls = match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    Limit::TlsHandshakes.hit();
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    Limit::TlsHandshakes.hit();
                    debug!(%peer, "no TLS handshake in time");
                    return;
                }
            };
            // A certificate is only there when the verifier accepted it.
            let verified_cert = tls.get_ref().1.peer_certificates().is_some();
            let peer = access::Peer {
                addr: peer,
                authenticated: verified_cert && web.client_cert_required,
            };
            connection(TokioIo::new(tls), state, web, peer, shutdown).await;
        });
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends or the server stops.
async fn connection<I>(
    io: I,
    state: Arc<AppState>,
    web: Arc<web_config::Web>,
    peer: access::Peer,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (state, web) = (state.clone(), web.clone());
        async move { Ok::<_, Infallible>(admit(state, web, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            if e.is_parse_too_large() {
                Limit::RequestSize.hit();
            }
            debug!(peer = %peer.addr, error = %e, "connection ended with an error");
        },
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    #[test]
    fn gzip_negotiation() {
        use super::accepts_gzip;
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn content_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.2, text/plain"
        )));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
    }
}
