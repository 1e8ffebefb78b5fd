use std::path::Path;

use super::*;
use crate::collect::fixture;

fn parse_fixture(name: &str) -> Result<FrpConfig, FrpError> {
    parse(Path::new(name), &fixture(&format!("frp/{name}")))
}

fn client(c: FrpConfig) -> ClientConfig {
    match c {
        FrpConfig::Client(c) => c,
        FrpConfig::Server(s) => panic!("expected a client config, got {s:?}"),
    }
}

fn server(c: FrpConfig) -> ServerConfig {
    match c {
        FrpConfig::Server(s) => s,
        FrpConfig::Client(c) => panic!("expected a server config, got {c:?}"),
    }
}

#[test]
fn frps_toml() {
    let s = server(parse_fixture("frps.toml").unwrap());
    assert_eq!(
        (
            s.bind_port,
            s.kcp_bind_port,
            s.vhost_http_port,
            s.vhost_https_port
        ),
        (7000, Some(7000), Some(8080), None)
    );
    let web = s.web.unwrap();
    assert_eq!(
        (web.addr.as_str(), web.port, web.user.as_deref()),
        ("127.0.0.1", 7500, Some("admin"))
    );
    assert_eq!(web.password.unwrap().expose(), "s3cret");
}

#[test]
fn frpc_toml_proxies() {
    let c = client(parse_fixture("frpc-home.toml").unwrap());
    assert_eq!(c.user.as_deref(), Some("home"));
    assert_eq!(c.web.as_ref().map(|w| w.port), Some(7400));
    let p: Vec<(&str, &str, Option<u16>, Option<u16>)> = c
        .proxies
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.kind.as_str(),
                p.local_port,
                p.remote_port,
            )
        })
        .collect();
    assert_eq!(
        p,
        [
            ("ssh", "tcp", Some(22), Some(6000)),
            ("rdp", "tcp", Some(3389), Some(3389)),
            ("dns", "udp", Some(53), Some(6053)),
            ("web", "http", Some(80), None),
            ("auto", "tcp", Some(8000), Some(0)),
        ]
    );
    assert_eq!(c.proxies[1].local_ip, "192.168.1.20");
}

#[test]
fn yaml_and_json_read_like_toml() {
    let c = client(parse_fixture("frpc-home.yaml").unwrap());
    assert_eq!(
        (
            c.user.as_deref(),
            c.proxies.len(),
            c.proxies[1].kind.as_str()
        ),
        (Some("home"), 2, "udp")
    );
    let s = server(parse_fixture("frps.json").unwrap());
    assert_eq!(
        (s.bind_port, s.quic_bind_port, s.vhost_https_port),
        (7000, Some(7002), Some(8443))
    );
}

#[test]
fn legacy_ini_both_sides() {
    let s = server(parse_fixture("frps-legacy.ini").unwrap());
    let web = s.web.unwrap();
    assert_eq!(
        (s.bind_port, web.port, web.user.as_deref()),
        (7000, 7500, Some("admin"))
    );
    assert_eq!(web.password.unwrap().expose(), "s3cret");
    let c = client(parse_fixture("frpc-legacy.ini").unwrap());
    assert_eq!(
        c.web.map(|w| (w.addr, w.port)),
        Some(("127.0.0.1".to_owned(), 7400))
    );
    let names: Vec<(&str, &str, Option<u16>)> = c
        .proxies
        .iter()
        .map(|p| (p.name.as_str(), p.kind.as_str(), p.remote_port))
        .collect();
    assert_eq!(
        names,
        [("ssh", "tcp", Some(6000)), ("game", "udp", Some(6015))]
    );
}

#[test]
fn broken_files_name_the_file_and_the_problem() {
    let err = |name: &str, text: &str| parse(Path::new(name), text).unwrap_err().to_string();
    assert!(
        err("/etc/frp/frpc.toml", "serverPort = \"seven\"\n")
            .contains("`serverPort` must be a number")
    );
    assert!(
        err(
            "/etc/frp/frpc.toml",
            "[[proxies]]\nname = \"a\"\nremotePort = 70000\n"
        )
        .contains("proxies[0] (`a`): `remotePort` = 70000 is not a port")
    );
    assert!(err("/etc/frp/frps.toml", "bindPort = \n").contains("/etc/frp/frps.toml"));
    assert!(err("/etc/frp/frps.json", "{\"bindPort\": 70").contains("/etc/frp/frps.json"));
    assert!(
        err("/etc/frp/frps.ini", "[common]\nbind_port = x\n")
            .contains("`bind_port` = `x` is not a port")
    );
    assert!(err("/etc/frp/frps.ini", "bind_port = 1\n").contains("before any [section]"));
    assert!(err("/etc/frp/frps.conf", "").contains("unknown extension"));
    assert!(err("/etc/frp/frpc.yaml", "- just\n- a list\n").contains("top level must be a table"));
}

#[test]
fn passwords_never_print() {
    let s = server(parse_fixture("frps.toml").unwrap());
    assert!(!format!("{s:?}").contains("s3cret"));
}
