//! Alerts end to end: a tunnel whose listener goes away fires TunnelDown, which reaches a real
//! Alertmanager, webhook/Slack/Discord receivers and exec hooks; it resolves when the listener
//! returns. Failing and hung channels are retried, counted, and hold up nothing else.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{
    Agent, AgentCmd, Daemon, TIMEOUT, free_port, http_get, poll,
    receiver::{Receiver, Reply},
};
use serde_json::Value;

/// An agent watching `web` on `port`, with TunnelDown firing after `for_` and these channels.
fn agent(dir: &Path, port: u16, for_: &str, channels: &str) -> Agent {
    let mut config = format!(
        "[[tunnels]]\nname = \"web\"\nport = {port}\n\n[alerts]\ncooldown = \"0s\"\n\
         [[alerts.rules]]\nname = \"TunnelDown\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"==\"\n\
         critical = 0\nfor = \"{for_}\"\nannotations = {{ summary = \"tunnel {{{{tunnel}}}} is down\" }}\n"
    );
    config.push_str(channels);
    let path = dir.join("moonfrp.toml");
    std::fs::write(&path, config).unwrap();
    AgentCmd::new(&["--config", path.to_str().unwrap()])
        .data_dir(dir.join("data"))
        .start()
}

fn json_get(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, _, body) = http_get(addr, path, None).unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `moonfrp_alert_notifications_total{channel, result}`.
fn notes(m: &moonfrp_tests::Metrics, channel: &str, result: &str) -> Option<f64> {
    m.get(
        "moonfrp_alert_notifications_total",
        &[("channel", channel), ("result", result)],
    )
}

fn listen(port: u16) -> TcpListener {
    moonfrp_tests::bind_tcp(port)
}

#[test]
fn tunnel_down_reaches_a_real_alertmanager_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let am_port = free_port();
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let am_addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, am_port));
    let _am = Daemon::start(
        "prometheus-alertmanager",
        &[
            &format!("--config.file={}", am_config.display()),
            &format!("--storage.path={}", dir.path().join("am").display()),
            &format!("--web.listen-address={am_addr}"),
            "--cluster.listen-address=",
        ],
    );
    poll("Alertmanager to be ready", TIMEOUT, || {
        matches!(http_get(am_addr, "/-/ready", None), Ok((200, ..))).then_some(())
    });
    let am_alerts = || -> Vec<Value> {
        json_get(am_addr, "/api/v2/alerts")
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == "TunnelDown")
            .cloned()
            .collect()
    };

    let port = free_port();
    let listener = listen(port);
    let agent = agent(
        dir.path(),
        port,
        "2s",
        &format!(
            "[[alerts.channels]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://{am_addr}\"\nresend = \"1s\"\n"
        ),
    );
    agent.wait_snapshots(3);
    assert!(am_alerts().is_empty());

    drop(listener);
    let m = agent.wait_for("TunnelDown to fire", |m| {
        m.get(
            "moonfrp_alerts_active",
            &[("alertname", "TunnelDown"), ("severity", "critical")],
        ) == Some(1.0)
    });
    assert_eq!(
        m.get("moonfrp_alerts_tunnel_failures_total", &[]),
        Some(1.0)
    );
    let got = poll("Alertmanager to show the alert", TIMEOUT, || {
        am_alerts().into_iter().next()
    });
    assert_eq!(got["labels"]["tunnel"], "web");
    assert_eq!(got["labels"]["severity"], "critical");
    assert_eq!(got["labels"]["port"], port.to_string());
    assert_eq!(got["annotations"]["summary"], "tunnel web is down");
    assert_eq!(got["status"]["state"], "active");
    let ours = json_get(agent.addr, "/api/v1/alerts");
    // Found by name: on a busy machine HostCpuHigh may be pending beside it.
    let a = ours["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alertname"] == "TunnelDown")
        .unwrap_or_else(|| panic!("no TunnelDown in {ours}"));
    assert_eq!(a["state"], "firing");
    assert_eq!(a["value"], 0.0);

    let _back = listen(port);
    poll("Alertmanager to see it resolved", TIMEOUT, || {
        am_alerts().is_empty().then_some(())
    });
    let m = agent.wait_snapshots(1);
    assert_eq!(
        m.get(
            "moonfrp_alerts_active",
            &[("alertname", "TunnelDown"), ("severity", "critical")]
        ),
        None
    );
    assert!(notes(&m, "am", "sent").unwrap() >= 2.0);
    // The tunnel's alert is gone (a host rule may be pending on a busy test machine: not this
    // test's concern, as Alertmanager's view above is filtered the same way).
    let active = json_get(agent.addr, "/api/v1/alerts");
    assert!(
        !active["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alertname"] == "TunnelDown"),
        "{active}"
    );
    alert_log_has_firing_then_resolved(&agent.data_dir);
}

/// The alert log in the history database.
fn alert_log_has_firing_then_resolved(data: &Path) {
    let conn = rusqlite::Connection::open(data.join("history.db")).unwrap();
    let events: Vec<String> = conn
        .prepare("SELECT event FROM alert_events WHERE alertname = 'TunnelDown' ORDER BY ts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("firing"));
    assert_eq!(events.last().map(String::as_str), Some("resolved"));
}

fn channel(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!("[[alerts.channels]]\nname = \"{name}\"\ntype = \"{kind}\"\nurl = \"{url}\"\n{extra}")
}

#[test]
fn webhook_slack_and_discord_bodies_with_a_failing_and_a_hung_channel() {
    let dir = tempfile::tempdir().unwrap();
    let r = Receiver::start();
    r.reply("/fail", Reply::Status(500));
    r.reply("/hang", Reply::Hang(Duration::from_mins(1)));
    let mut channels = String::new();
    // The hung and failing channels come first: they must not delay the others.
    channels.push_str(&channel(
        "hang",
        "webhook",
        &r.url("/hang"),
        "timeout = \"3s\"\nretries = 0\n",
    ));
    channels.push_str(&channel(
        "fail",
        "webhook",
        &r.url("/fail"),
        "retries = 2\nbackoff = \"200ms\"\n",
    ));
    channels.push_str(&channel("hook", "webhook", &r.url("/hook"), ""));
    channels.push_str(&channel("slack", "slack", &r.url("/slack"), ""));
    channels.push_str(&channel(
        "discord",
        "discord",
        &r.url("/discord"),
        "severities = [\"critical\"]\n",
    ));
    channels.push_str(&channel(
        "warnings",
        "webhook",
        &r.url("/warnings"),
        "severities = [\"warning\"]\n",
    ));
    let port = free_port();
    let listener = listen(port);
    let agent = agent(dir.path(), port, "0s", &channels);
    agent.wait_snapshots(2);
    drop(listener);
    let fired = Instant::now();
    let hook = poll("the webhook", TIMEOUT, || {
        r.received("/hook").into_iter().next()
    });
    let slack = poll("Slack", TIMEOUT, || r.received("/slack").into_iter().next());
    let discord = poll("Discord", TIMEOUT, || {
        r.received("/discord").into_iter().next()
    });
    documented_bodies(&hook.body, &slack.body, &discord.body);
    // Nobody waited for the hung channel: all three arrived promptly, while /hang still hangs.
    for got in [&hook, &slack, &discord] {
        assert!(
            got.at.duration_since(fired) < Duration::from_secs(5),
            "{got:?}"
        );
    }
    assert!(
        r.received("/warnings").is_empty(),
        "a critical alert went to a warnings-only channel"
    );
    // Collections go on at 1 s while the hung channel waits for its timeout.
    let before = Instant::now();
    agent.wait_snapshots(2);
    assert!(before.elapsed() < Duration::from_secs(4));

    // The failing channel: first try and two retries, then one failure counted.
    let m = agent.wait_for("the failing channel to give up", |m| {
        notes(m, "fail", "failed") == Some(1.0)
    });
    assert_eq!(r.received("/fail").len(), 3);
    assert_eq!(notes(&m, "hook", "sent"), Some(1.0));
    agent.wait_for("the hung channel to time out", |m| {
        notes(m, "hang", "failed") == Some(1.0)
    });

    // Resolved when the listener returns.
    let _back = listen(port);
    let resolved = poll("the resolve", TIMEOUT, || {
        r.received("/hook")
            .into_iter()
            .map(|h| serde_json::from_str::<Value>(&h.body).unwrap())
            .find(|b| b["status"] == "resolved")
    });
    assert!(
        resolved["alerts"][0]["endsAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let slack = poll("Slack resolve", TIMEOUT, || {
        r.received("/slack")
            .into_iter()
            .find(|s| s.body.contains("[RESOLVED]"))
    });
    assert!(slack.body.contains("#2eb886"));
}

/// The webhook, Slack and Discord bodies of a firing TunnelDown, as the README documents them.
fn documented_bodies(hook: &str, slack: &str, discord: &str) {
    let body: Value = serde_json::from_str(hook).unwrap();
    assert_eq!(body["version"], "1");
    assert_eq!(body["receiver"], "hook");
    assert_eq!(body["status"], "firing");
    let a = &body["alerts"][0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["alertname"], "TunnelDown");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["labels"]["tunnel"], "web");
    assert_eq!(a["value"], 0.0);
    assert_eq!(a["threshold"], 0.0);
    assert_eq!(a["annotations"]["summary"], "tunnel web is down");
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["endsAt"], Value::Null);

    let body: Value = serde_json::from_str(slack).unwrap();
    assert_eq!(
        body["text"],
        "[FIRING] TunnelDown (critical): tunnel web is down"
    );
    assert_eq!(body["attachments"][0]["color"], "#d00000");
    assert!(
        body["attachments"][0]["text"]
            .as_str()
            .unwrap()
            .contains("tunnel=web")
    );
    let body: Value = serde_json::from_str(discord).unwrap();
    assert_eq!(
        body["content"],
        "[FIRING] TunnelDown (critical): tunnel web is down"
    );
    assert_eq!(body["embeds"][0]["color"], 0xd0_00_00);
}

#[test]
fn exec_hook_gets_the_alert_and_a_hung_hook_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook.out");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv | grep ^MOONFRP_ALERT_ | sort > {0}.tmp\necho STDIN >> {0}.tmp\ncat >> {0}.tmp\nmv {0}.tmp {0}\n", out.display()),
    )
    .unwrap();
    // A sleep no other process runs: 600.<our pid> seconds.
    let marker = format!("sleep 600.{}", std::process::id());
    let hung = dir.path().join("hung.sh");
    std::fs::write(&hung, format!("#!/bin/sh\nexec {marker}\n")).unwrap();
    let mut channels = String::new();
    let _ = write!(
        channels,
        "[[alerts.channels]]\nname = \"hook\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"{}\"]\n\
         [[alerts.channels]]\nname = \"hung\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"{}\"]\ntimeout = \"2s\"\n",
        script.display(),
        hung.display()
    );
    let port = free_port();
    let agent = agent(dir.path(), port, "0s", &channels);
    let text = poll("the hook's output", TIMEOUT, || {
        std::fs::read_to_string(&out).ok()
    });
    for want in [
        "MOONFRP_ALERT_NAME=TunnelDown",
        "MOONFRP_ALERT_STATUS=firing",
        "MOONFRP_ALERT_SEVERITY=critical",
        "MOONFRP_ALERT_TUNNEL=web",
        "MOONFRP_ALERT_VALUE=0",
        "MOONFRP_ALERT_SUMMARY=tunnel web is down",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "{want} missing in:\n{text}"
        );
    }
    let stdin: Value = serde_json::from_str(text.split("STDIN\n").nth(1).unwrap()).unwrap();
    assert_eq!(stdin["alertname"], "TunnelDown");
    assert_eq!(stdin["labels"]["port"], port.to_string());
    // The hung hook runs, then is killed at its 2 s timeout and counted as failed.
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap()
            .status
            .success()
    };
    poll("the hung hook to start", TIMEOUT, || {
        running().then_some(())
    });
    let m = agent.wait_for("the hung hook to be killed", |m| {
        notes(m, "hung", "failed") == Some(1.0)
    });
    assert_eq!(notes(&m, "hook", "sent"), Some(1.0));
    thread::sleep(Duration::from_millis(200));
    assert!(!running(), "the hung hook outlived its timeout");
    assert!(
        agent.log().contains("did not finish within 2s; killed"),
        "{}",
        agent.log()
    );
}

#[test]
fn bad_alert_config_stops_the_agent_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[alerts.rules]]\nname = \"Slow\"\nmetric = \"moonfrp_tunnel_nope\"\nop = \">\"\nwarning = 1\n",
            "alerts.rules[0] (`Slow`): unknown metric `moonfrp_tunnel_nope`",
        ),
        (
            "[[alerts.rules]]\nname = \"Slow\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"=>\"\nwarning = 1\n",
            "alerts.rules[0] (`Slow`): comparison `=>` is unknown",
        ),
        (
            "[[alerts.rules]]\nname = \"Slow\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"<\"\nwarning = 1\nfor = \"soon\"\n",
            "alerts.rules[0] (`Slow`): `for`: `soon` is not a duration",
        ),
        (
            "[[alerts.channels]]\nname = \"ops\"\ntype = \"webhook\"\nurl = \"ftp://example.com/x\"\n",
            "alerts.channels[0] (`ops`): `url` must be an http:// or https:// URL",
        ),
    ];
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("[alerts]\n{text}")).unwrap();
        let (code, _, err) =
            moonfrp_tests::agent_command(&["run", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn shipped_prometheus_rules_pass_promtool_check_and_unit_tests() {
    let dir = moonfrp_tests::workspace().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (cargo xtask test installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
