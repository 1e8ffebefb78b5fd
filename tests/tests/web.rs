//! TLS, basic auth and the write rule of the HTTP server, driven by a web config file in the
//! exporter-toolkit's format: certificates made here with openssl, requests made by curl, a
//! real Prometheus and the agent's own clients; a write from another host through a test
//! network namespace.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use moonfrp_tests::{
    Agent, AgentCmd, Daemon, agent_bin, agent_command, free_port, http_get, pki::Pki, poll, run,
};

/// curl's answer: (HTTP status, or 0 when no HTTP answer came; body; curl's error).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    // Replace, as editors and config management do: a new inode each time.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const PASSWORD: &str = "correct horse battery staple";

fn web_config(pki: &Pki, hash: &str, extra_tls: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{extra_tls}basic_auth_users:\n  prom: {hash}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
    )
}

fn https(agent: &Agent, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", agent.addr.port())
}

/// `moonfrp-agent status` against `agent` over TLS with the test CA: (exit code, output).
fn status(
    agent: &Agent,
    ca: &str,
    extra: &[&str],
    password: Option<&str>,
) -> (Option<i32>, String) {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "status",
        "--listen",
        &agent.addr.to_string(),
        "--tls-ca-file",
        ca,
    ])
    .args(extra)
    .env_remove("MOONFRP_PASSWORD");
    if let Some(p) = password {
        cmd.env("MOONFRP_PASSWORD", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A real Prometheus scrapes `agent` over TLS with basic auth until `up` is 1.
fn prometheus_scrapes_over_tls(agent: &Agent, ca: &str) {
    let prom_dir = tempfile::tempdir().unwrap();
    let password_file = prom_dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: moonfrp\n    scheme: https\n    tls_config: {{ca_file: {ca}}}\n    basic_auth: {{username: prom, password_file: {}}}\n    static_configs: [{{targets: ['{}']}}]\n",
            password_file.display(),
            agent.addr
        ),
    )
    .unwrap();
    let prom_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let prometheus = Daemon::start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ),
            &format!("--web.listen-address={prom_addr}"),
        ],
    );
    let up = poll(
        "up == 1 in Prometheus, over TLS",
        Duration::from_mins(1),
        || {
            let (status, _, body) = http_get(
                prom_addr,
                "/api/v1/query?query=up%7Bjob%3D%22moonfrp%22%7D",
                None,
            )
            .ok()?;
            let v: serde_json::Value =
                serde_json::from_str(&body).ok().filter(|_| status == 200)?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .filter(|v| *v == "1")
                .map(ToOwned::to_owned)
        },
    );
    assert_eq!(up, "1", "{}", prometheus.log());
}

/// An agent serving TLS, with basic auth for `prom` (a bcrypt hash of `cost`), from a web
/// config file: (its directory, the file, the hash, the agent), once it answers.
fn tls_agent(pki: &Pki, cost: u32) -> (tempfile::TempDir, PathBuf, String, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let hash = bcrypt::hash(PASSWORD, cost).unwrap();
    write(&web, &web_config(pki, &hash, ""));
    let agent = AgentCmd::new(&[
        "-t",
        &format!("web={}", free_port()),
        "--web.config.file",
        web.to_str().unwrap(),
    ])
    .spawn();
    let (ca, auth) = (pki.path("ca.pem"), format!("prom:{PASSWORD}"));
    poll("the agent over TLS", Duration::from_secs(30), || {
        let (code, ..) = curl(&["--cacert", &ca, "-u", &auth, &https(&agent, "/readyz")]);
        (code == 200).then_some(())
    });
    (dir, web, hash, agent)
}

#[test]
fn tls_and_basic_auth_from_a_web_config() {
    let pki = Pki::new();
    // Cost 10: what htpasswd -B and the exporter-toolkit's docs use.
    let (_dir, _web, _hash, agent) = tls_agent(&pki, 10);
    let ca = pki.path("ca.pem");
    let auth = format!("prom:{PASSWORD}");

    // Basic auth: 401 without, with a wrong password, or an unknown user; 200 with.
    let (code, head, _) = curl(&["--cacert", &ca, "-i", &https(&agent, "/metrics")]);
    assert_eq!(code, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    for wrong in ["prom:wrong", "root:correct horse battery staple", "prom:"] {
        let (code, ..) = curl(&["--cacert", &ca, "-u", wrong, &https(&agent, "/metrics")]);
        assert_eq!(code, 401, "{wrong}");
    }
    let (code, body, _) = curl(&["--cacert", &ca, "-u", &auth, &https(&agent, "/metrics")]);
    assert_eq!(code, 200);
    assert!(body.contains("moonfrp_agent_build_info"), "{body}");
    assert!(body.contains("moonfrp_agent_web_config_last_reload_successful 1"));
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(http_get(agent.addr, "/metrics", None).map_or(true, |(status, ..)| status != 200));

    // The agent's own clients: TLS with the CA, the password from the environment.
    let (code, out) = status(&agent, &ca, &["--user", "prom"], Some(PASSWORD));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("web"),
        "the tunnel is missing from the status: {out}"
    );
    let (code, out) = status(&agent, &ca, &[], None);
    assert_ne!(code, Some(0));
    assert!(out.contains("401") && out.contains("--user"), "{out}");
    let (code, out) = status(&agent, &ca, &["--user", "prom"], Some("nope"));
    assert_ne!(code, Some(0));
    assert!(out.contains("401") && out.contains("wrong"), "{out}");
    let (code, out) = status(&agent, &ca, &["--user", "prom"], None);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("MOONFRP_PASSWORD"), "{out}");

    prometheus_scrapes_over_tls(&agent, &ca);
}

#[test]
fn mutual_tls_and_a_web_config_changed_while_running() {
    let pki = Pki::new();
    let (_dir, web, hash, agent) = tls_agent(&pki, 4);
    let ca = pki.path("ca.pem");
    let auth = format!("prom:{PASSWORD}");
    let without_cert = || curl(&["--cacert", &ca, "-u", &auth, &https(&agent, "/metrics")]);

    // Mutual TLS, switched on while running: a client without a certificate, or with one
    // from another CA, gets no answer; one with the CA's certificate does.
    let mtls = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        pki.path("ca.pem")
    );
    write(&web, &web_config(&pki, &hash, &mtls));
    let with_cert = |name: &str| {
        curl(&[
            "--cacert",
            &ca,
            "-u",
            &auth,
            "--cert",
            &pki.path(&format!("{name}.pem")),
            "--key",
            &pki.path(&format!("{name}.key")),
            &https(&agent, "/metrics"),
        ])
    };
    poll("mutual TLS in force", Duration::from_secs(10), || {
        (without_cert().0 == 0).then_some(())
    });
    assert_eq!(with_cert("client").0, 200);
    let (code, _, err) = with_cert("stranger");
    assert_eq!(code, 0, "a certificate from another CA was accepted: {err}");
    let (code, out) = status(
        &agent,
        &ca,
        &[
            "--user",
            "prom",
            "--tls-cert-file",
            &pki.path("client.pem"),
            "--tls-key-file",
            &pki.path("client.key"),
        ],
        Some(PASSWORD),
    );
    assert_eq!(code, Some(0), "{out}");

    // A change that does not load keeps the previous settings and says so, naming the key.
    write(
        &web,
        &web_config(&pki, &hash, "  client_auth_type: Sometimes\n"),
    );
    poll("the bad change refused", Duration::from_secs(10), || {
        let (_, body, _) = with_cert("client");
        body.contains("moonfrp_agent_web_config_last_reload_successful 0")
            .then_some(())
    });
    assert!(agent.log().contains("client_auth_type"), "{}", agent.log());
    assert_eq!(without_cert().0, 0, "the refused change took effect");

    // Back to TLS without client certificates: picked up, the gauge back at 1.
    write(&web, &web_config(&pki, &hash, ""));
    poll("the fixed config in force", Duration::from_secs(10), || {
        let (code, body, _) = without_cert();
        (code == 200 && body.contains("moonfrp_agent_web_config_last_reload_successful 1"))
            .then_some(())
    });
}

#[test]
fn a_bad_web_config_stops_the_agent_naming_the_key() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let cases: [(String, &str); 6] = [
        (
            format!(
                "tls_server_config:\n  cert_file: {}\n",
                pki.path("server.pem")
            ),
            "tls_server_config.key_file",
        ),
        (
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                pki.path("server.pem"),
                pki.path("client.key")
            ),
            "does not match the certificate",
        ),
        (
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS10\n",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
            "tls_server_config.min_version",
        ),
        (
            "basic_auth_users:\n  alice: not-a-hash\n".to_owned(),
            "basic_auth_users.alice",
        ),
        ("tls_server_config:\n  certfile: x\n".to_owned(), "certfile"),
        (
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n",
                pki.path("server.pem"),
                pki.path("server.key")
            ),
            "tls_server_config.client_ca_file",
        ),
    ];
    let port = free_port().to_string();
    for (text, names) in &cases {
        write(&web, text);
        for cmd in ["check", "run"] {
            let (code, out, err) = agent_command(&[
                cmd,
                "-t",
                &format!("web={port}"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--web.config.file",
                web.to_str().unwrap(),
            ]);
            let all = format!("{out}{err}");
            assert_ne!(code, 0, "{cmd} accepted {text}: {all}");
            assert!(
                all.contains(names) && all.contains("web.yml"),
                "{cmd} with {text}: the message names neither `{names}` nor the file: {all}"
            );
            assert!(
                !all.contains("probe attached"),
                "{cmd} loaded programs before checking: {all}"
            );
        }
    }
}

/// A network namespace joined to the host by a veth pair: the host is 10.231.x.1, the
/// namespace 10.231.x.2. Removed when dropped.
struct Netns {
    name: String,
    host_ip: Ipv4Addr,
}

impl Netns {
    fn new() -> Self {
        let n = std::process::id() % 250 + 1;
        let name = format!("mfweb{}", std::process::id());
        let host_ip = Ipv4Addr::new(10, 231, n as u8, 1);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let veth = format!("mfw{n}");
        for cmd in [
            format!("netns add {name}"),
            format!("link add {veth}a type veth peer name {veth}b"),
            format!("link set {veth}b netns {name}"),
            format!("addr add {host_ip}/24 dev {veth}a"),
            format!("link set {veth}a up"),
            format!("-n {name} addr add 10.231.{n}.2/24 dev {veth}b"),
            format!("-n {name} link set {veth}b up"),
            format!("-n {name} link set lo up"),
        ] {
            run("ip", &cmd.split(' ').collect::<Vec<_>>());
        }
        Self { name, host_ip }
    }

    /// curl inside the namespace.
    fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let mut all = vec!["netns", "exec", &self.name, "curl"];
        all.extend(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
        all.extend(args);
        let out = Command::new("ip").args(&all).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            body.to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn writes_from_another_host_need_authentication() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let web: PathBuf = dir.path().join("web.yml");
    write(&web, "");
    let watched = free_port();
    let agent = AgentCmd::new(&[
        "-t",
        &format!("web={watched}"),
        "--web.config.file",
        web.to_str().unwrap(),
    ])
    .listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    .start();
    let remote = |path: &str| format!("http://{}:{}{path}", ns.host_ip, agent.addr.port());
    let inspect = format!("/api/v1/inspect?port={}&proto=tcp&ttl=30s", free_port());

    // No auth configured: reads from anywhere, writes from this host only.
    let (code, body, err) = ns.curl(&[&remote("/api/v1/tunnels")]);
    assert_eq!(code, 200, "{body}{err}");
    let (code, body, _) = ns.curl(&["-X", "POST", &remote(&inspect)]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("basic_auth_users"), "{body}");
    let (code, body, _) = ns.curl(&["-X", "DELETE", &remote(&inspect)]);
    assert_eq!(code, 403, "{body}");
    let local = format!("http://127.0.0.1:{}{inspect}", agent.addr.port());
    let (code, body, _) = curl(&["-X", "POST", &local]);
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = curl(&["-X", "DELETE", &local]);
    assert_eq!(code, 200, "{body}");
    agent.wait_for("the refused writes counted", |m| {
        m.limit("http_unauthorized") >= 2.0
    });

    // With basic auth configured: writes from elsewhere with the password, and nothing at all
    // without it.
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    write(&web, &format!("basic_auth_users:\n  ops: {hash}\n"));
    let auth = format!("ops:{PASSWORD}");
    poll("basic auth in force", Duration::from_secs(10), || {
        let (code, ..) = ns.curl(&[&remote("/api/v1/tunnels")]);
        (code == 401).then_some(())
    });
    let (code, body, _) = ns.curl(&["-u", &auth, "-X", "POST", &remote(&inspect)]);
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = ns.curl(&["-u", &auth, "-X", "DELETE", &remote(&inspect)]);
    assert_eq!(code, 200, "{body}");
    let (code, ..) = curl(&["-X", "POST", &local]);
    assert_eq!(
        code, 401,
        "loopback is no exception once auth is configured"
    );
}
