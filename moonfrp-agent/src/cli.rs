//! Command line. Doc comments are the `--help` text.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Overrides};

/// eBPF-assisted metrics agent for hosts that run FRP tunnels.
#[derive(Debug, Parser)]
#[command(name = "moonfrp-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs and serve metrics (needs root or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN).
    Run(ConfigArgs),
    /// Validate the configuration and print the tunnels it defines, then exit (no privileges needed).
    Check(ConfigArgs),
    /// Show a metric's history: through the running agent's API, or from the database file.
    History(crate::client::history::HistoryArgs),
    /// The running agent's latest snapshot as text, grouped: tunnels, FRP processes, services,
    /// system, alerts (or --json).
    Status(crate::client::status::StatusArgs),
    /// A live full-screen view of the running agent (q quits).
    Top(crate::client::top::TopArgs),
    /// A tunnel's (or any port's) top peers and connection durations.
    Inspect(crate::client::inspect::InspectArgs),
    /// Send a clearly marked test notification through the alert channels of the configuration
    /// (all, or --channel NAME) and report what each answered. No running agent needed.
    AlertTest(AlertTestArgs),
    /// The running agent's recent log records; -f follows new ones as they come.
    Logs(crate::client::logs::LogsArgs),
    /// Remove what the agent pinned in bpffs (`kernel.pin_dir`): its programs detach and the
    /// counters they kept are gone. For after the agent stopped (package removal runs it).
    Cleanup(ConfigArgs),
}

#[derive(Clone, Debug, Args)]
pub struct AlertTestArgs {
    /// TOML configuration file with the [[alerts.channels]].
    #[arg(short, long, value_name = "PATH", env = "MOONFRP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only this channel (by its `name`).
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// The answers as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the configuration comes from; flags override the file.
#[derive(Clone, Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see README, section Configuration). Re-read on SIGHUP and when it changes.
    #[arg(short, long, value_name = "PATH", env = "MOONFRP_CONFIG")]
    pub config: Option<PathBuf>,
    /// A tunnel to watch: NAME=PORT[/tcp|udp] (tcp if omitted). Repeat for more tunnels.
    #[arg(short, long = "tunnel", value_name = "NAME=PORT[/PROTO]")]
    pub tunnels: Vec<String>,
    /// HTTP listen address [default: 127.0.0.1:9477].
    #[arg(short, long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Collection interval, at least 1s [default: 60s].
    #[arg(short, long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Log level: error, warn, info, debug or trace [default: info]; RUST_LOG overrides it.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Also write the metrics to this file every interval (text format, atomically replaced),
    /// e.g. into node_exporter's textfile directory.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Directory of the history database (created 0700) [default: /var/lib/moonfrp].
    #[arg(long, value_name = "DIR", env = "MOONFRP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TLS and basic auth for the HTTP server: a YAML file in the format of the Prometheus
    /// exporter-toolkit (node_exporter's `--web.config.file`); re-read when it changes.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,
    /// Pin the kernel maps and links in this bpffs directory, so that the programs count while
    /// the agent is stopped and the next agent continues the counters; "" pins nothing
    /// [default: /sys/fs/bpf/moonfrp].
    #[arg(long, value_name = "DIR", env = "MOONFRP_PIN_DIR")]
    pub pin_dir: Option<String>,
}

impl ConfigArgs {
    /// The flags as overrides of the file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            interval: self.interval.clone(),
            log_level: self.log_level.clone(),
            tunnels: self.tunnels.clone(),
            textfile: self.textfile.clone(),
            data_dir: self.data_dir.clone(),
            web_config_file: self.web_config_file.clone(),
            pin_dir: self.pin_dir.clone(),
        }
    }

    /// Loads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &self.overrides())
    }
}
