//! A tunnel as the agent watches it: a name and a local (port, protocol), and where it was
//! defined; and the `--tunnel NAME=PORT[/PROTO]` flag's syntax.
use std::{fmt, str::FromStr};

use moonfrp_common::Proto;

use crate::untrusted::shown;

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

pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(format!(
            "tunnel name `{}` must be 1-128 printable characters",
            shown(name)
        ));
    }
    Ok(())
}

pub(crate) fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!(
            "protocol `{}` is not supported; use tcp or udp",
            shown(other)
        )),
    }
}

/// A `--tunnel NAME=PORT[/tcp|udp]` value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CliTunnel {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
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
