//! Prometheus remote_write 1.0: every snapshot's typed series pushed to each `[[remote_write]]`
//! endpoint, with the spec's retry rules (5xx and 429 retried with backoff and `Retry-After`,
//! other 4xx dropped), a queue bounded in samples (the oldest go first when it is full), and
//! the self-metrics Prometheus' own remote storage reports.
//!
//! One task per endpoint; the collection thread only hands it an `Arc` of the series.
pub mod config;
pub mod proto;

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use self::{
    config::{Auth, Endpoint},
    proto::{TimeSeries, WriteRequest},
};
use crate::series::Series;

/// What one endpoint did since start (`moonfrp_remote_write_*{url}`).
#[derive(Debug, Default)]
pub struct Stats {
    pub url: String,
    /// Samples the receiver took.
    pub sent: AtomicU64,
    /// Samples the receiver refused for good (4xx other than 429): not sent again.
    pub failed: AtomicU64,
    /// Samples sent again after a 5xx, a 429 or a network error.
    pub retried: AtomicU64,
    /// Samples left out because the queue was full (the receiver was away too long).
    pub dropped: AtomicU64,
    /// Samples waiting.
    pub pending: AtomicU64,
    /// Unix ms of the last request the receiver took; 0 before.
    pub last_send_ms: AtomicI64,
    /// Newest sample timestamp the receiver took (Unix ms); 0 before.
    pub highest_sent_ms: AtomicI64,
}

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);

/// A snapshot's series at its Unix ms.
type Batch = (i64, Arc<Series>);

/// The senders' queues, one per endpoint (held by the collection thread; dropping it lets the
/// senders finish).
pub struct RemoteWrite {
    queues: Vec<mpsc::Sender<Batch>>,
    pub stats: Vec<Arc<Stats>>,
}

/// The sender tasks, awaited at shutdown.
pub struct Senders(Vec<tokio::task::JoinHandle<()>>);

impl RemoteWrite {
    /// Starts a sender per endpoint on `rt` (`None` without endpoints); an endpoint whose HTTP
    /// client cannot be built (a CA file that does not parse) is an error.
    pub fn start(
        endpoints: &[Endpoint],
        rt: &tokio::runtime::Handle,
    ) -> Result<Option<(Self, Senders)>, String> {
        if endpoints.is_empty() {
            return Ok(None);
        }
        let mut this = Self {
            queues: Vec::new(),
            stats: Vec::new(),
        };
        let mut tasks = Vec::new();
        for ep in endpoints {
            let client = client(ep)?;
            let stats = Arc::new(Stats {
                url: ep.label.clone(),
                ..Stats::default()
            });
            // Two snapshots in flight at most: the task turns them into its own queue at once.
            let (tx, rx) = mpsc::channel(2);
            tasks.push(rt.spawn(run(ep.clone(), client, rx, stats.clone())));
            this.queues.push(tx);
            this.stats.push(stats);
            info!(url = %ep.label, "remote_write: pushing every snapshot");
        }
        Ok(Some((this, Senders(tasks))))
    }

    /// Hands a snapshot's series to every endpoint. Never blocks: if an endpoint's task has
    /// not taken the previous one yet, this one is counted as dropped there.
    pub fn submit(&self, ts: i64, series: &Arc<Series>) {
        for (q, stats) in self.queues.iter().zip(&self.stats) {
            if q.try_send((ts, series.clone())).is_err() {
                stats.dropped.fetch_add(series.len() as u64, Relaxed);
            }
        }
    }
}

impl Senders {
    /// Once the queues are dropped: gives the senders `deadline` to deliver what they hold.
    pub async fn finish(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        for task in self.0 {
            if tokio::time::timeout_at(until, task).await.is_err() {
                warn!("remote_write: samples still queued at shutdown are not sent");
                return;
            }
        }
    }
}

fn client(ep: &Endpoint) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("moonfrp-agent/", env!("CARGO_PKG_VERSION")))
        .timeout(ep.timeout)
        .use_rustls_tls();
    let read = |p: &std::path::Path| {
        crate::untrusted::read_text(p, crate::tls::MAX_PEM_BYTES).map_err(|e| {
            format!(
                "remote_write {}: cannot read {}: {e}",
                ep.label,
                p.display()
            )
        })
    };
    if let Some(ca) = &ep.tls.ca_file {
        let pem = read(ca)?;
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("remote_write {}: {}: {e}", ep.label, ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&ep.tls.cert_file, &ep.tls.key_file) {
        let pem = format!("{}\n{}", read(cert)?, read(key)?);
        let id = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            format!(
                "remote_write {}: {} and {} do not make a client identity: {e}",
                ep.label,
                cert.display(),
                key.display()
            )
        })?;
        b = b.identity(id);
    }
    b.build()
        .map_err(|e| format!("remote_write {}: {e}", ep.label))
}

/// What a send came to.
enum Outcome {
    Sent,
    /// Not to be sent again (4xx other than a retried 429).
    Refused(String),
    /// Worth another try, after at least this long (`Retry-After`).
    Retry(String, Option<Duration>),
}

async fn send(client: &reqwest::Client, ep: &Endpoint, body: Vec<u8>) -> Outcome {
    let mut req = client
        .post(&ep.url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    for (k, v) in &ep.headers {
        req = req.header(k, v);
    }
    req = match &ep.auth {
        Auth::None => req,
        Auth::Basic { username, password } => req.basic_auth(username, Some(password)),
        Auth::Bearer(token) => req.bearer_auth(token),
    };
    let resp = match req.send().await {
        Ok(r) => r,
        // The error names the URL, never the credentials (they travel in headers).
        Err(e) => return Outcome::Retry(e.without_url().to_string(), None),
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Sent;
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // A little of the answer says why; bounded and escaped (it is the receiver's text).
    let text = resp.text().await.unwrap_or_default();
    let why = format!(
        "HTTP {status}: {}",
        crate::untrusted::message(text.trim(), 200)
    );
    if status.is_server_error() || (status.as_u16() == 429 && ep.retry_on_http_429) {
        Outcome::Retry(why, retry_after)
    } else {
        Outcome::Refused(why)
    }
}

/// Takes the snapshots from `rx` into a queue of at most `capacity` samples (the oldest go
/// when it overflows) and sends it in batches, in order.
async fn run(
    ep: Endpoint,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<Stats>,
) {
    let mut queue: VecDeque<TimeSeries> = VecDeque::new();
    let mut open = true;
    let mut backoff = ep.min_backoff;
    let mut failing: Option<String> = None;
    loop {
        if queue.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(b) => enqueue(&ep, &mut queue, b, &stats),
                None => open = false,
            }
            continue;
        }
        // Everything that arrived meanwhile joins the queue first, so a batch is full.
        while let Ok(b) = rx.try_recv() {
            enqueue(&ep, &mut queue, b, &stats);
        }
        let n = queue.len().min(ep.max_samples_per_send);
        let timeseries: Vec<TimeSeries> = queue.iter().take(n).cloned().collect();
        let newest = timeseries
            .iter()
            .filter_map(|t| t.samples.last().map(|s| s.timestamp))
            .max()
            .unwrap_or(0);
        let body = proto::encode(&WriteRequest { timeseries });
        match send(&client, &ep, body).await {
            Outcome::Sent => {
                queue.drain(..n);
                stats.sent.fetch_add(n as u64, Relaxed);
                stats
                    .last_send_ms
                    .store(crate::time::unix_ms(std::time::SystemTime::now()), Relaxed);
                stats.highest_sent_ms.fetch_max(newest, Relaxed);
                backoff = ep.min_backoff;
                if let Some(why) = failing.take() {
                    info!(url = %ep.label, previous = %why, "remote_write: the receiver takes samples again");
                }
            }
            Outcome::Refused(why) => {
                queue.drain(..n);
                stats.failed.fetch_add(n as u64, Relaxed);
                warn!(url = %ep.label, error = %why, samples = n, "remote_write: the receiver refused a batch; it is not sent again");
            }
            Outcome::Retry(why, after) => {
                stats.retried.fetch_add(n as u64, Relaxed);
                if failing.is_none() {
                    warn!(url = %ep.label, error = %why, "remote_write: sending failed; retrying with backoff (logged again when it works)");
                }
                failing = Some(why);
                // Retry-After is the receiver's to set (as Prometheus honours it), within reason.
                let wait = after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER));
                backoff = (backoff * 2).min(ep.max_backoff);
                // New snapshots keep arriving while waiting; a closed channel (shutdown) ends
                // the wait too, and the remaining tries get what is left of the deadline.
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        b = rx.recv(), if open => match b {
                            Some(b) => enqueue(&ep, &mut queue, b, &stats),
                            None => open = false,
                        },
                    }
                }
            }
        }
        stats.pending.store(queue.len() as u64, Relaxed);
    }
}

fn enqueue(ep: &Endpoint, queue: &mut VecDeque<TimeSeries>, (ts, series): Batch, stats: &Stats) {
    queue.extend(proto::timeseries(&series, ts, &ep.external_labels));
    let over = queue.len().saturating_sub(ep.capacity);
    if over > 0 {
        queue.drain(..over);
        stats.dropped.fetch_add(over as u64, Relaxed);
    }
    stats.pending.store(queue.len() as u64, Relaxed);
}
