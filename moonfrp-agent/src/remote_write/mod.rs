//! Prometheus remote_write 1.0: every snapshot's typed series pushed to each `[[remote_write]]`
//! endpoint, with the spec's retry rules (5xx and 429 retried with backoff and `Retry-After`,
//! other 4xx dropped), a queue bounded in samples, and the self-metrics Prometheus' own remote
//! storage reports.
//!
//! When the queue is full (the receiver has been away a while), its oldest snapshots leave
//! memory; with history on they are not lost: the sender reads them back from the history
//! database ([`backfill`]) and sends them, oldest first and at a bounded rate, before anything
//! newer — history is the write-ahead log. Without history they are dropped and counted.
//!
//! One task per endpoint; the collection thread only hands it an `Arc` of the series.
pub mod backfill;
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
    /// Starts a sender per endpoint on `rt` (`None` without endpoints), backfilling from
    /// `history` when given; an endpoint whose HTTP client cannot be built (a CA file that does
    /// not parse) is an error.
    pub fn start(
        endpoints: &[Endpoint],
        history: Option<&std::path::Path>,
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
            let sender = Sender {
                ep: ep.clone(),
                client,
                stats: stats.clone(),
                history: history.map(backfill::History::new),
                queue: VecDeque::new(),
                gap: None,
                gap_sent: 0,
                inflight: None,
            };
            tasks.push(rt.spawn(sender.run(rx)));
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

async fn send(client: &reqwest::Client, ep: &Endpoint, body: bytes::Bytes) -> Outcome {
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

/// Pause between two backfill requests: at most ten a second, so a receiver back from an
/// outage is not flooded.
const BACKFILL_PAUSE: Duration = Duration::from_millis(100);

/// One endpoint's sender.
struct Sender {
    ep: Endpoint,
    client: reqwest::Client,
    stats: Arc<Stats>,
    /// Where snapshots that left the queue are read back; `None`: they are dropped.
    history: Option<backfill::History>,
    /// Samples to send, oldest first, whole snapshots (all of one timestamp together).
    queue: VecDeque<TimeSeries>,
    /// The oldest snapshot (Unix ms) that left the queue unsent: everything from it up to the
    /// queue's first is read back from history before the queue is sent.
    gap: Option<i64>,
    /// Samples of the gap's first snapshot already sent (a snapshot larger than a request goes
    /// in parts).
    gap_sent: usize,
    /// The request being sent, encoded once and sent again as it is after a failure.
    inflight: Option<Request>,
}

/// One request: its body and what it holds.
struct Request {
    body: bytes::Bytes,
    samples: usize,
    /// Newest sample timestamp in it (Unix ms).
    newest: i64,
    /// Read back from history: the snapshot's Unix ms and whether this part is its last.
    history: Option<(i64, bool)>,
}

impl Request {
    fn new(timeseries: Vec<TimeSeries>, history: Option<(i64, bool)>) -> Self {
        let newest = timeseries
            .iter()
            .filter_map(|t| t.samples.last().map(|s| s.timestamp))
            .max()
            .unwrap_or(0);
        let samples = timeseries.len();
        Self {
            body: proto::encode(&WriteRequest { timeseries }).into(),
            samples,
            newest,
            history,
        }
    }
}

impl Sender {
    /// Takes the snapshots from `rx` and sends them, in order, until `rx` closes and nothing is
    /// left to send.
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        let mut open = true;
        let mut backoff = self.ep.min_backoff;
        let mut failing: Option<String> = None;
        loop {
            if self.inflight.is_none() && self.queue.is_empty() && self.gap.is_none() {
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(b) => self.enqueue(b),
                    None => open = false,
                }
                continue;
            }
            // Everything that arrived meanwhile joins the queue first, so a batch is full.
            while let Ok(b) = rx.try_recv() {
                self.enqueue(b);
            }
            if self.inflight.is_none() {
                self.inflight = self.next().await;
            }
            let Some(req) = &self.inflight else {
                continue;
            };
            let (n, newest, from_history) = (req.samples, req.newest, req.history.is_some());
            let outcome = send(&self.client, &self.ep, req.body.clone()).await;
            if matches!(outcome, Outcome::Sent | Outcome::Refused(_)) {
                self.done();
            }
            match outcome {
                Outcome::Sent => {
                    self.stats.sent.fetch_add(n as u64, Relaxed);
                    self.stats
                        .last_send_ms
                        .store(crate::time::unix_ms(std::time::SystemTime::now()), Relaxed);
                    self.stats.highest_sent_ms.fetch_max(newest, Relaxed);
                    backoff = self.ep.min_backoff;
                    if let Some(why) = failing.take() {
                        info!(url = %self.ep.label, previous = %why, "remote_write: the receiver takes samples again");
                    }
                    if from_history {
                        tokio::time::sleep(BACKFILL_PAUSE).await;
                    }
                }
                Outcome::Refused(why) => {
                    self.stats.failed.fetch_add(n as u64, Relaxed);
                    warn!(url = %self.ep.label, error = %why, samples = n, "remote_write: the receiver refused a batch; it is not sent again");
                }
                Outcome::Retry(why, after) => {
                    self.stats.retried.fetch_add(n as u64, Relaxed);
                    if failing.is_none() {
                        warn!(url = %self.ep.label, error = %why, "remote_write: sending failed; retrying with backoff (logged again when it works)");
                    }
                    failing = Some(why);
                    // Retry-After is the receiver's to set (as Prometheus honours it), within
                    // reason.
                    let wait = after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER));
                    backoff = (backoff * 2).min(self.ep.max_backoff);
                    // New snapshots keep arriving while waiting; a closed channel (shutdown)
                    // ends the wait too, and the remaining tries get what is left of the
                    // deadline.
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            b = rx.recv(), if open => match b {
                                Some(b) => self.enqueue(b),
                                None => open = false,
                            },
                        }
                    }
                }
            }
            self.stats.pending.store(self.pending(), Relaxed);
        }
    }

    /// The next request: what history holds of the gap first, then the front of the queue
    /// (taken off it: the queue's overflow never touches a request in flight).
    async fn next(&mut self) -> Option<Request> {
        if let (Some(from), Some(history)) = (self.gap, &self.history) {
            let to = self
                .queue
                .front()
                .and_then(|t| t.samples.first())
                .map_or(i64::MAX, |s| s.timestamp);
            let (h, ext) = (history.clone(), self.ep.external_labels.clone());
            let read = tokio::task::spawn_blocking(move || h.first(from, to, &ext))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match read {
                Ok(Some((ts, samples))) => {
                    // A snapshot larger than a request goes in parts.
                    let rest = samples.len().saturating_sub(self.gap_sent);
                    let n = rest.min(self.ep.max_samples_per_send);
                    let part = samples.into_iter().skip(self.gap_sent).take(n).collect();
                    return Some(Request::new(part, Some((ts, n == rest))));
                }
                Ok(None) => {
                    self.gap = None;
                    info!(url = %self.ep.label, "remote_write: caught up with history");
                }
                Err(e) => {
                    warn!(url = %self.ep.label, error = %e, "remote_write: cannot read the missed snapshots back from history; they are lost");
                    self.gap = None;
                }
            }
        }
        let n = self.queue.len().min(self.ep.max_samples_per_send);
        (n > 0).then(|| Request::new(self.queue.drain(..n).collect(), None))
    }

    /// The request in flight went (or was refused for good): a history part moves the gap on.
    fn done(&mut self) {
        let Some(req) = self.inflight.take() else {
            return;
        };
        if let Some((ts, last)) = req.history {
            if last {
                self.gap = Some(ts + 1);
                self.gap_sent = 0;
            } else {
                self.gap_sent += req.samples;
            }
        }
    }

    /// Samples waiting: the queue's and the request in flight's.
    fn pending(&self) -> u64 {
        (self.queue.len() + self.inflight.as_ref().map_or(0, |r| r.samples)) as u64
    }

    /// Adds a snapshot; whole snapshots leave the front while more than `capacity` samples are
    /// pending — into the gap (read back later) with history, dropped without.
    fn enqueue(&mut self, (ts, series): Batch) {
        self.queue
            .extend(proto::timeseries(&series, ts, &self.ep.external_labels));
        // The request in flight counts against the capacity too: `pending` never exceeds it.
        while self.pending() > self.ep.capacity as u64 {
            let Some(first) = self
                .queue
                .front()
                .and_then(|t| t.samples.first())
                .map(|s| s.timestamp)
            else {
                break;
            };
            let before = self.queue.len();
            while self
                .queue
                .front()
                .and_then(|t| t.samples.first())
                .is_some_and(|s| s.timestamp == first)
            {
                self.queue.pop_front();
            }
            if self.history.is_some() {
                self.gap.get_or_insert(first);
            } else {
                self.stats
                    .dropped
                    .fetch_add((before - self.queue.len()) as u64, Relaxed);
            }
        }
        self.stats.pending.store(self.pending(), Relaxed);
    }
}
