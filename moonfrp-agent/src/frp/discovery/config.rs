//! `[frp]`: whether and where FRP's own configs are read, and how its APIs are asked.
use std::time::Duration;

use serde::Deserialize;

use super::Options;
use crate::untrusted::{duration_in, in_range};

/// How FRP's own configs and APIs are found and asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrpDiscoveryConfig {
    /// Off: only the tunnels given explicitly are watched.
    pub enabled: bool,
    pub options: Options,
}

/// `[frp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrpFile {
    enabled: Option<bool>,
    configs: Option<Vec<String>>,
    grace: Option<String>,
    api_timeout: Option<String>,
    max_proxies: Option<u64>,
}

impl FrpFile {
    /// Validates the section for a collection `interval`; errors name the key.
    pub fn validate(self, interval: Duration) -> Result<FrpDiscoveryConfig, String> {
        let mut options = Options::default();
        if let Some(c) = self.configs {
            options.configs = c;
        }
        let key = |k: &str, p: String| format!("key `frp.{k}`: {p}");
        if let Some(g) = self.grace {
            options.grace = duration_in(&g, Duration::ZERO, Duration::from_hours(24))
                .map_err(|p| key("grace", p))?;
        }
        if let Some(t) = self.api_timeout {
            options.api_timeout =
                duration_in(&t, Duration::from_millis(100), Duration::from_mins(1))
                    .map_err(|p| key("api_timeout", p))?;
        }
        if let Some(m) = self.max_proxies {
            options.max_proxies = in_range("frp.max_proxies", m, 1, 65_535)? as usize;
        }
        // A collection waits for the APIs at most a twentieth of its interval; a slower answer
        // is used by the next collection (README: FRP discovery).
        options.wait = options.api_timeout.min(interval / 20);
        Ok(FrpDiscoveryConfig {
            enabled: self.enabled.unwrap_or(true),
            options,
        })
    }
}
