//! Discovery end to end: frps and frpc stand-ins serve their APIs (basic auth) in frp's shapes,
//! real listeners stand on the tunnel ports, and the agent finds, counts and judges the tunnels
//! with no `--tunnel` flag.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    path::Path,
};

use moonfrp_tests::{Agent, Metrics, fake_http::FakeHttp, free_port, send_tcp};

const FRPS_PASSWORD: &str = "s3cret-frps";
const FRPC_PASSWORD: &str = "hunter2-frpc";

fn v1_tcp(port: u16, online: bool) -> String {
    let conf = if online {
        format!(
            r#"{{"name":"home.ssh","type":"tcp","localIP":"127.0.0.1","localPort":22,"remotePort":{port}}}"#
        )
    } else {
        "null".to_owned()
    };
    let status = if online { "online" } else { "offline" };
    format!(
        r#"{{"proxies":[{{"name":"home.ssh","conf":{conf},"user":"home","todayTrafficIn":1000,"todayTrafficOut":2000,"curConns":1,"lastStartTime":"","lastCloseTime":"","status":"{status}"}}]}}"#
    )
}

fn v1_udp(port: u16) -> String {
    format!(
        r#"{{"proxies":[{{"name":"home.dns","conf":{{"name":"home.dns","type":"udp","localPort":53,"remotePort":{port}}},"todayTrafficIn":0,"todayTrafficOut":0,"curConns":0,"status":"online"}}]}}"#
    )
}

const V1_HTTP: &str = r#"{"proxies":[{"name":"home.web","conf":{"name":"home.web","type":"http","localPort":80},"todayTrafficIn":5,"todayTrafficOut":6,"curConns":0,"status":"online"}]}"#;

fn frpc_toml(frpc_api: u16, bind: u16, proxies: &[(&str, u16)]) -> String {
    let mut s = format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nuser = \"home\"\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {frpc_api}\nwebServer.user = \"admin\"\nwebServer.password = \"{FRPC_PASSWORD}\"\n"
    );
    for (name, local) in proxies {
        let _ = write!(
            s,
            "\n[[proxies]]\nname = \"{name}\"\ntype = \"tcp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {local}\nremotePort = 0\n"
        );
    }
    s
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors do, so the agent never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn up(m: &Metrics, tunnel: &str, port: u16) -> Option<f64> {
    m.get(
        "moonfrp_tunnel_up",
        &[("tunnel", tunnel), ("port", &port.to_string())],
    )
}

#[test]
fn tunnels_are_discovered_counted_and_judged() {
    // What frps and frpc would have open on this host, bound before anything else runs (a port
    // found free and bound later can be taken in between).
    let transport = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let dns = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let service = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port_of = |a: std::io::Result<std::net::SocketAddr>| a.unwrap().port();
    let (bind, r_dns, l_ssh) = (
        port_of(transport.local_addr()),
        port_of(dns.local_addr()),
        port_of(service.local_addr()),
    );
    let (r_ssh, l_extra) = (free_port(), free_port());
    let frps = FakeHttp::start("admin", FRPS_PASSWORD);
    let frpc_api = FakeHttp::start("admin", FRPC_PASSWORD);
    frps.set("/api/proxy/tcp", 200, v1_tcp(r_ssh, true));
    frps.set("/api/proxy/udp", 200, v1_udp(r_dns));
    frps.set("/api/proxy/http", 200, V1_HTTP);
    for kind in ["https", "tcpmux", "stcp", "sudp", "xtcp"] {
        frps.set(&format!("/api/proxy/{kind}"), 200, r#"{"proxies":[]}"#);
    }
    frpc_api.set("/api/status", 200, r#"{"tcp":[{"name":"ssh","type":"tcp","status":"running","err":"","local_addr":"127.0.0.1:22","plugin":"","remote_addr":""}]}"#);

    let dir = tempfile::tempdir().unwrap();
    let frp_dir = dir.path().join("frp");
    std::fs::create_dir(&frp_dir).unwrap();
    let frps_toml = format!(
        "bindPort = {bind}\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {}\nwebServer.user = \"admin\"\nwebServer.password = \"{FRPS_PASSWORD}\"\n",
        frps.addr.port()
    );
    write(&frp_dir.join("frps.toml"), &frps_toml);
    let frpc_path = frp_dir.join("frpc.toml");
    write(
        &frpc_path,
        &frpc_toml(frpc_api.addr.port(), bind, &[("ssh", l_ssh)]),
    );
    let agent_toml = dir.path().join("moonfrp.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "[frp]\nconfigs = [\"{}/*.toml\"]\ngrace = \"1m\"\n",
            frp_dir.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", agent_toml.to_str().unwrap()]);

    let m = agent.wait_for("the frps proxies", |m| up(m, "home.ssh", r_ssh).is_some());
    let info = |tunnel: &str, role: &str| {
        m.samples
            .iter()
            .find(|s| {
                s.name == "moonfrp_tunnel_info"
                    && s.labels.contains(&("tunnel".into(), tunnel.into()))
                    && s.labels.contains(&("role".into(), role.into()))
            })
            .map_or_else(
                || panic!("no info for {tunnel} ({role}):\n{}", m.text),
                |s| {
                    s.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                },
            )
    };
    assert!(
        info("home.ssh", "server")
            .contains(&format!("port={r_ssh},proto=tcp,source=frps-api,type=tcp"))
    );
    assert!(info("home.dns", "server").contains(&format!("port={r_dns},proto=udp")));
    assert!(
        info("frps-transport", "transport")
            .contains(&format!("port={bind},proto=tcp,source=frp-config"))
    );
    assert!(
        info("home.ssh", "client").contains(&format!("port={l_ssh},proto=tcp,source=frp-config"))
    );
    // The http proxy shares frps's vhost port: listed from the API, no port of its own.
    assert!(info("home.web", "server").contains("port=,proto=,source=frps-api,type=http"));
    assert_eq!(
        m.get(
            "moonfrp_frp_proxy_today_traffic_out_bytes",
            &[("tunnel", "home.web")]
        ),
        Some(6.0)
    );

    // Traffic on the frps remote port counts under frps's name.
    send_tcp(r_ssh, 10_000);
    let m = agent.wait_for("the tunnel's bytes", |m| {
        m.get(
            "moonfrp_tunnel_receive_payload_bytes_total",
            &[("tunnel", "home.ssh"), ("port", &r_ssh.to_string())],
        ) == Some(10_000.0)
    });
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_opened_total",
            &[
                ("tunnel", "home.ssh"),
                ("port", &r_ssh.to_string()),
                ("direction", "inbound")
            ]
        ),
        Some(1.0)
    );
    // frps listens on its remote ports: the tunnel is up while something does.
    let ssh_listener = moonfrp_tests::bind_tcp(r_ssh);
    agent.wait_for("home.ssh up", |m| up(m, "home.ssh", r_ssh) == Some(1.0));

    // frps says offline → down, with its word as the reason.
    frps.set("/api/proxy/tcp", 200, v1_tcp(r_ssh, false));
    let m = agent.wait_for("home.ssh offline", |m| {
        up(m, "home.ssh", r_ssh) == Some(0.0)
    });
    assert!(m.text.contains("reason=\"frp: offline\""), "{}", m.text);
    assert_eq!(
        m.get(
            "moonfrp_tunnel_failures_total",
            &[("tunnel", "home.ssh"), ("port", &r_ssh.to_string())]
        ),
        Some(1.0)
    );
    frps.set("/api/proxy/tcp", 200, v1_tcp(r_ssh, true));
    agent.wait_for("home.ssh back up", |m| {
        up(m, "home.ssh", r_ssh) == Some(1.0)
    });

    // Nobody listens any more: down, and the refused connection shows.
    drop(ssh_listener);
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, r_ssh)).is_err());
    let m = agent.wait_for("home.ssh without listener", |m| {
        up(m, "home.ssh", r_ssh) == Some(0.0)
    });
    assert_eq!(
        m.get(
            "moonfrp_tunnel_connections_refused_total",
            &[("tunnel", "home.ssh"), ("port", &r_ssh.to_string())]
        ),
        Some(1.0)
    );
    let ssh_listener = moonfrp_tests::bind_tcp(r_ssh);

    // The API fails: its error is counted, the tunnel stays (grace) and the kernel signals decide.
    for kind in ["tcp", "udp", "http"] {
        frps.set(&format!("/api/proxy/{kind}"), 500, "internal error");
    }
    let m = agent.wait_for("the API error", |m| {
        m.get(
            "moonfrp_agent_collection_errors_total",
            &[("source", "frps_api")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    let m = if up(&m, "home.ssh", r_ssh) == Some(1.0) {
        m
    } else {
        agent.wait_for("health from the kernel", |m| {
            up(m, "home.ssh", r_ssh) == Some(1.0)
        })
    };
    assert!(
        m.get(
            "moonfrp_tunnel_info",
            &[("tunnel", "home.ssh"), ("role", "server")]
        )
        .is_some()
    );
    assert!(agent.log().contains("HTTP 500"), "{}", agent.log());
    drop(ssh_listener);

    // Editing the frpc config adds and removes a tunnel within an interval or two, no restart.
    let _extra = moonfrp_tests::bind_tcp(l_extra);
    write(
        &frpc_path,
        &frpc_toml(
            frpc_api.addr.port(),
            bind,
            &[("ssh", l_ssh), ("extra", l_extra)],
        ),
    );
    agent.wait_for("home.extra added", |m| {
        up(m, "home.extra", l_extra).is_some()
    });
    write(
        &frpc_path,
        &frpc_toml(frpc_api.addr.port(), bind, &[("ssh", l_ssh)]),
    );
    agent.wait_for("home.extra removed", |m| {
        m.with_label("tunnel", "home.extra").is_empty()
    });

    // Credentials never show.
    let m = agent.metrics();
    for secret in [FRPS_PASSWORD, FRPC_PASSWORD] {
        assert!(!m.text.contains(secret), "{secret} in /metrics");
        assert!(!agent.log().contains(secret), "{secret} in the log");
    }
    assert_eq!(
        frps.unauthorized.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the agent did not log in"
    );
}

#[test]
fn wrong_credentials_are_reported_without_the_password() {
    let frps = FakeHttp::start("admin", "right-password");
    let dir = tempfile::tempdir().unwrap();
    let frp_dir = dir.path().join("frp");
    std::fs::create_dir(&frp_dir).unwrap();
    let wrong = "wrong-password-123";
    write(
        &frp_dir.join("frps.toml"),
        &format!(
            "bindPort = {}\nwebServer.port = {}\nwebServer.user = \"admin\"\nwebServer.password = \"{wrong}\"\n",
            free_port(),
            frps.addr.port()
        ),
    );
    let agent_toml = dir.path().join("moonfrp.toml");
    std::fs::write(
        &agent_toml,
        format!("[frp]\nconfigs = [\"{}/*.toml\"]\n", frp_dir.display()),
    )
    .unwrap();
    let agent = Agent::start(&["--config", agent_toml.to_str().unwrap()]);
    let m = agent.wait_for("the auth error", |m| {
        m.get(
            "moonfrp_agent_collection_errors_total",
            &[("source", "frps_api")],
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    // The config's own ports are still watched.
    assert!(
        m.get("moonfrp_tunnel_info", &[("tunnel", "frps-transport")])
            .is_some()
    );
    let log = agent.log();
    assert!(log.contains("401 unauthorized"), "{log}");
    assert!(!log.contains(wrong) && !m.text.contains(wrong));
}

#[test]
fn an_edit_is_taken_at_once_not_at_the_next_interval() {
    let dir = tempfile::tempdir().unwrap();
    let frp_dir = dir.path().join("frp");
    std::fs::create_dir(&frp_dir).unwrap();
    let frpc_path = frp_dir.join("frpc.toml");
    let (bind, l_ssh, l_new) = (free_port(), free_port(), free_port());
    write(&frpc_path, &frpc_toml(free_port(), bind, &[("ssh", l_ssh)]));
    let agent_toml = dir.path().join("moonfrp.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "interval = \"60s\"\n[frp]\nconfigs = [\"{}/*.toml\"]\n",
            frp_dir.display()
        ),
    )
    .unwrap();
    // 60 s between collections: only the inotify watch can pick the edit up within the poll.
    let agent = moonfrp_tests::AgentCmd::new(&["--config", agent_toml.to_str().unwrap()])
        .interval("60s")
        .start();
    write(
        &frpc_path,
        &frpc_toml(free_port(), bind, &[("ssh", l_ssh), ("new", l_new)]),
    );
    moonfrp_tests::poll(
        "the new tunnel to be watched",
        std::time::Duration::from_secs(10),
        || {
            agent
                .log()
                .contains(&format!("watching tunnel=home.new={l_new}/tcp"))
                .then_some(())
        },
    );
}
