//! Discovery's I/O and memory: which files to read (and whether they changed), which APIs to
//! ask, and how long a vanished tunnel is kept.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::{Found, FrpsView, Origin, Role, Source, derive};
use crate::frp::{
    api,
    client::{self, Endpoint},
    config::{self, FrpConfig},
};

/// Where to look and how long to wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Glob patterns of frp config files.
    pub configs: Vec<String>,
    /// How long a tunnel that vanished from every source is kept.
    pub grace: Duration,
    pub api_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            configs: ["toml", "ini", "yaml", "yml", "json"]
                .iter()
                .map(|e| format!("/etc/frp/*.{e}"))
                .collect(),
            grace: Duration::from_mins(5),
            api_timeout: Duration::from_secs(2),
        }
    }
}

/// A config file's stamp (mtime, size), last version that parsed, and current error.
type FileState = (Option<(SystemTime, u64)>, Option<FrpConfig>, Option<String>);

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
    seen: BTreeMap<(String, Role), (Found, Instant)>,
    logged: HashMap<String, String>,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Discovery {
    pub fn new(opts: Options) -> Self {
        Self {
            opts,
            files: BTreeMap::new(),
            seen: BTreeMap::new(),
            logged: HashMap::new(),
        }
    }

    pub fn set_options(&mut self, opts: Options) {
        if opts.configs != self.opts.configs {
            self.files.clear();
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

    /// Re-reads the config files whose modification time changed (and drops vanished ones).
    fn read_configs(&mut self) {
        let mut paths: Vec<PathBuf> = self
            .opts
            .configs
            .iter()
            .filter_map(|g| glob::glob(g).ok())
            .flatten()
            .flatten()
            .collect();
        paths.sort();
        paths.dedup();
        self.files.retain(|p, _| paths.contains(p));
        for path in paths {
            let now = stamp(&path);
            if self
                .files
                .get(&path)
                .is_some_and(|(s, ..)| *s == now && now.is_some())
            {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("frp config {}: {e}", path.display()))
                .and_then(|text| config::parse(&path, &text).map_err(|e| e.to_string()));
            let previous = self.files.remove(&path).and_then(|(_, good, _)| good);
            info!(path = %path.display(), "reading frp config");
            let entry = match parsed {
                Ok(cfg) => (now, Some(cfg), None),
                Err(e) => (now, previous, Some(e)),
            };
            self.files.insert(path, entry);
        }
    }

    /// Asks the API each config file points to.
    fn ask_apis(
        &mut self,
        rt: &tokio::runtime::Handle,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> Vec<Source> {
        let mut sources = Vec::new();
        let files: Vec<(PathBuf, Option<FrpConfig>, Option<String>)> = self
            .files
            .iter()
            .map(|(p, (_, good, err))| (p.clone(), good.clone(), err.clone()))
            .collect();
        for (path, good, err) in files {
            let label = path.display().to_string();
            self.note(
                &label,
                err.as_deref().map_or(Ok(()), Err),
                errors,
                "frp_config",
            );
            match good {
                None => {}
                Some(FrpConfig::Server(cfg)) => {
                    let api = cfg.web.as_ref().map(|w| {
                        rt.block_on(frps_view(&Endpoint::from_web(w), self.opts.api_timeout))
                    });
                    if let Some(result) = &api {
                        let src = format!(
                            "frps API at {}",
                            cfg.web.as_ref().map(|w| w.port).unwrap_or_default()
                        );
                        self.note(
                            &src,
                            result.as_ref().map(|_| ()).map_err(String::as_str),
                            errors,
                            "frps_api",
                        );
                    }
                    sources.push(Source::Server(cfg, api));
                }
                Some(FrpConfig::Client(cfg)) => {
                    let api = cfg.web.as_ref().map(|w| {
                        rt.block_on(client::get(
                            &Endpoint::from_web(w),
                            "/api/status",
                            self.opts.api_timeout,
                        ))
                        .map_err(String::from)
                        .and_then(|b| {
                            api::parse_client_status(&b)
                                .map_err(|e| format!("GET /api/status: {e}"))
                        })
                    });
                    if let Some(result) = &api {
                        let src = format!(
                            "frpc API at {}",
                            cfg.web.as_ref().map(|w| w.port).unwrap_or_default()
                        );
                        self.note(
                            &src,
                            result.as_ref().map(|_| ()).map_err(String::as_str),
                            errors,
                            "frpc_api",
                        );
                    }
                    sources.push(Source::Client(cfg, api));
                }
            }
        }
        sources
    }

    /// Re-reads changed config files, asks every API, and returns the tunnels FRP knows now
    /// (plus those still within their grace period). Blocks on the APIs: call it off the runtime.
    pub fn refresh(
        &mut self,
        rt: &tokio::runtime::Handle,
        errors: &mut BTreeMap<&'static str, u64>,
    ) -> Vec<Found> {
        self.read_configs();
        let sources = self.ask_apis(rt, errors);
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

/// frps's proxies from the v2 API (paged), or from v1 (one call per type) when v2 is absent.
async fn frps_view(ep: &Endpoint, timeout: Duration) -> Result<FrpsView, String> {
    // Best effort: without it the config file's ports stand.
    let info = match client::get(ep, "/api/serverinfo", timeout).await {
        Ok(body) => api::parse_serverinfo(&body).ok(),
        // Nobody answers: the proxy lists would only wait for the same timeout again.
        Err(client::GetError::Unreachable(e)) => return Err(e),
        Err(client::GetError::Answer(_)) => None,
    };
    let mut proxies = Vec::new();
    if let Ok(body) = client::get(ep, "/api/v2/proxies?page=1&pageSize=200", timeout).await
        && let Ok((first, total)) = api::parse_v2(&body)
    {
        proxies.extend(first);
        let mut page = 2;
        while (proxies.len() as u64) < total && page <= 50 {
            let body = client::get(
                ep,
                &format!("/api/v2/proxies?page={page}&pageSize=200"),
                timeout,
            )
            .await?;
            let (more, _) =
                api::parse_v2(&body).map_err(|e| format!("GET /api/v2/proxies: {e}"))?;
            if more.is_empty() {
                break;
            }
            proxies.extend(more);
            page += 1;
        }
        return Ok(FrpsView { proxies, info });
    }
    for kind in api::V1_TYPES {
        let path = format!("/api/proxy/{kind}");
        let body = client::get(ep, &path, timeout).await?;
        proxies.extend(api::parse_v1(kind, &body).map_err(|e| format!("GET {path}: {e}"))?);
    }
    Ok(FrpsView { proxies, info })
}
