//! frps and frpc configuration files: TOML, YAML and JSON (frp ≥ 0.52, camelCase keys) and the
//! legacy INI format (snake_case keys in `[common]`, one section per proxy). Only what the agent
//! needs is read: ports to watch, the web/admin API address and credentials, the proxies.
use std::path::Path;

use serde_json::Value;

use super::{FrpError, Secret, ini};
use crate::untrusted;

/// frps's or frpc's web server (dashboard / admin API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebServer {
    pub addr: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

/// What an frps config tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub bind_port: u16,
    pub kcp_bind_port: Option<u16>,
    pub quic_bind_port: Option<u16>,
    pub vhost_http_port: Option<u16>,
    pub vhost_https_port: Option<u16>,
    pub web: Option<WebServer>,
}

/// One proxy of an frpc config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConf {
    /// Escaped and bounded ([`untrusted::name`]).
    pub name: String,
    /// The name had to be escaped or cut.
    pub renamed: bool,
    /// `tcp`, `udp`, `http`, `https`, `tcpmux`, `stcp`, `sudp`, `xtcp`, or whatever a newer frp adds.
    pub kind: String,
    pub local_ip: String,
    pub local_port: Option<u16>,
    /// 0 means "frps picks one"; the real port comes from the frps API.
    pub remote_port: Option<u16>,
}

/// What an frpc config tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Prefix frps puts before proxy names (`{user}.{name}`).
    pub user: Option<String>,
    pub server_addr: Option<String>,
    pub server_port: u16,
    pub web: Option<WebServer>,
    pub proxies: Vec<ProxyConf>,
}

/// A parsed frp configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrpConfig {
    Server(ServerConfig),
    Client(ClientConfig),
}

/// Parses a config file, choosing the format by its extension (`.toml`, `.yaml`/`.yml`,
/// `.json`, `.ini`).
pub fn parse(path: &Path, text: &str) -> Result<FrpConfig, FrpError> {
    let shown = path.display().to_string();
    let bad = |reason: String| FrpError::Config {
        path: shown.clone(),
        reason,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Parsers' own messages quote the offending line, which may set a password: errors say
    // where and what, never the line.
    let value: Value = match ext.as_str() {
        "toml" => {
            let t: toml::Value = toml::from_str(text).map_err(|e| {
                let at = e.span().map_or(0, |s| s.start);
                bad(untrusted::located(text, at, e.message(), false))
            })?;
            serde_json::to_value(t).map_err(|e| bad(e.to_string()))?
        }
        "yaml" | "yml" => serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e.location().map_or(0, |l| l.index());
            bad(untrusted::located(text, at, &e.to_string(), false))
        })?,
        "json" => serde_json::from_str(text).map_err(|e| {
            bad(untrusted::message(
                &untrusted::redact_secrets(&e.to_string(), text),
                300,
            ))
        })?,
        "ini" => {
            return ini::parse(text).and_then(|i| from_ini(&i)).map_err(&bad);
        }
        other => {
            return Err(bad(format!(
                "unknown extension `{other}`; frp reads .toml, .yaml, .yml, .json and .ini"
            )));
        }
    };
    from_value(&value).map_err(bad)
}

fn port(v: &Value, key: &str) -> Result<Option<u16>, String> {
    match lookup(v, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("`{key}` = {n} is not a port (0..=65535)")),
        Some(other) => Err(format!(
            "`{key}` must be a number, found {}",
            kind_of(other)
        )),
    }
}

fn string(v: &Value, key: &str) -> Result<Option<String>, String> {
    match lookup(v, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "`{key}` must be a string, found {}",
            kind_of(other)
        )),
    }
}

/// `a.b` looks into nested tables; TOML's dotted keys (`webServer.port`) arrive nested.
fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |v, k| v.get(k))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

fn web(v: &Value, default_addr: &str) -> Result<Option<WebServer>, String> {
    let Some(port) = port(v, "webServer.port")?.filter(|p| *p != 0) else {
        return Ok(None);
    };
    Ok(Some(WebServer {
        addr: string(v, "webServer.addr")?.unwrap_or_else(|| default_addr.to_owned()),
        port,
        user: string(v, "webServer.user")?.filter(|u| !u.is_empty()),
        password: string(v, "webServer.password")?
            .filter(|p| !p.is_empty())
            .map(Secret),
    }))
}

fn from_value(v: &Value) -> Result<FrpConfig, String> {
    if !v.is_object() {
        return Err(format!(
            "the top level must be a table, found {}",
            kind_of(v)
        ));
    }
    let is_client = ["serverAddr", "serverPort", "proxies", "visitors"]
        .iter()
        .any(|k| v.get(k).is_some());
    if !is_client {
        return Ok(FrpConfig::Server(ServerConfig {
            bind_port: port(v, "bindPort")?.unwrap_or(7000),
            kcp_bind_port: port(v, "kcpBindPort")?.filter(|p| *p != 0),
            quic_bind_port: port(v, "quicBindPort")?.filter(|p| *p != 0),
            vhost_http_port: port(v, "vhostHTTPPort")?.filter(|p| *p != 0),
            vhost_https_port: port(v, "vhostHTTPSPort")?.filter(|p| *p != 0),
            web: web(v, "127.0.0.1")?,
        }));
    }
    let mut proxies = Vec::new();
    if let Some(list) = v.get("proxies") {
        let list = list
            .as_array()
            .ok_or_else(|| format!("`proxies` must be a list, found {}", kind_of(list)))?;
        for (i, p) in list.iter().enumerate() {
            let (name, renamed) = string(p, "name")?
                .map(|n| untrusted::name(&n))
                .ok_or_else(|| format!("proxies[{i}] has no name"))?;
            let at = |e: String| format!("proxies[{i}] (`{name}`): {e}");
            proxies.push(ProxyConf {
                kind: string(p, "type")
                    .map_err(at)?
                    .map_or_else(|| "tcp".to_owned(), |k| untrusted::word(&k)),
                local_ip: string(p, "localIP")
                    .map_err(at)?
                    .map_or_else(|| "127.0.0.1".to_owned(), |a| untrusted::text(&a)),
                local_port: port(p, "localPort").map_err(at)?,
                remote_port: port(p, "remotePort").map_err(at)?,
                name,
                renamed,
            });
        }
    }
    Ok(FrpConfig::Client(ClientConfig {
        user: string(v, "user")?
            .filter(|u| !u.is_empty())
            .map(|u| untrusted::name(&u).0),
        server_addr: string(v, "serverAddr")?,
        server_port: port(v, "serverPort")?.unwrap_or(7000),
        web: web(v, "127.0.0.1")?,
        proxies,
    }))
}

fn from_ini(ini: &ini::Ini) -> Result<FrpConfig, String> {
    let common = ini
        .section("common")
        .ok_or("no [common] section (is this an frp INI file?)")?;
    let port = |section: &ini::Section, key: &str| -> Result<Option<u16>, String> {
        section
            .get(key)
            .map(|v| {
                v.parse::<u16>().map_err(|_| {
                    format!(
                        "`{key}` = `{}` is not a port (0..=65535)",
                        untrusted::shown(v)
                    )
                })
            })
            .transpose()
    };
    let web = |port_key: &str,
               addr_key: &str,
               user_key: &str,
               pwd_key: &str,
               default_addr: &str|
     -> Result<Option<WebServer>, String> {
        let Some(p) = port(common, port_key)?.filter(|p| *p != 0) else {
            return Ok(None);
        };
        Ok(Some(WebServer {
            addr: common.get(addr_key).unwrap_or(default_addr).to_owned(),
            port: p,
            user: common
                .get(user_key)
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
            password: common
                .get(pwd_key)
                .filter(|p| !p.is_empty())
                .map(|p| Secret(p.to_owned())),
        }))
    };
    let is_client = common.get("server_addr").is_some()
        || common.get("server_port").is_some()
        || ini.sections().len() > 1;
    if !is_client {
        return Ok(FrpConfig::Server(ServerConfig {
            bind_port: port(common, "bind_port")?.unwrap_or(7000),
            kcp_bind_port: port(common, "kcp_bind_port")?.filter(|p| *p != 0),
            quic_bind_port: port(common, "quic_bind_port")?.filter(|p| *p != 0),
            vhost_http_port: port(common, "vhost_http_port")?.filter(|p| *p != 0),
            vhost_https_port: port(common, "vhost_https_port")?.filter(|p| *p != 0),
            web: web(
                "dashboard_port",
                "dashboard_addr",
                "dashboard_user",
                "dashboard_pwd",
                "0.0.0.0",
            )?,
        }));
    }
    let mut proxies = Vec::new();
    for s in ini
        .sections()
        .iter()
        .filter(|s| s.name != "common" && !s.name.starts_with("range:"))
    {
        let (name, renamed) = untrusted::name(&s.name);
        let at = |e: String| format!("[{name}]: {e}");
        proxies.push(ProxyConf {
            kind: untrusted::word(s.get("type").unwrap_or("tcp")),
            local_ip: untrusted::text(s.get("local_ip").unwrap_or("127.0.0.1")),
            local_port: port(s, "local_port").map_err(at)?,
            remote_port: port(s, "remote_port").map_err(at)?,
            name,
            renamed,
        });
    }
    Ok(FrpConfig::Client(ClientConfig {
        user: common
            .get("user")
            .filter(|u| !u.is_empty())
            .map(|u| untrusted::name(u).0),
        server_addr: common.get("server_addr").map(str::to_owned),
        server_port: port(common, "server_port")?.unwrap_or(7000),
        web: web(
            "admin_port",
            "admin_addr",
            "admin_user",
            "admin_pwd",
            "127.0.0.1",
        )?,
        proxies,
    }))
}

#[cfg(test)]
mod tests;
