//! FRP sources run by strangers: proxy names of a megabyte and with forged log lines and escape
//! sequences, 100,000 proxies, answers of 100 MB, without end, a byte a second or never. The
//! agent keeps its memory, its interval and its other sources; its log gets one line per
//! problem and no forged ones; `/metrics` stays valid.
use std::{net::TcpListener, path::Path, sync::Arc};

use moonfrp_tests::{
    Agent, AgentCmd, agent_command, free_port,
    hostile_http::{Behavior, HostileHttp},
    promtool_check,
};

/// The stated bound on the agent's peak memory under hostile sources (README: Limits).
const RSS_BOUND: u64 = 64 << 20;

/// An frps config whose web server is the stand-in.
fn frps_config(dir: &Path, name: &str, api: &HostileHttp) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "bindPort = {}\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {}\n",
            free_port(),
            api.port()
        ),
    )
    .unwrap();
}

/// The agent's config: discovery from `frp_dir`, grace short.
fn agent_config(dir: &Path, frp_dir: &Path) -> std::path::PathBuf {
    let path = dir.join("moonfrp.toml");
    std::fs::write(
        &path,
        format!(
            "[frp]\nconfigs = [\"{}/*.toml\"]\ngrace = \"1m\"\n",
            frp_dir.display()
        ),
    )
    .unwrap();
    path
}

/// v1 answers for every proxy type, empty except `tcp`.
fn v1(api: &HostileHttp, tcp: Behavior) {
    api.set("/api/proxy/tcp", tcp);
    for kind in ["udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp"] {
        api.json(&format!("/api/proxy/{kind}"), r#"{"proxies":[]}"#);
    }
}

fn v1_proxy(name: &str, port: u16) -> String {
    format!(
        r#"{{"name":{},"conf":{{"type":"tcp","remotePort":{port}}},"todayTrafficIn":1,"todayTrafficOut":2,"curConns":0,"status":"online"}}"#,
        serde_json::to_string(name).unwrap()
    )
}

/// Log lines that mention `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The gaps between consecutive snapshots, each within ±10 % of the 1 s interval.
fn assert_interval_kept(agent: &Agent) {
    // Eight snapshots in the history file: the sources may have answered at the first or the
    // second one, and the writer stores each a moment after it is taken.
    let deadline = std::time::Instant::now() + moonfrp_tests::TIMEOUT;
    let mut ts = agent.snapshot_times();
    while ts.len() < 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        ts = agent.snapshot_times();
    }
    assert!(ts.len() >= 8, "{ts:?}");
    // The first snapshot comes at once, before the sources have answered once.
    for w in ts[1..].windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (0.9..=1.1).contains(&gap),
            "a collection interval of {gap:.3} s (1 s ± 10 %): {ts:?}"
        );
    }
}

/// An frps v2 API with 100,000 proxies (http ones: no port, no kernel slot), in pages.
fn hundred_thousand_proxies() -> HostileHttp {
    let many = HostileHttp::start();
    many.set(
        "/api/v2/proxies",
        Behavior::Generated(Arc::new(|query: &str| {
            let arg = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(1)
            };
            let (page, size) = (arg("page="), arg("pageSize="));
            let items: Vec<String> = (size * (page - 1)..(size * page).min(100_000))
                .map(|i| {
                    format!(
                        r#"{{"name":"site{i:06}","spec":{{"type":"http","http":{{"customDomains":["s{i}.example"]}}}},"status":{{"phase":"online","todayTrafficIn":{i},"todayTrafficOut":0,"curConns":0}}}}"#
                    )
                })
                .collect();
            format!(
                r#"{{"code":200,"msg":"","data":{{"total":100000,"items":[{}]}}}}"#,
                items.join(",")
            )
        })),
    );
    many
}

/// The log has one line per problem however many intervals pass, and no forged line; `status`
/// prints each name on one line, escaped.
fn log_and_status_stay_one_line_per_thing(agent: &Agent, forged: &str) {
    let log = agent.log();
    assert_eq!(
        lines_with(&log, "proxy name(s) had control characters"),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, "proxies beyond `frp.max_proxies`"),
        1,
        "{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with(forged), "a forged log line: {line}");
        assert!(
            !line.contains(['\u{1b}', '\u{7}']),
            "a control character: {line:?}"
        );
    }

    // `status` prints the names on one line each, escaped.
    let (code, out, err) = agent_command(&["status", "--listen", &agent.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{out:?}");
    assert!(out.lines().all(|l| !l.starts_with(forged)), "{out}");
    let evil_rows: Vec<&str> = out.lines().filter(|l| l.contains("evil")).collect();
    assert_eq!(evil_rows.len(), 1, "{out}");
}

#[test]
fn proxy_names_are_escaped_and_bounded_and_the_log_stays_one_line_per_problem() {
    let (p_long, p_evil, p_ok) = (free_port(), free_port(), free_port());
    let _listeners: Vec<TcpListener> = [p_long, p_evil, p_ok]
        .iter()
        .map(|p| moonfrp_tests::bind_tcp(*p))
        .collect();
    let megabyte = "x".repeat(1_000_000);
    let forged = "2026-11-29T00:00:00.000000Z ERROR moonfrp_agent: forged line";
    let evil = format!("evil\n{forged} \u{1b}]0;owned\u{7} \"quoted\" \u{202e}txt");
    let names = HostileHttp::start();
    v1(
        &names,
        Behavior::Json(Arc::new(format!(
            r#"{{"proxies":[{},{},{}]}}"#,
            v1_proxy(&megabyte, p_long),
            v1_proxy(&evil, p_evil),
            v1_proxy("home.ok", p_ok)
        ))),
    );
    // 100,000 proxies through the paged v2 API: the first `frp.max_proxies` (1,000) by name are
    // taken, the rest are left out and counted.
    let many = hundred_thousand_proxies();

    let dir = tempfile::tempdir().unwrap();
    let frp_dir = dir.path().join("frp");
    std::fs::create_dir(&frp_dir).unwrap();
    frps_config(&frp_dir, "frps-names", &names);
    frps_config(&frp_dir, "frps-many", &many);
    let config = agent_config(dir.path(), &frp_dir);
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);

    let m = agent.wait_for("the proxies of both sources", |m| {
        m.get("moonfrp_tunnel_up", &[("port", &p_ok.to_string())]) == Some(1.0)
            && m.get("moonfrp_tunnel_info", &[("tunnel", "site000999")])
                .is_some()
    });
    agent.wait_snapshots(6);
    let m2 = agent.metrics();
    let (_, _, text) = agent.get("/metrics", None).unwrap();
    let (ok, findings) = promtool_check(&text);
    assert!(ok && findings.trim().is_empty(), "promtool:\n{findings}");
    assert_interval_kept(&agent);

    let tunnel_of = |port: u16| {
        m.samples
            .iter()
            .find(|s| {
                s.name == "moonfrp_tunnel_up"
                    && s.labels.contains(&("port".into(), port.to_string()))
            })
            .and_then(|s| s.labels.iter().find(|(k, _)| k == "tunnel"))
            .map_or_else(|| panic!("no tunnel on port {port}"), |(_, v)| v.clone())
    };
    let long_label = tunnel_of(p_long);
    assert_eq!(long_label.chars().count(), 128, "{long_label}");
    assert!(long_label.starts_with("xxxx") && long_label.contains("…~"));
    let evil_label = tunnel_of(p_evil);
    assert!(
        !evil_label.contains(['\n', '\u{1b}', '\u{7}', '\u{202e}']),
        "{evil_label:?}"
    );
    assert!(evil_label.starts_with("evil\\n2026"), "{evil_label:?}");
    assert!(evil_label.contains("\"quoted\""), "{evil_label:?}");

    // 1,000 of the 100,000 kept, the rest left out and counted; names cut and counted.
    let sites = m2
        .samples
        .iter()
        .filter(|s| {
            s.name == "moonfrp_tunnel_info"
                && s.labels
                    .iter()
                    .any(|(k, v)| k == "tunnel" && v.starts_with("site"))
        })
        .count();
    assert_eq!(sites, 1000);
    assert!(
        m2.get("moonfrp_tunnel_info", &[("tunnel", "site001000")])
            .is_none()
    );
    assert!(m2.limit("frp_proxies") >= 99_000.0);
    assert!(m2.limit("name_length") >= 2.0);

    log_and_status_stay_one_line_per_thing(&agent, forged);

    // A megabyte name costs a label, not megabytes: the history file stays small.
    let db = std::fs::metadata(agent.data_dir.join("history.db"))
        .unwrap()
        .len()
        + std::fs::metadata(agent.data_dir.join("history.db-wal")).map_or(0, |m| m.len());
    assert!(db < 16 << 20, "history.db + WAL: {db} bytes");
    assert!(
        agent.peak_rss_bytes() < RSS_BOUND,
        "peak RSS {} MiB",
        agent.peak_rss_bytes() >> 20
    );
}

#[test]
fn huge_endless_dripping_and_hung_answers_cost_their_source_only() {
    // The stand-ins, each failing its own way at the first call the agent makes.
    let huge = HostileHttp::start();
    huge.json("/api/serverinfo", r#"{"version":"0.70.1","bindPort":7000}"#);
    v1(
        &huge,
        Behavior::Huge {
            head: r#"{"proxies":[{"name":""#.into(),
            filler: 100_000_000,
            tail: r#"","conf":null,"status":"offline"}]}"#.into(),
        },
    );
    let endless = HostileHttp::start();
    endless.set("/api/serverinfo", Behavior::Endless);
    let drip = HostileHttp::start();
    drip.set("/api/serverinfo", Behavior::Drip);
    let hang = HostileHttp::start();
    hang.set("/api/serverinfo", Behavior::Hang);
    // And one that works, whose tunnel must stay counted and judged.
    let good = HostileHttp::start();
    let p_good = free_port();
    let _listener = moonfrp_tests::bind_tcp(p_good);
    v1(
        &good,
        Behavior::Json(Arc::new(format!(
            r#"{{"proxies":[{}]}}"#,
            v1_proxy("home.good", p_good)
        ))),
    );

    let dir = tempfile::tempdir().unwrap();
    let frp_dir = dir.path().join("frp");
    std::fs::create_dir(&frp_dir).unwrap();
    for (name, api) in [
        ("huge", &huge),
        ("endless", &endless),
        ("drip", &drip),
        ("hang", &hang),
        ("good", &good),
    ] {
        frps_config(&frp_dir, name, api);
    }
    let config = agent_config(dir.path(), &frp_dir);
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .log_level("info")
        .start();
    agent.wait_for("the good source's tunnel", |m| {
        m.get("moonfrp_tunnel_up", &[("tunnel", "home.good")]) == Some(1.0)
    });
    agent.wait_snapshots(10);
    let m = agent.metrics();
    assert_eq!(
        m.get("moonfrp_tunnel_up", &[("tunnel", "home.good")]),
        Some(1.0),
        "the working source is unaffected"
    );
    assert!(
        m.get(
            "moonfrp_agent_collection_errors_total",
            &[("source", "frps_api")]
        )
        .unwrap()
            >= 4.0
    );
    assert!(
        m.limit("http_response_size") >= 2.0,
        "the 100 MB answer and the endless one are cut at the limit"
    );
    let (_, _, text) = agent.get("/metrics", None).unwrap();
    let (ok, findings) = promtool_check(&text);
    assert!(ok && findings.trim().is_empty(), "promtool:\n{findings}");

    assert_interval_kept(&agent);
    let peak = agent.peak_rss_bytes();
    assert!(peak < RSS_BOUND, "peak RSS {} MiB", peak >> 20);

    // Each failing source is logged once, with what went wrong, however often it fails.
    let log = agent.log();
    for (api, what) in [
        (&huge, "larger than"),
        (&endless, "larger than"),
        (&drip, "no whole answer in time"),
        (&hang, "no whole answer in time"),
    ] {
        let source = format!("frps API at 127.0.0.1:{}", api.port());
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("frp source failed") && l.contains(&source))
            .collect();
        assert_eq!(failed.len(), 1, "{source}:\n{log}");
        assert!(failed[0].contains(what), "{}", failed[0]);
        assert!(failed[0].len() < 1000, "{}", failed[0]);
    }
    assert!(agent.stop().success());
    // The hung and dripping stand-ins were asked again after each deadline, not held forever.
    assert!(hang.requests.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}
