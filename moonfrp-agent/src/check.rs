//! `moonfrp-agent check`: validates what `run` would read — the agent's configuration (already
//! loaded and validated by the caller), its web config file, and the frp config files `[frp]
//! configs` matches — and says what the agent would watch. No privileges needed.
use std::fmt::Write as _;

use crate::{
    config::Config,
    frp::{config::FrpConfig, discovery},
    untrusted,
};

/// The report to print, and whether everything is valid.
pub fn report(config: &Config) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let _ = writeln!(
        out,
        "configuration is valid: listen {}, interval {:?}, {} tunnel(s)",
        config.start.listen,
        config.interval,
        config.tunnels.len()
    );
    for t in &config.tunnels {
        let _ = writeln!(out, "  {t} (from {})", t.source.as_str());
    }
    if let Some(path) = &config.start.server.web_config_file {
        match crate::server::web_config::load(path) {
            Ok(web) => {
                let _ = writeln!(
                    out,
                    "web config {}: TLS {}, {} basic auth user(s)",
                    path.display(),
                    if web.tls.is_some() { "on" } else { "off" },
                    web.users.len()
                );
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "{e}");
            }
        }
    }
    if !config.frp.enabled {
        out.push_str("frp discovery is off ([frp] enabled = false)\n");
        return (out, ok);
    }
    let files = discovery::check_configs(&config.frp.options);
    if files.is_empty() {
        let _ = writeln!(
            out,
            "no frp config file matches [frp] configs ({})",
            config.frp.options.configs.join(", ")
        );
    }
    for (path, parsed) in files {
        let shown = untrusted::escape(&path.display().to_string()).into_owned();
        match parsed {
            Ok((FrpConfig::Server(s), _)) => {
                let _ = writeln!(
                    out,
                    "frp config {shown}: frps, bindPort {}{}",
                    s.bind_port,
                    s.web
                        .as_ref()
                        .map(|w| format!(", web API on port {}", w.port))
                        .unwrap_or_default()
                );
            }
            Ok((FrpConfig::Client(c), note)) => {
                let _ = writeln!(
                    out,
                    "frp config {shown}: frpc, {} proxies{}",
                    c.proxies.len(),
                    c.web
                        .as_ref()
                        .map(|w| format!(", admin API on port {}", w.port))
                        .unwrap_or_default()
                );
                if let Some(n) = note {
                    let _ = writeln!(out, "  note: {n}");
                }
            }
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "error: {e}");
            }
        }
    }
    if !ok {
        out.push_str("some frp config files do not parse: the agent would run without their tunnels until they are fixed\n");
    }
    (out, ok)
}
