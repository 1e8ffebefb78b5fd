//! Discovery's I/O and memory: which files to read (and whether they changed), which APIs to
//! ask, and how long a vanished tunnel is kept.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::{Found, FrpsView, Origin, Role, Source, derive};
use crate::{
    frp::{
        api,
        client::{self, Endpoint},
        config::{self, FrpConfig},
    },
    untrusted::{self, Limit},
};

/// Where to look, how long to wait, how much to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Glob patterns of frp config files.
    pub configs: Vec<String>,
    /// How long a tunnel that vanished from every source is kept.
    pub grace: Duration,
    /// Deadline of one source's whole answer (every call it takes, pages included).
    pub api_timeout: Duration,
    /// Most proxies taken from one source (a config file, an frps or frpc API); the rest are
    /// left out, counted and logged.
    pub max_proxies: usize,
    /// How long a collection waits for the APIs' answers before it goes on with the last
    /// answer of each source that has not answered yet (the fetch goes on in the background).
    pub wait: Duration,
}

/// Largest frp config file read (an frpc config with tens of thousands of proxies).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Default of `frp.max_proxies`.
pub const DEFAULT_MAX_PROXIES: usize = 1000;

impl Default for Options {
    fn default() -> Self {
        Self {
            configs: ["toml", "ini", "yaml", "yml", "json"]
                .iter()
                .map(|e| format!("/etc/frp/*.{e}"))
                .collect(),
            grace: Duration::from_mins(5),
            api_timeout: Duration::from_secs(2),
            max_proxies: DEFAULT_MAX_PROXIES,
            wait: Duration::from_secs(2),
        }
    }
}

/// A config file's stamp (mtime, size), last version that parsed, and current error.
type FileState = (Option<(SystemTime, u64)>, Option<FrpConfig>, Option<String>);

/// What an API answered.
#[derive(Clone, Debug)]
enum Answer {
    Server(FrpsView),
    Client(Vec<api::ClientProxy>),
}

/// The API a config file points to, and what it last answered.
#[derive(Debug)]
struct ApiState {
    endpoint: Endpoint,
    client: bool,
    /// A fetch is running in the background.
    in_flight: bool,
    /// The latest completed answer, used until the next one completes.
    last: Option<Result<Answer, String>>,
}

/// A fetch that completed: for which file and endpoint, and its result.
type Done = (PathBuf, Endpoint, Result<Answer, String>);

/// Directories to watch for changes of the files `patterns` match: each pattern's longest
/// directory prefix without wildcards.
pub fn watch_dirs(patterns: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = patterns
        .iter()
        .map(|p| {
            let mut dir = PathBuf::new();
            for c in std::path::Path::new(p).components() {
                if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
                    return dir;
                }
                dir.push(c);
            }
            dir.parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default()
        })
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The discovery state kept between intervals.
#[derive(Debug)]
pub struct Discovery {
    opts: Options,
    /// Per file: its stamp, the last version that parsed, and the current error if the latest
    /// version does not (a broken edit keeps the previous tunnels).
    files: BTreeMap<PathBuf, FileState>,
    /// Per file with a web server: its API.
    apis: BTreeMap<PathBuf, ApiState>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    seen: BTreeMap<(String, Role), (Found, Instant)>,
    logged: HashMap<String, String>,
    /// The files the patterns matched, with the modification times of the directories they
    /// were looked for in and when: globbing compiles every pattern, so it is done again only
    /// when a directory changed (a file added, removed or renamed) or after a minute.
    matched: Option<(Vec<PathBuf>, Vec<Option<SystemTime>>, Instant)>,
}

/// Longest a glob result is reused while its directories look unchanged (a pattern with a
/// wildcard in a directory component can match a file deeper than the directory watched).
const REGLOB_AFTER: Duration = Duration::from_mins(1);

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The source's name in logs.
fn api_label(client: bool, ep: &Endpoint) -> String {
    format!(
        "{} API at {}",
        if client { "frpc" } else { "frps" },
        ep.addr
    )
}

/// Sorts by name and keeps the first `max`; how many were left out.
fn cap<T>(items: &mut Vec<T>, max: usize, name: impl Fn(&T) -> &str) -> u64 {
    items.sort_by(|a, b| name(a).cmp(name(b)));
    let left_out = items.len().saturating_sub(max) as u64;
    items.truncate(max);
    left_out
}

/// A line for the log about names and counts cut from one source (`None`: nothing was cut),
/// and the counts of `moonfrp_agent_limit_reached_total`.
fn limits_note(renamed: usize, left_out: u64, max: usize) -> Option<String> {
    Limit::Name.hits(renamed as u64);
    Limit::Proxies.hits(left_out);
    let mut parts = Vec::new();
    if renamed > 0 {
        parts.push(format!(
            "{renamed} proxy name(s) had control characters or more than {} characters: escaped and cut (see the `tunnel` label)",
            untrusted::MAX_NAME_CHARS
        ));
    }
    if left_out > 0 {
        parts.push(format!(
            "{left_out} proxies beyond `frp.max_proxies` ({max}) left out (the first {max} by name are kept)"
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

impl Discovery {
    pub fn new(opts: Options) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Self {
            opts,
            files: BTreeMap::new(),
            apis: BTreeMap::new(),
            done_tx,
            done_rx,
            seen: BTreeMap::new(),
            logged: HashMap::new(),
            matched: None,
        }
    }

    pub fn set_options(&mut self, opts: Options) {
        if opts.configs != self.opts.configs || opts.max_proxies != self.opts.max_proxies {
            self.files.clear();
            self.matched = None;
        }
        self.opts = opts;
    }

    /// Logs a source's error once per change, and its recovery.
    fn note(
        &mut self,
        source: &str,
        result: Result<(), &str>,
        errors: &mut BTreeMap<&'static str, u64>,
        key: &'static str,
    ) {
        match result {
            Ok(()) => {
                if self.logged.remove(source).is_some() {
                    info!(source, "frp source works again");
                }
            }
            Err(e) => {
                *errors.entry(key).or_default() += 1;
                if self.logged.get(source).map(String::as_str) != Some(e) {
                    warn!(source, error = %e, "frp source failed; the others are still used");
                    self.logged.insert(source.to_owned(), e.to_owned());
                }
            }
        }
    }

    /// Logs what a source had cut, once per change.
    fn note_limits(&mut self, source: &str, note: Option<String>) {
        let key = format!("{source} (limits)");
        match note {
            None => {
                self.logged.remove(&key);
            }
            Some(n) => {
                if self.logged.get(&key) != Some(&n) {
                    warn!(source, "{n}");
                    self.logged.insert(key, n);
                }
            }
        }
    }

    /// Re-reads the config files whose modification time changed (and drops vanished ones).
    /// The files the patterns match, globbed again only when needed (see `matched`).
    fn config_paths(&mut self) -> Vec<PathBuf> {
        let dirs: Vec<Option<SystemTime>> = watch_dirs(&self.opts.configs)
            .iter()
            .map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
            .collect();
        match &self.matched {
            Some((paths, seen, at)) if *seen == dirs && at.elapsed() < REGLOB_AFTER => {
                paths.clone()
            }
            _ => {
                let paths = matching(&self.opts.configs);
                self.matched = Some((paths.clone(), dirs, Instant::now()));
                paths
            }
        }
    }

    fn read_configs(&mut self) {
        let paths = self.config_paths();
        self.files.retain(|p, _| paths.contains(p));
        self.apis.retain(|p, _| paths.contains(p));
        for path in paths {
            let now = stamp(&path);
            if self
                .files
                .get(&path)
                .is_some_and(|(s, ..)| *s == now && now.is_some())
            {
                continue;
            }
            info!(path = %path.display(), "reading frp config");
            let parsed = read_config(&path, self.opts.max_proxies);
            let previous = self.files.remove(&path).and_then(|(_, good, _)| good);
            let entry = match parsed {
                Ok((cfg, note)) => {
                    self.note_limits(&path.display().to_string(), note);
                    (now, Some(cfg), None)
                }
                Err(e) => (now, previous, Some(e)),
            };
            self.files.insert(path, entry);
        }
    }

    /// Starts a background fetch for every API that has none running.
    fn start_fetches(&mut self, rt: &tokio::runtime::Handle) {
        for (path, (_, good, _)) in &self.files {
            let target = match good {
                Some(FrpConfig::Server(c)) => c.web.as_ref().map(|w| (w, false)),
                Some(FrpConfig::Client(c)) => c.web.as_ref().map(|w| (w, true)),
                None => None,
            };
            let Some((web, client)) = target else {
                self.apis.remove(path);
                continue;
            };
            let endpoint = Endpoint::from_web(web);
            let api = self.apis.entry(path.clone()).or_insert_with(|| ApiState {
                endpoint: endpoint.clone(),
                client,
                in_flight: false,
                last: None,
            });
            if api.endpoint != endpoint || api.client != client {
                *api = ApiState {
                    endpoint: endpoint.clone(),
                    client,
                    in_flight: false,
                    last: None,
                };
            }
            if api.in_flight {
                continue;
            }
            api.in_flight = true;
            let (tx, path, timeout, max) = (
                self.done_tx.clone(),
                path.clone(),
                self.opts.api_timeout,
                self.opts.max_proxies,
            );
            rt.spawn(async move {
                // Each call gets what is left of the source's deadline, so the calls time out
                // at the deadline themselves; the outer limit only catches what has no timer.
                let deadline = Instant::now() + timeout;
                // A panic in the answer's parser costs this source, like an error; the task
                // must end with a message either way, or the source would stay in flight.
                let fetching = untrusted::contained_async(
                    format!("{}'s answer", endpoint.addr),
                    fetch(&endpoint, client, deadline, max),
                );
                let result = tokio::time::timeout(timeout + Duration::from_millis(500), fetching)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("{} gave no whole answer in time", endpoint.addr))
                    })
                    .map_err(|e| format!("{e} (frp.api_timeout = {timeout:?})"));
                let _ = tx.send((path, endpoint, result));
            });
        }
    }

    /// Takes the answers that complete within `opts.wait`; the others keep running and their
    /// sources' last answers stand in.
    fn take_answers(&mut self, errors: &mut BTreeMap<&'static str, u64>) {
        let deadline = Instant::now() + self.opts.wait;
        loop {
            while let Ok(done) = self.done_rx.try_recv() {
                self.apply(done, errors);
            }
            if !self.apis.values().any(|a| a.in_flight) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(done) => self.apply(done, errors),
                Err(_) => return,
            }
        }
    }

    fn apply(&mut self, (path, endpoint, result): Done, errors: &mut BTreeMap<&'static str, u64>) {
        let Some(api) = self.apis.get_mut(&path) else {
            return;
        };
        if api.endpoint != endpoint {
            // An answer for an address the file no longer names.
            return;
        }
        api.in_flight = false;
        let client = api.client;
        let label = api_label(client, &endpoint);
        let key = if client { "frpc_api" } else { "frps_api" };
        self.note(
            &label,
            result.as_ref().map(|_| ()).map_err(String::as_str),
            errors,
            key,
        );
        if let Ok(answer) = &result {
            let (renamed, left_out) = match answer {
                Answer::Server(v) => (v.proxies.iter().filter(|p| p.renamed).count(), v.left_out),
                Answer::Client(list) => (list.iter().filter(|p| p.renamed).count(), 0),
            };
            let note = limits_note(renamed, left_out, self.opts.max_proxies);
            self.note_limits(&label, note);
        }
        if let Some(api) = self.apis.get_mut(&path) {
            api.last = Some(result);
        }
    }

    /// Each config file that parsed, with its API's latest answer.
    fn sources(&mut self, errors: &mut BTreeMap<&'static str, u64>) -> Vec<Source> {
        let files: Vec<(PathBuf, Option<FrpConfig>, Option<String>)> = self
            .files
            .iter()
            .map(|(p, (_, good, err))| (p.clone(), good.clone(), err.clone()))
            .collect();
        let mut sources = Vec::new();
        for (path, good, err) in files {
            self.note(
                &path.display().to_string(),
                err.as_deref().map_or(Ok(()), Err),
                errors,
                "frp_config",
            );
            let last = self.apis.get(&path).and_then(|a| a.last.clone());
            match good {
                None => {}
                Some(FrpConfig::Server(cfg)) => sources.push(Source::Server(
                    cfg,
                    last.map(|r| {
                        r.and_then(|a| match a {
                            Answer::Server(v) => Ok(v),
                            Answer::Client(_) => Err("frpc answered for frps".to_owned()),
                        })
                    }),
                )),
                Some(FrpConfig::Client(cfg)) => sources.push(Source::Client(
                    cfg,
                    last.map(|r| {
                        r.and_then(|a| match a {
                            Answer::Client(v) => Ok(v),
                            Answer::Server(_) => Err("frps answered for frpc".to_owned()),
                        })
                    }),
                )),
            }
        }
        sources
    }

    /// Re-reads changed config files, asks every API (waiting at most `opts.wait`), and returns
    /// the tunnels FRP knows now (plus those still within their grace period). Call it off the
    /// runtime: it blocks for up to `opts.wait`.
    pub fn refresh(
        &mut self,
        rt: &tokio::runtime::Handle,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> Vec<Found> {
        self.read_configs();
        self.start_fetches(rt);
        self.take_answers(errors);
        let sources = self.sources(errors);
        let now = Instant::now();
        for mut f in derive(&sources) {
            let key = (f.name.clone(), f.role);
            // frps forgets an offline proxy's port (its `conf` is null): it still lives there.
            if f.port.is_none()
                && let Some((old, _)) = self.seen.get(&key)
            {
                f.port = old.port;
            }
            self.seen.insert(key, (f, now));
        }
        // What a config file lists is authoritative: gone from the file, gone now. What an API
        // reported may be a hiccup: kept for the grace period.
        let grace = self.opts.grace;
        self.seen.retain(|_, (f, at)| {
            *at == now || (f.origin == Origin::FrpsApi && now.duration_since(*at) <= grace)
        });
        self.seen
            .values()
            .map(|(f, at)| {
                let mut f = f.clone();
                if *at != now {
                    // Not confirmed this time: FRP's word is stale.
                    f.status = None;
                    f.stats = None;
                }
                f
            })
            .collect()
    }
}

/// The files `patterns` match, sorted.
fn matching(patterns: &[String]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = patterns
        .iter()
        .filter_map(|g| glob::glob(g).ok())
        .flatten()
        .flatten()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// A config file read and parsed as the agent reads it, and a note on what was cut.
pub type Checked = Result<(FrpConfig, Option<String>), String>;

/// Every file the `configs` patterns match, read and parsed as `run` reads them (for `check`).
pub fn check_configs(opts: &Options) -> Vec<(PathBuf, Checked)> {
    matching(&opts.configs)
        .into_iter()
        .map(|p| {
            let parsed = read_config(&p, opts.max_proxies);
            (p, parsed)
        })
        .collect()
}

/// Reads and parses one config file (bounded in size), keeping at most `max` proxies; the
/// parsed config and a note on what was cut.
fn read_config(path: &std::path::Path, max: usize) -> Checked {
    let text = untrusted::read_text(path, MAX_CONFIG_BYTES).map_err(|e| {
        if matches!(e, untrusted::ReadError::TooLarge { .. }) {
            Limit::ConfigSize.hit();
        }
        format!("frp config {}: {e}", path.display())
    })?;
    let mut cfg =
        untrusted::contained(format_args!("frp config {}", untrusted::path(path)), || {
            config::parse(path, &text)
        })
        .map_err(|bug| untrusted::redact_secrets(&bug, &text))?
        .map_err(|e| e.to_string())?;
    let note = match &mut cfg {
        FrpConfig::Client(c) => {
            let renamed = c.proxies.iter().filter(|p| p.renamed).count();
            let left_out = cap(&mut c.proxies, max, |p| &p.name);
            limits_note(renamed, left_out, max)
        }
        FrpConfig::Server(_) => None,
    };
    Ok((cfg, note))
}

/// One source's whole answer (run with the source's deadline around it).
async fn fetch(
    ep: &Endpoint,
    client: bool,
    deadline: Instant,
    max: usize,
) -> Result<Answer, String> {
    if client {
        match client::get(ep, "/api/status", left(deadline)).await {
            Ok(body) => api::parse_client_status(&body)
                .map(|mut list| {
                    cap(&mut list, max, |p| &p.name);
                    Answer::Client(list)
                })
                .map_err(|e| format!("GET /api/status: {e}")),
            Err(e) => Err(e.into()),
        }
    } else {
        frps_view(ep, deadline, max).await.map(Answer::Server)
    }
}

/// What is left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Proxies asked for per page of frps's v2 API.
const PAGE: usize = 200;

/// frps's proxies from the v2 API (paged), or from v1 (one call per type) when v2 is absent;
/// at most `max`, the first by name.
async fn frps_view(ep: &Endpoint, deadline: Instant, max: usize) -> Result<FrpsView, String> {
    // Best effort: without it the config file's ports stand.
    let info = match client::get(ep, "/api/serverinfo", left(deadline)).await {
        Ok(body) => api::parse_serverinfo(&body).ok(),
        Err(client::GetError::Answer(_)) => None,
        // Nobody answers, or not in time: the proxy lists would only wait for the same again.
        Err(e) => return Err(e.into()),
    };
    let mut proxies = Vec::new();
    if let Ok(body) = client::get(
        ep,
        &format!("/api/v2/proxies?page=1&pageSize={PAGE}"),
        left(deadline),
    )
    .await
        && let Ok((first, total)) = api::parse_v2(&body)
    {
        proxies.extend(first);
        let mut page = 2;
        while (proxies.len() as u64) < total && proxies.len() < max {
            let path = format!("/api/v2/proxies?page={page}&pageSize={PAGE}");
            let body = client::get(ep, &path, left(deadline)).await?;
            let (more, _) =
                api::parse_v2(&body).map_err(|e| format!("GET /api/v2/proxies: {e}"))?;
            if more.is_empty() {
                break;
            }
            proxies.extend(more);
            page += 1;
        }
        // Pages not asked for count as left out too.
        let cut = cap(&mut proxies, max, |p| &p.name);
        let left_out = cut.max(total.saturating_sub(proxies.len() as u64));
        return Ok(FrpsView {
            proxies,
            info,
            left_out,
        });
    }
    for kind in api::V1_TYPES {
        let path = format!("/api/proxy/{kind}");
        let body = client::get(ep, &path, left(deadline)).await?;
        proxies.extend(api::parse_v1(kind, &body).map_err(|e| format!("GET {path}: {e}"))?);
    }
    let left_out = cap(&mut proxies, max, |p| &p.name);
    Ok(FrpsView {
        proxies,
        info,
        left_out,
    })
}
