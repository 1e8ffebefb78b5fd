//! Agent configuration: a TOML file (`--config`) merged with command-line flags.
//!
//! Every error names the file or flag it comes from and what to do about it; nothing here needs
//! privileges, so bad input is rejected before the agent touches the kernel.
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use moonfrp_common::{DEFAULT_PEERS, DEFAULT_SLOTS, DEFAULT_TRACKED_CONNECTIONS, MAX_SLOTS, Proto};
use serde::Deserialize;

use crate::{
    alerts::{AlertsConfig, config::AlertsFile},
    history::{HistoryConfig, Level, Settings},
    untrusted::{self, shown},
};

/// Default address of the HTTP server: loopback only, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// Default collection interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_mins(1);
/// Most peers per tunnel `kernel.export_peers` may put on `/metrics`.
pub const MAX_EXPORTED_PEERS: u32 = 10;
/// Shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_hours(1);
/// Largest `kernel.peers`: the per-CPU LRU table takes ≈ 56 B per entry and CPU.
pub const MAX_PEERS: u32 = 262_144;
/// Largest `kernel.tracked_connections` (≈ 80 B per entry).
pub const MAX_TRACKED_CONNECTIONS: u32 = 1 << 20;
/// Largest agent config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Where a tunnel definition came from (exported as the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelSource {
    Cli,
    ConfigFile,
    /// An frps or frpc configuration file.
    FrpConfig,
    /// The frps dashboard API.
    FrpsApi,
    /// Watched for a while on request (`moonfrp-agent inspect --port`).
    Inspect,
}

impl TunnelSource {
    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::ConfigFile => "config",
            Self::FrpConfig => "frp-config",
            Self::FrpsApi => "frps-api",
            Self::Inspect => "inspect",
        }
    }
}

/// One tunnel to watch: a name and a local (port, protocol).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelSpec {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
    pub source: TunnelSource,
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub log_level: String,
    /// Sorted by name; names and (port, proto) pairs are unique.
    pub tunnels: Vec<TunnelSpec>,
    pub kernel: KernelConfig,
    pub collectors: CollectorsConfig,
    pub frp: FrpDiscoveryConfig,
    /// Write the exposition here every interval (for node_exporter's textfile collector).
    pub textfile: Option<PathBuf>,
    /// The history database and how long it keeps what.
    pub history: HistoryConfig,
    /// Alert rules and notification channels.
    pub alerts: AlertsConfig,
    /// Bounds of the HTTP server.
    pub server: crate::server::Limits,
    /// Optional families and histogram buckets of `/metrics` (and history).
    pub metrics: crate::metrics::Settings,
}

/// Sizes of the kernel tables, fixed when the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// Counter slots: how many (port, protocol) pairs can be watched at once.
    pub slots: u32,
    /// Open connections tracked for the duration histogram (LRU beyond that).
    pub tracked_connections: u32,
    /// Peer table capacity: (port, remote address) pairs with their traffic (LRU beyond);
    /// 0 turns peer counting off (it roughly doubles the per-packet cost on watched ports).
    pub peers: u32,
    /// Export each tunnel's busiest peers to `/metrics` (0 = none, the default; at most
    /// [`MAX_EXPORTED_PEERS`]).
    pub export_peers: u32,
    /// Keep the kernel's BPF run-time statistics on while the agent runs (≈ 20 ns per program
    /// run, for every BPF program on the host), for `moonfrp_agent_bpf_*`.
    pub bpf_stats: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            slots: DEFAULT_SLOTS,
            tracked_connections: DEFAULT_TRACKED_CONNECTIONS,
            peers: DEFAULT_PEERS,
            export_peers: 0,
            bpf_stats: true,
        }
    }
}

impl KernelConfig {
    /// Checks every size against its range; the error names the key.
    fn validate(self, file_origin: &str) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("{file_origin}: key `kernel.{k}`");
        ranged(&key("slots"), self.slots, 1, MAX_SLOTS)?;
        ranged(&key("peers"), self.peers, 0, MAX_PEERS)?;
        ranged(
            &key("tracked_connections"),
            self.tracked_connections,
            1,
            MAX_TRACKED_CONNECTIONS,
        )?;
        if self.export_peers > MAX_EXPORTED_PEERS {
            return Err(invalid(
                &key("export_peers"),
                format!(
                    "{} is over the cap of {MAX_EXPORTED_PEERS} (one series per peer and tunnel); peers beyond it are in the API",
                    self.export_peers
                ),
            ));
        }
        Ok(self)
    }
}

/// What the host collectors look for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    /// Process names (or executable file names) that are FRP.
    pub processes: Vec<String>,
    /// systemd unit patterns (globs as `systemctl` takes them).
    pub units: Vec<String>,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        let d = crate::collect::CollectOptions::default();
        Self {
            processes: d.process_names,
            units: d.unit_patterns,
        }
    }
}

impl CollectorsConfig {
    /// The collectors' options at this collection interval: a call that can block gets a
    /// quarter of the interval, at most 2 s.
    pub fn options(&self, interval: Duration) -> crate::collect::CollectOptions {
        crate::collect::CollectOptions {
            process_names: self.processes.clone(),
            unit_patterns: self.units.clone(),
            deadline: (interval / 4).min(Duration::from_secs(2)),
        }
    }
}

/// How FRP's own configs and APIs are found and asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrpDiscoveryConfig {
    /// Off: only the tunnels given explicitly are watched.
    pub enabled: bool,
    pub options: crate::frp::discovery::Options,
}

/// `[frp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrpFile {
    enabled: Option<bool>,
    configs: Option<Vec<String>>,
    grace: Option<String>,
    api_timeout: Option<String>,
    max_proxies: Option<u64>,
}

/// `value` of `key` if it lies in `lo..=hi`, else an error naming the key and the range.
fn ranged<T: PartialOrd + Copy + fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        return Err(invalid(
            key,
            format!("{value} is out of range; use {lo}..={hi}"),
        ));
    }
    Ok(value)
}

fn frp_discovery(
    f: FrpFile,
    file_origin: &str,
    interval: Duration,
) -> Result<FrpDiscoveryConfig, ConfigError> {
    let mut options = crate::frp::discovery::Options::default();
    if let Some(c) = f.configs {
        options.configs = c;
    }
    let key = |k: &str| format!("{file_origin}: key `frp.{k}`");
    if let Some(g) = f.grace {
        options.grace = untrusted::duration_in(&g, Duration::ZERO, Duration::from_hours(24))
            .map_err(|p| invalid(&key("grace"), p))?;
    }
    if let Some(t) = f.api_timeout {
        options.api_timeout =
            untrusted::duration_in(&t, Duration::from_millis(100), Duration::from_mins(1))
                .map_err(|p| invalid(&key("api_timeout"), p))?;
    }
    if let Some(m) = f.max_proxies {
        options.max_proxies = ranged(&key("max_proxies"), m, 1, 65_535)? as usize;
    }
    // A collection waits for the APIs at most a twentieth of its interval; a slower answer is
    // used by the next collection (README: FRP discovery).
    options.wait = options.api_timeout.min(interval / 20);
    Ok(FrpDiscoveryConfig {
        enabled: f.enabled.unwrap_or(true),
        options,
    })
}

/// `[history]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFile {
    enabled: Option<bool>,
    retention: Option<String>,
    rollups: Option<Vec<RollupFile>>,
    max_points: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollupFile {
    step: String,
    keep: String,
}

fn history(
    f: HistoryFile,
    data_dir: PathBuf,
    file_origin: &str,
) -> Result<HistoryConfig, ConfigError> {
    let key = |k: &str| format!("{file_origin}: key `history.{k}`");
    let duration = |k: &str, v: &str| {
        humantime::parse_duration(v).map_err(|e| {
            invalid(
                &key(k),
                format!("`{}` is not a duration ({e}); use e.g. 24h or 7d", shown(v)),
            )
        })
    };
    let mut settings = Settings::default();
    if let Some(r) = f.retention {
        settings.retention = duration("retention", &r)?;
        if settings.retention < Duration::from_mins(1) {
            return Err(invalid(
                &key("retention"),
                format!("`{}` is shorter than 1m", shown(&r)),
            ));
        }
    }
    if let Some(levels) = f.rollups {
        settings.levels = levels
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(Level {
                    step: duration(&format!("rollups[{i}].step"), &l.step)?,
                    keep: duration(&format!("rollups[{i}].keep"), &l.keep)?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
    }
    if let Some(m) = f.max_points {
        settings.max_points = ranged(&key("max_points"), m, 2, 1_000_000)?;
    }
    settings
        .validate()
        .map_err(|p| invalid(&format!("{file_origin}: section `history`"), p))?;
    Ok(HistoryConfig {
        enabled: f.enabled.unwrap_or(true),
        data_dir,
        settings,
    })
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {source} (check the path given to --config and its permissions)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
}

/// The file as written by the user; every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    interval: Option<String>,
    log_level: Option<String>,
    #[serde(default)]
    tunnels: Vec<FileTunnel>,
    #[serde(default)]
    kernel: KernelConfig,
    #[serde(default)]
    collectors: CollectorsConfig,
    #[serde(default)]
    frp: FrpFile,
    textfile: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    history: HistoryFile,
    #[serde(default)]
    alerts: AlertsFile,
    #[serde(default)]
    server: crate::server::Limits,
    #[serde(default)]
    metrics: crate::metrics::SettingsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTunnel {
    name: String,
    port: i64,
    #[serde(default = "default_proto")]
    proto: String,
}

fn default_proto() -> String {
    "tcp".to_owned()
}

/// Settings given on the command line; they override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub interval: Option<String>,
    pub log_level: Option<String>,
    /// Raw `--tunnel NAME=PORT[/tcp|udp]` values.
    pub tunnels: Vec<String>,
    pub textfile: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Reads `path` (if any), applies `overrides` and validates the result.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (file, file_origin) = match path {
            Some(path) => {
                let text = untrusted::read_text(path, MAX_CONFIG_BYTES).map_err(|e| match e {
                    untrusted::ReadError::Io(source) => ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    },
                    untrusted::ReadError::NotRegular => ConfigError::Read {
                        path: path.to_owned(),
                        source: std::io::Error::other("not a regular file"),
                    },
                    other => ConfigError::Parse {
                        path: path.to_owned(),
                        message: other.to_string(),
                    },
                })?;
                (
                    parse_file(path, &text)?,
                    format!("config file {}", path.display()),
                )
            }
            None => (FileConfig::default(), String::new()),
        };
        Self::merge(file, &file_origin, overrides)
    }

    fn merge(file: FileConfig, file_origin: &str, o: &Overrides) -> Result<Self, ConfigError> {
        let pick =
            |flag: &str, cli: &Option<String>, from_file: Option<String>| match (cli, from_file) {
                (Some(v), _) => Some((v.clone(), format!("--{flag}"))),
                (None, Some(v)) => Some((
                    v,
                    format!("{file_origin}: key `{}`", flag.replace('-', "_")),
                )),
                (None, None) => None,
            };
        let listen = match pick("listen", &o.listen, file.listen) {
            Some((v, origin)) => v.parse().map_err(|e| {
                invalid(
                    &origin,
                    format!(
                        "`{}` is not an address:port ({e}); use e.g. 127.0.0.1:9477 or [::1]:9477",
                        shown(&v)
                    ),
                )
            })?,
            None => DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
        };
        let interval = match pick("interval", &o.interval, file.interval) {
            Some((v, origin)) => parse_interval(&v).map_err(|p| invalid(&origin, p))?,
            None => DEFAULT_INTERVAL,
        };
        let log_level = match pick("log-level", &o.log_level, file.log_level) {
            Some((v, origin)) => parse_log_level(&v).map_err(|p| invalid(&origin, p))?,
            None => "info".to_owned(),
        };
        let kernel = file.kernel.validate(file_origin)?;
        let server = file
            .server
            .validate()
            .map_err(|p| invalid(file_origin, p))?;

        let tunnels = all_tunnels(file.tunnels, file_origin, o)?;
        if tunnels.len() > kernel.slots as usize {
            return Err(invalid(
                "tunnels",
                format!(
                    "{} tunnels but only {} kernel slots; raise `kernel.slots` in the config file",
                    tunnels.len(),
                    kernel.slots
                ),
            ));
        }
        let tunnels = check_unique(tunnels)?;
        let textfile = o.textfile.clone().or(file.textfile);
        if let Some(t) = &textfile {
            // Never replace a device, a FIFO, a directory or whatever a symlink points at.
            let not_plain = std::fs::symlink_metadata(t).is_ok_and(|m| !m.file_type().is_file());
            if t.file_name().is_none() || not_plain {
                return Err(invalid(
                    "textfile",
                    format!(
                        "`{}` is not a regular file; give the path of a file (it is replaced every interval), e.g. /var/lib/node_exporter/textfile/moonfrp.prom",
                        shown(&t.display().to_string())
                    ),
                ));
            }
        }
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(crate::history::DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "is empty; give a directory, e.g. /var/lib/moonfrp",
            ));
        }
        if std::fs::metadata(&data_dir).is_ok_and(|m| !m.is_dir()) {
            return Err(invalid(
                "data_dir",
                format!(
                    "`{}` exists and is not a directory; give a directory (created if missing)",
                    shown(&data_dir.display().to_string())
                ),
            ));
        }
        Ok(Self {
            listen,
            interval,
            log_level,
            tunnels,
            kernel,
            collectors: file.collectors,
            frp: frp_discovery(file.frp, file_origin, interval)?,
            textfile,
            history: history(file.history, data_dir, file_origin)?,
            alerts: crate::alerts::config::parse(file.alerts, crate::metrics::names::is_known)
                .map_err(|p| invalid(file_origin, p))?,
            server,
            metrics: file
                .metrics
                .validate()
                .map_err(|p| invalid(file_origin, p))?,
        })
    }
}

/// Tunnels from the file, then from `--tunnel` flags, each with where it came from.
fn all_tunnels(
    file: Vec<FileTunnel>,
    file_origin: &str,
    o: &Overrides,
) -> Result<Vec<(String, TunnelSpec)>, ConfigError> {
    let mut tunnels = Vec::new();
    for (i, t) in file.into_iter().enumerate() {
        let origin = format!("{file_origin}: tunnels[{i}] (`{}`)", shown(&t.name));
        let port = u16::try_from(t.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    &origin,
                    format!("port {} is out of range; use 1..=65535", t.port),
                )
            })?;
        let proto = parse_proto(&t.proto).map_err(|p| invalid(&origin, p))?;
        check_name(&t.name).map_err(|p| invalid(&origin, p))?;
        tunnels.push((
            origin,
            TunnelSpec {
                name: t.name,
                port,
                proto,
                source: TunnelSource::ConfigFile,
            },
        ));
    }
    for raw in &o.tunnels {
        let origin = format!("--tunnel {raw}");
        let spec = raw.parse::<CliTunnel>().map_err(|p| invalid(&origin, p))?;
        tunnels.push((
            origin,
            TunnelSpec {
                name: spec.name,
                port: spec.port,
                proto: spec.proto,
                source: TunnelSource::Cli,
            },
        ));
    }
    Ok(tunnels)
}

fn invalid(origin: &str, problem: impl Into<String>) -> ConfigError {
    // The last guard: whatever a message quotes, it stays a message.
    ConfigError::Invalid {
        origin: untrusted::message(origin, 500),
        problem: untrusted::message(&problem.into(), 2000),
    }
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: untrusted::located(text, e.span().map_or(0, |s| s.start), e.message(), true),
    })
}

/// Rejects a second tunnel with the same name or the same (port, proto), naming both places.
fn check_unique(tunnels: Vec<(String, TunnelSpec)>) -> Result<Vec<TunnelSpec>, ConfigError> {
    let mut by_name: BTreeMap<String, (String, TunnelSpec)> = BTreeMap::new();
    let mut by_port: BTreeMap<(u16, Proto), String> = BTreeMap::new();
    for (origin, t) in tunnels {
        if let Some((first, _)) = by_name.get(&t.name) {
            return Err(invalid(
                &origin,
                format!(
                    "duplicate tunnel name `{}` (first defined by {first}); give each tunnel its own name",
                    t.name
                ),
            ));
        }
        if let Some(first) = by_port.get(&(t.port, t.proto)) {
            return Err(invalid(
                &origin,
                format!(
                    "port {}/{} is already watched by {first}; one port can belong to one tunnel",
                    t.port,
                    t.proto.as_str()
                ),
            ));
        }
        by_port.insert((t.port, t.proto), origin.clone());
        by_name.insert(t.name.clone(), (origin, t));
    }
    Ok(by_name.into_values().map(|(_, t)| t).collect())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(format!(
            "tunnel name `{}` must be 1-128 printable characters",
            shown(name)
        ));
    }
    Ok(())
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!(
            "protocol `{}` is not supported; use tcp or udp",
            shown(other)
        )),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!(
            "`{}` is not a duration ({e}); use e.g. 60s, 10s, 1m",
            shown(s)
        )
    })?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err(format!("`{}` is out of range; use 1s..=1h", shown(s)));
    }
    Ok(d)
}

fn parse_log_level(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        l @ ("error" | "warn" | "info" | "debug" | "trace") => Ok(l.to_owned()),
        _ => Err(format!(
            "log level `{}` is unknown; use error, warn, info, debug or trace",
            shown(s)
        )),
    }
}

/// A `--tunnel NAME=PORT[/tcp|udp]` value.
#[derive(Debug, PartialEq, Eq)]
struct CliTunnel {
    name: String,
    port: u16,
    proto: Proto,
}

impl FromStr for CliTunnel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s.split_once('=').ok_or_else(|| {
            "expected NAME=PORT[/tcp|udp], e.g. ssh=6000 or dns=5353/udp".to_owned()
        })?;
        check_name(name)?;
        let (port, proto) = match rest.split_once('/') {
            Some((p, proto)) => (p, parse_proto(proto)?),
            None => (rest, Proto::Tcp),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port `{}` is out of range; use 1..=65535", shown(port)))?;
        Ok(Self {
            name: name.to_owned(),
            port,
            proto,
        })
    }
}

impl fmt::Display for TunnelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.name, self.port, self.proto.as_str())
    }
}

#[cfg(test)]
mod tests;
