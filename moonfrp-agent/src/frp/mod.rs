//! FRP's own view of its tunnels: configuration files and the frps/frpc HTTP APIs. Pure parsers
//! here; the I/O that feeds them lives in discovery.
pub mod api;
pub mod client;
pub mod config;
pub mod discovery;
pub mod health;
mod ini;

use std::fmt;

/// A password from an frp config. Never printed: Debug and Display show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why an FRP source could not be used. Messages never contain credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrpError {
    #[error("frp config {path}: {reason}")]
    Config { path: String, reason: String },
}

/// The protocol whose port a proxy type occupies on frps (`None`: shared vhost or P2P types).
pub fn port_proto(kind: &str) -> Option<moonfrp_common::Proto> {
    match kind {
        "tcp" => Some(moonfrp_common::Proto::Tcp),
        "udp" => Some(moonfrp_common::Proto::Udp),
        _ => None,
    }
}
