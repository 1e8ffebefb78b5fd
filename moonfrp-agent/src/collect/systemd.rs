//! systemd units matching configured patterns, through `systemctl show` (one call per interval).
//! On a host without systemd the collector says so once and exports nothing.
use std::{path::Path, process::Command};

use tracing::info;

use super::CollectError;

/// Unit states exported by `moonfrp_service_state` (one series per state, 1 for the current one).
pub const STATES: [&str; 6] = [
    "active",
    "reloading",
    "inactive",
    "failed",
    "activating",
    "deactivating",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub active_state: String,
    pub sub_state: String,
    pub restarts: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Services {
    pub units: Vec<Unit>,
}

impl Services {
    pub fn count(&self, state: &str) -> usize {
        self.units
            .iter()
            .filter(|u| u.active_state == state)
            .count()
    }
}

/// Parses `systemctl show` output (blocks of `Key=Value` separated by blank lines). Units that
/// do not exist (`LoadState=not-found`) are left out.
pub fn parse(text: &str) -> Services {
    let mut units = Vec::new();
    for block in text.split("\n\n") {
        let get = |key: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .unwrap_or_default()
        };
        let name = get("Id");
        if name.is_empty() || get("LoadState") == "not-found" {
            continue;
        }
        units.push(Unit {
            name: name.to_owned(),
            active_state: get("ActiveState").to_owned(),
            sub_state: get("SubState").to_owned(),
            restarts: get("NRestarts").parse().unwrap_or(0),
        });
    }
    units.sort_by(|a, b| a.name.cmp(&b.name));
    Services { units }
}

/// The collector.
#[derive(Debug)]
pub struct Systemd {
    patterns: Vec<String>,
    available: Option<bool>,
}

impl Systemd {
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            available: None,
        }
    }

    pub fn set_patterns(&mut self, patterns: Vec<String>) {
        self.patterns = patterns;
    }

    /// Whether systemd runs here (checked once, said once).
    pub fn available(&mut self) -> bool {
        *self.available.get_or_insert_with(|| {
            let yes = Path::new("/run/systemd/system").is_dir();
            if !yes {
                info!("systemd is not running on this host: no service metrics");
            }
            yes
        })
    }

    /// `systemctl show` of the matching units; killed if it takes longer than `limit` (a hung
    /// D-Bus must not hold up the collection).
    pub fn read(&mut self, limit: std::time::Duration) -> Result<Services, CollectError> {
        if self.patterns.is_empty() {
            return Ok(Services::default());
        }
        let mut cmd = Command::new("systemctl");
        cmd.args([
            "show",
            "--no-pager",
            "--property=Id,LoadState,ActiveState,SubState,NRestarts",
        ])
        .args(&self.patterns);
        let out = super::deadline::output_within(cmd, "systemctl show", limit)?;
        if !out.status.success() {
            return Err(CollectError::parse(
                "systemctl show",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn parses_units_and_counts() {
        let s = parse(&fixture("systemd/show.txt"));
        let names: Vec<&str> = s.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "frpc@office.service",
                "moonfrp-client-home.service",
                "moonfrp-server.service"
            ]
        );
        assert_eq!(
            (s.units.len(), s.count("active"), s.count("failed")),
            (3, 1, 1)
        );
        assert_eq!(s.units[0].restarts, 12);
        assert_eq!(s.units[0].active_state, "activating");
        assert!(parse("").units.is_empty());
    }
}
