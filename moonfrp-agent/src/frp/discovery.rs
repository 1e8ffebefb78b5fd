//! Tunnels learnt from FRP itself: frps/frpc config files and the frps/frpc APIs they point to.
//! `derive` is the pure merge (tested with fixtures); `Discovery` does the I/O once per interval,
//! re-reads config files that changed (a broken edit keeps the last good version), and keeps a
//! tunnel that vanished from the frps API for a grace period before it is dropped.
use std::collections::HashMap;

use moonfrp_common::Proto;

use super::{
    api::{self, ClientProxy, ServerProxy},
    config::{ClientConfig, ServerConfig},
    port_proto,
};

/// What a tunnel is to FRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A proxy's public port on frps (`remotePort`).
    Server,
    /// A proxy's local service on the frpc host (`localPort`).
    Client,
    /// frps's `bindPort` (and KCP/QUIC): the multiplexed frpc↔frps link.
    Transport,
    /// frps's shared HTTP/HTTPS port: all http/https proxies together.
    Vhost,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Transport => "transport",
            Self::Vhost => "vhost",
        }
    }
}

/// Where FRP said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    FrpConfig,
    FrpsApi,
}

/// frps's own numbers for a proxy (its counters reset daily and count TCP only on close).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiStats {
    pub today_traffic_in: u64,
    pub today_traffic_out: u64,
    pub cur_conns: u64,
}

/// A tunnel FRP told us about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// frp proxy type (`tcp`, `http`, …), or `transport` / `vhost`.
    pub kind: String,
    pub role: Role,
    pub origin: Origin,
    /// The local port to count; `None` for proxies that share a vhost port or are P2P.
    pub port: Option<(u16, Proto)>,
    /// FRP's word on it (`online`, `offline`, `running`, `check failed`…), if an API answered.
    pub status: Option<String>,
    /// frpc's error text.
    pub error: Option<String>,
    pub stats: Option<ApiStats>,
}

impl Found {
    /// Whether FRP itself says the tunnel is working (`None`: FRP did not say).
    pub fn frp_ok(&self) -> Option<bool> {
        let s = self.status.as_deref()?;
        Some(matches!(s, "online" | "running"))
    }
}

/// Answers of one frps's API this interval.
#[derive(Clone, Debug, Default)]
pub struct FrpsView {
    pub proxies: Vec<ServerProxy>,
    /// The running frps's own ports (`/api/serverinfo`), which win over its config file.
    pub info: Option<api::ServerInfo>,
    /// Proxies beyond `frp.max_proxies` that were left out.
    pub left_out: u64,
}

/// The frpc config proxies' local port protocol: the service behind any TCP-based type is TCP.
fn local_proto(kind: &str) -> Proto {
    if matches!(kind, "udp" | "sudp") {
        Proto::Udp
    } else {
        Proto::Tcp
    }
}

fn is_local(ip: &str) -> bool {
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
        || ip == "localhost"
}

fn server_tunnels(
    cfg: &ServerConfig,
    api: Option<&Result<FrpsView, String>>,
    out: &mut Vec<Found>,
) {
    let mut s = cfg.clone();
    if let Some(Ok(FrpsView { info: Some(i), .. })) = api {
        let some = |p: u16| (p != 0).then_some(p);
        s.bind_port = some(i.bind_port).unwrap_or(s.bind_port);
        s.kcp_bind_port = some(i.kcp_bind_port);
        s.quic_bind_port = some(i.quic_bind_port);
        s.vhost_http_port = some(i.vhost_http_port);
        s.vhost_https_port = some(i.vhost_https_port);
    }
    let fixed = |name: &str, kind: &str, role, port: Option<u16>, proto| {
        port.map(|p| Found {
            name: name.to_owned(),
            kind: kind.to_owned(),
            role,
            origin: Origin::FrpConfig,
            port: Some((p, proto)),
            status: None,
            error: None,
            stats: None,
        })
    };
    out.extend(fixed(
        "frps-transport",
        "transport",
        Role::Transport,
        Some(s.bind_port),
        Proto::Tcp,
    ));
    out.extend(fixed(
        "frps-transport-kcp",
        "transport",
        Role::Transport,
        s.kcp_bind_port,
        Proto::Udp,
    ));
    out.extend(fixed(
        "frps-transport-quic",
        "transport",
        Role::Transport,
        s.quic_bind_port,
        Proto::Udp,
    ));
    out.extend(fixed(
        "frps-vhost-http",
        "vhost",
        Role::Vhost,
        s.vhost_http_port,
        Proto::Tcp,
    ));
    out.extend(fixed(
        "frps-vhost-https",
        "vhost",
        Role::Vhost,
        s.vhost_https_port,
        Proto::Tcp,
    ));
    if let Some(Ok(view)) = api {
        for p in &view.proxies {
            let port =
                port_proto(&p.kind).and_then(|proto| p.remote_port.map(|port| (port, proto)));
            out.push(Found {
                name: p.name.clone(),
                kind: p.kind.clone(),
                role: Role::Server,
                origin: Origin::FrpsApi,
                port,
                status: Some(p.status.clone()),
                error: None,
                stats: Some(ApiStats {
                    today_traffic_in: p.today_traffic_in,
                    today_traffic_out: p.today_traffic_out,
                    cur_conns: p.cur_conns,
                }),
            });
        }
    }
}

fn client_tunnels(
    c: &ClientConfig,
    api: Option<&Result<Vec<ClientProxy>, String>>,
    out: &mut Vec<Found>,
) {
    let status: HashMap<&str, &ClientProxy> = match api {
        Some(Ok(list)) => list.iter().map(|p| (p.name.as_str(), p)).collect(),
        _ => HashMap::new(),
    };
    for p in &c.proxies {
        let name = match &c.user {
            Some(u) => crate::untrusted::name(&format!("{u}.{}", p.name)).0,
            None => p.name.clone(),
        };
        let port = p
            .local_port
            .filter(|lp| *lp != 0 && is_local(&p.local_ip))
            .map(|lp| (lp, local_proto(&p.kind)));
        let api = status.get(p.name.as_str());
        out.push(Found {
            name,
            kind: p.kind.clone(),
            role: Role::Client,
            origin: Origin::FrpConfig,
            port,
            status: api.map(|a| a.status.clone()),
            error: api.map(|a| a.err.clone()).filter(|e| !e.is_empty()),
            stats: None,
        });
    }
}

/// One config file's parse result and its API's answer this interval.
#[derive(Debug)]
pub enum Source {
    Server(ServerConfig, Option<Result<FrpsView, String>>),
    Client(ClientConfig, Option<Result<Vec<ClientProxy>, String>>),
}

/// Everything FRP says, deduplicated by port: the first source to claim a (port, protocol)
/// keeps it (frps's API before config-derived entries), and a name repeats only across roles.
pub fn derive(sources: &[Source]) -> Vec<Found> {
    let mut all = Vec::new();
    for s in sources {
        match s {
            Source::Server(cfg, api) => server_tunnels(cfg, api.as_ref(), &mut all),
            Source::Client(cfg, api) => client_tunnels(cfg, api.as_ref(), &mut all),
        }
    }
    all.sort_by_key(|f| (f.origin != Origin::FrpsApi, f.role));
    let mut ports = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    all.retain(|f| {
        f.port.is_none_or(|p| ports.insert(p)) && names.insert((f.name.clone(), f.role))
    });
    all.sort_by(|a, b| (&a.name, a.role).cmp(&(&b.name, b.role)));
    all
}

pub mod config;
mod state;

pub use config::{FrpDiscoveryConfig, FrpFile};
pub use state::{Discovery, Options, check_configs, watch_dirs};

#[cfg(test)]
mod tests;
