//! Agent configuration: a TOML file (`--config`) merged with command-line flags.
//!
//! Every error names the file or flag it comes from and what to do about it; nothing here needs
//! privileges, so bad input is rejected before the agent touches the kernel.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use moonfrp_common::Proto;
use serde::Deserialize;

use crate::{
    alerts::{AlertsConfig, config::AlertsFile},
    collect::CollectOptions,
    ebpf::KernelConfig,
    frp::discovery::{FrpDiscoveryConfig, FrpFile},
    history::{HistoryConfig, config::HistoryFile},
    tunnel::{CliTunnel, TunnelSource, TunnelSpec, check_name, parse_proto},
    untrusted::{self, shown},
};

/// Default address of the HTTP server: loopback only, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// Default collection interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_mins(1);
/// Shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_hours(1);
/// Largest agent config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The validated configuration the agent runs with: what a reload applies live, and the
/// settings read only at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interval: Duration,
    /// Sorted by name; names and (port, proto) pairs are unique.
    pub tunnels: Vec<TunnelSpec>,
    pub collectors: CollectOptions,
    pub frp: FrpDiscoveryConfig,
    /// Optional families and histogram buckets of `/metrics` (and history).
    pub metrics: crate::metrics::Settings,
    pub start: StartSettings,
}

/// The settings a running agent keeps until it restarts: a reload that changes one of them keeps
/// the running value and says so (`moonfrp_agent_config_restart_required`).
#[derive(Clone, Debug, PartialEq)]
pub struct StartSettings {
    pub listen: SocketAddr,
    pub log_level: String,
    pub kernel: KernelConfig,
    /// Write the exposition here every interval (for node_exporter's textfile collector).
    pub textfile: Option<PathBuf>,
    /// The history database (in the data directory) and how long it keeps what.
    pub history: HistoryConfig,
    /// Alert rules and notification channels.
    pub alerts: AlertsConfig,
    /// Bounds of the HTTP server.
    pub server: crate::server::ServerConfig,
    /// Where every snapshot is pushed (Prometheus remote_write).
    pub remote_write: Vec<crate::remote_write::config::Endpoint>,
}

impl StartSettings {
    /// The config keys whose values differ from `other`'s, for the log.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        [
            ("listen", self.listen != other.listen),
            ("log_level", self.log_level != other.log_level),
            ("kernel", self.kernel != other.kernel),
            ("textfile", self.textfile != other.textfile),
            ("data_dir", self.history.data_dir != other.history.data_dir),
            (
                "history",
                self.history.enabled != other.history.enabled
                    || self.history.settings != other.history.settings,
            ),
            ("alerts", self.alerts != other.alerts),
            ("server", self.server != other.server),
            ("remote_write", self.remote_write != other.remote_write),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect()
    }
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
    collectors: CollectOptions,
    #[serde(default)]
    frp: FrpFile,
    textfile: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    history: HistoryFile,
    #[serde(default)]
    alerts: AlertsFile,
    #[serde(default)]
    server: crate::server::ServerConfig,
    #[serde(default)]
    metrics: crate::metrics::SettingsFile,
    #[serde(default)]
    remote_write: Vec<crate::remote_write::config::EndpointFile>,
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
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
    /// `--pin-dir` ("" for none).
    pub pin_dir: Option<String>,
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

    /// Validates `text` as if it were the config file at `path`, with no command-line
    /// overrides (the fuzz target's entry).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let origin = format!("config file {}", path.display());
        Self::merge(parse_file(path, text)?, &origin, &Overrides::default())
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
        let mut kernel = file.kernel;
        let kernel_origin = match &o.pin_dir {
            Some(dir) => {
                kernel.pin_dir.clone_from(dir);
                "--pin-dir / config file"
            }
            None => file_origin,
        };
        let kernel = kernel.validate().map_err(|p| invalid(kernel_origin, p))?;
        let mut server = file
            .server
            .validate()
            .map_err(|p| invalid(file_origin, p))?;
        if let Some(w) = &o.web_config_file {
            server.web_config_file = Some(w.clone());
        }

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
        let textfile = textfile(o.textfile.clone().or(file.textfile))?;
        let data_dir = data_dir(o.data_dir.clone().or(file.data_dir))?;
        Ok(Self {
            interval,
            tunnels,
            collectors: file
                .collectors
                .validate()
                .map_err(|p| invalid(file_origin, p))?
                .for_interval(interval),
            frp: file
                .frp
                .validate(interval)
                .map_err(|p| invalid(file_origin, p))?,
            metrics: file
                .metrics
                .validate()
                .map_err(|p| invalid(file_origin, p))?,
            start: StartSettings {
                listen,
                log_level,
                kernel,
                textfile,
                history: file
                    .history
                    .validate(data_dir)
                    .map_err(|p| invalid(file_origin, p))?,
                alerts: crate::alerts::config::parse(file.alerts, crate::metrics::names::is_known)
                    .map_err(|p| invalid(file_origin, p))?,
                server,
                remote_write: crate::remote_write::config::validate(file.remote_write)
                    .map_err(|p| invalid(file_origin, p))?,
            },
        })
    }
}

/// The textfile target: a regular file or a path not taken yet.
fn textfile(textfile: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
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
    Ok(textfile)
}

/// The data directory (default /var/lib/moonfrp): a directory, or a path not taken yet.
fn data_dir(data_dir: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(crate::history::DEFAULT_DATA_DIR));
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
    Ok(data_dir)
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

#[cfg(test)]
mod tests;
