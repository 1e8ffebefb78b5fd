use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::*;
use crate::{
    collect::fixture,
    frp::{
        api,
        config::{self, FrpConfig},
    },
};

fn cfg(name: &str) -> FrpConfig {
    config::parse(Path::new(name), &fixture(&format!("frp/{name}"))).unwrap()
}

fn server() -> ServerConfig {
    match cfg("frps.toml") {
        FrpConfig::Server(s) => s,
        FrpConfig::Client(_) => unreachable!(),
    }
}

fn client() -> ClientConfig {
    match cfg("frpc-home.toml") {
        FrpConfig::Client(c) => c,
        FrpConfig::Server(_) => unreachable!(),
    }
}

fn frps_api() -> FrpsView {
    let mut proxies = api::parse_v1("tcp", &fixture("frp/frps-api-v1-proxy-tcp.json")).unwrap();
    proxies.extend(api::parse_v1("udp", &fixture("frp/frps-api-v1-proxy-udp.json")).unwrap());
    FrpsView {
        proxies,
        info: None,
        left_out: 0,
    }
}

fn by_name<'a>(found: &'a [Found], name: &str, role: Role) -> &'a Found {
    found
        .iter()
        .find(|f| f.name == name && f.role == role)
        .unwrap_or_else(|| panic!("no {name} ({role:?}) in {found:#?}"))
}

#[test]
fn frps_host_transport_vhost_and_api_proxies() {
    let found = derive(&[Source::Server(server(), Some(Ok(frps_api())))]);
    let t = by_name(&found, "frps-transport", Role::Transport);
    assert_eq!(t.port, Some((7000, Proto::Tcp)));
    assert_eq!(
        by_name(&found, "frps-transport-kcp", Role::Transport).port,
        Some((7000, Proto::Udp))
    );
    assert_eq!(
        by_name(&found, "frps-vhost-http", Role::Vhost).port,
        Some((8080, Proto::Tcp))
    );
    let ssh = by_name(&found, "home.ssh", Role::Server);
    assert_eq!(
        (ssh.port, ssh.status.as_deref(), ssh.frp_ok()),
        (Some((6000, Proto::Tcp)), Some("online"), Some(true))
    );
    assert_eq!(ssh.stats.unwrap().cur_conns, 2);
    let rdp = by_name(&found, "home.rdp", Role::Server);
    assert_eq!((rdp.port, rdp.frp_ok()), (None, Some(false)));
    assert_eq!(
        by_name(&found, "home.auto", Role::Server).port,
        Some((6042, Proto::Tcp))
    );
}

#[test]
fn frps_api_down_keeps_the_config_ports() {
    let found = derive(&[Source::Server(
        server(),
        Some(Err("GET /api/v2/proxies: HTTP 500".into())),
    )]);
    assert!(found.iter().all(|f| f.origin == Origin::FrpConfig));
    assert!(found.iter().any(|f| f.name == "frps-transport"));
}

#[test]
fn frpc_host_watches_local_services_with_frps_names() {
    let status = api::parse_client_status(&fixture("frp/frpc-api-status.json")).unwrap();
    let found = derive(&[Source::Client(client(), Some(Ok(status)))]);
    let ssh = by_name(&found, "home.ssh", Role::Client);
    assert_eq!(
        (ssh.port, ssh.frp_ok()),
        (Some((22, Proto::Tcp)), Some(true))
    );
    let dns = by_name(&found, "home.dns", Role::Client);
    assert_eq!(dns.port, Some((53, Proto::Udp)));
    // The service behind rdp is on another machine: FRP's status only, no local port.
    let rdp = by_name(&found, "home.rdp", Role::Client);
    assert_eq!((rdp.port, rdp.frp_ok()), (None, Some(false)));
    assert!(
        rdp.error
            .as_deref()
            .unwrap()
            .contains("health check failed")
    );
    // An http proxy's local service is TCP.
    assert_eq!(
        by_name(&found, "home.web", Role::Client).port,
        Some((80, Proto::Tcp))
    );
}

#[test]
fn both_sides_on_one_host_keep_both_roles_and_one_owner_per_port() {
    let status = api::parse_client_status(&fixture("frp/frpc-api-status.json")).unwrap();
    let found = derive(&[
        Source::Client(client(), Some(Ok(status))),
        Source::Server(server(), Some(Ok(frps_api()))),
    ]);
    assert_eq!(
        by_name(&found, "home.ssh", Role::Server).port,
        Some((6000, Proto::Tcp))
    );
    assert_eq!(
        by_name(&found, "home.ssh", Role::Client).port,
        Some((22, Proto::Tcp))
    );
    let mut ports: Vec<_> = found.iter().filter_map(|f| f.port).collect();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n, "a port claimed twice");
}

#[test]
fn config_edits_add_and_remove_tunnels_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frpc.toml");
    let cfg = |extra: bool| {
        let mut s = "serverAddr = \"127.0.0.1\"\nuser = \"home\"\n[[proxies]]\nname = \"ssh\"\nlocalPort = 22\n".to_owned();
        if extra {
            s.push_str("[[proxies]]\nname = \"extra\"\nlocalPort = 2222\n");
        }
        s
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut d = Discovery::new(Options {
        configs: vec![format!("{}/*.toml", dir.path().display())],
        ..Options::default()
    });
    let mut errors = BTreeMap::new();
    let names = |found: &[Found]| found.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    std::fs::write(&path, cfg(false)).unwrap();
    assert_eq!(names(&d.refresh(rt.handle(), &mut errors)), ["home.ssh"]);
    std::fs::write(&path, cfg(true)).unwrap();
    assert_eq!(
        names(&d.refresh(rt.handle(), &mut errors)),
        ["home.extra", "home.ssh"]
    );
    std::fs::write(&path, cfg(false)).unwrap();
    assert_eq!(names(&d.refresh(rt.handle(), &mut errors)), ["home.ssh"]);
    // A broken edit keeps the last good version, and says so.
    std::fs::write(&path, "proxies = 3").unwrap();
    assert_eq!(names(&d.refresh(rt.handle(), &mut errors)), ["home.ssh"]);
    assert_eq!(errors.get("frp_config"), Some(&1));
}

#[test]
fn serverinfo_ports_win_over_the_config_file() {
    let info = api::parse_serverinfo(&fixture("frp/frps-api-v1-serverinfo.json")).unwrap();
    let mut cfg = server();
    cfg.bind_port = 7777;
    cfg.vhost_https_port = Some(8443);
    let found = derive(&[Source::Server(
        cfg,
        Some(Ok(FrpsView {
            proxies: Vec::new(),
            info: Some(info),
            left_out: 0,
        })),
    )]);
    assert_eq!(
        by_name(&found, "frps-transport", Role::Transport).port,
        Some((7000, Proto::Tcp))
    );
    assert!(
        found.iter().all(|f| f.name != "frps-vhost-https"),
        "serverinfo says vhostHTTPSPort = 0"
    );
}

#[test]
fn directories_to_watch() {
    let p = |v: &[&str]| watch_dirs(&v.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(
        p(&["/etc/frp/*.toml", "/etc/frp/*.ini"]),
        [PathBuf::from("/etc/frp")]
    );
    assert_eq!(
        p(&["/srv/frp/frpc.toml", "/opt/*/frps.toml"]),
        [PathBuf::from("/opt"), PathBuf::from("/srv/frp")]
    );
}
