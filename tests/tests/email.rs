//! Email end to end, against a real SMTP server (aiosmtpd): a tunnel going down and coming back
//! sends a firing and a resolved message with the right subject, recipients and body, over
//! STARTTLS with a test CA and AUTH; wrong credentials are counted as failed and logged without
//! the password; `alert-test` and `POST /api/v1/alerts/test` report what the server answered;
//! `status --alerts` shows the alert log.
use std::{path::Path, process::Command};

use moonfrp_tests::{
    Agent, AgentCmd, agent_bin, free_port, http_request,
    pki::Pki,
    smtp::{Mode, SmtpServer, body, header},
};
use serde_json::Value;

const USER: &str = "moonfrp";
const PASSWORD: &str = "Pa55-right-horse";

/// The agent config: tunnel `web` on `port`, TunnelDown after 1 s, and `channel`.
fn config(dir: &Path, port: u16, channel: &str) -> std::path::PathBuf {
    let path = dir.join("moonfrp.toml");
    std::fs::write(
        &path,
        format!(
            "[[tunnels]]\nname = \"web\"\nport = {port}\n\n[alerts]\ncooldown = \"0s\"\n\
             [[alerts.rules]]\nname = \"TunnelDown\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"==\"\n\
             critical = 0\nfor = \"1s\"\nannotations = {{ summary = \"tunnel {{{{tunnel}}}} is down\" }}\n\n{channel}"
        ),
    )
    .unwrap();
    path
}

/// An smtp channel `mail` to the server on `port`.
fn channel(port: u16, tls: &str, ca: &str, password_file: &Path) -> String {
    format!(
        "[[alerts.channels]]\nname = \"mail\"\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         tls = \"{tls}\"\ntls_ca_file = \"{ca}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\n\
         from = \"moonfrp <alerts@example.com>\"\nto = [\"ops@example.com\", \"oncall@example.net\"]\n\
         subject = \"[{{{{status}}}}] {{{{alertname}}}} on {{{{tunnel}}}}\"\nretries = 1\nbackoff = \"100ms\"\n",
        password_file.display()
    )
}

fn notes(agent: &Agent, result: &str) -> Option<f64> {
    agent.metrics().get(
        "moonfrp_alert_notifications_total",
        &[("channel", "mail"), ("result", result)],
    )
}

fn alert_test(config: &Path) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args([
            "alert-test",
            "--config",
            config.to_str().unwrap(),
            "--channel",
            "mail",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A STARTTLS server with a test CA that wants [`USER`] and [`PASSWORD`], and an agent watching
/// `port` that mails it with `password` (from a file).
struct Setup {
    _pki: Pki,
    server: SmtpServer,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    agent: Agent,
}

fn starttls_setup(password: &str, port: u16) -> Setup {
    let pki = Pki::new();
    let server = SmtpServer::start(
        Mode::StartTls,
        Some((&pki.path("server.pem"), &pki.path("server.key"))),
        Some((USER, PASSWORD)),
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("smtp-password");
    std::fs::write(&secret, password).unwrap();
    let path = config(
        dir.path(),
        port,
        &channel(server.port, "starttls", &pki.path("ca.pem"), &secret),
    );
    let agent = AgentCmd::new(&["--config", path.to_str().unwrap()])
        .data_dir(dir.path().join("data"))
        .start();
    Setup {
        _pki: pki,
        server,
        _dir: dir,
        path,
        agent,
    }
}

#[test]
fn a_firing_and_a_resolved_alert_arrive_by_email_over_starttls() {
    let (listener, port) = moonfrp_tests::tcp_listener();
    let setup = starttls_setup(&format!("{PASSWORD}\n"), port);
    let (server, path, agent) = (&setup.server, &setup.path, &setup.agent);
    agent.wait_snapshots(2);
    assert!(server.messages().is_empty());

    drop(listener);
    let firing = server.wait_message(1);
    assert_eq!(
        header(&firing, "subject"),
        "[FIRING] TunnelDown on web",
        "{firing}"
    );
    assert_eq!(
        firing["to"],
        serde_json::json!(["ops@example.com", "oncall@example.net"])
    );
    assert_eq!(firing["from"], "alerts@example.com");
    assert_eq!(header(&firing, "to"), "ops@example.com, oncall@example.net");
    assert_eq!(header(&firing, "from"), "moonfrp <alerts@example.com>");
    assert_eq!(
        (firing["tls"].as_bool(), firing["authenticated"].as_bool()),
        (Some(true), Some(true))
    );
    let text = body(&firing);
    assert!(
        text.starts_with("FIRING: TunnelDown (critical)\ntunnel web is down\n"),
        "{text}"
    );
    assert!(text.contains("value: 0 (threshold 0)"), "{text}");
    assert!(
        text.contains(&format!("port={port}")) && text.contains("tunnel=web"),
        "{text}"
    );

    let _back = moonfrp_tests::bind_tcp(port);
    let resolved = server.wait_message(2);
    assert_eq!(
        header(&resolved, "subject"),
        "[RESOLVED] TunnelDown on web",
        "{resolved}"
    );
    assert!(
        body(&resolved).starts_with("RESOLVED: TunnelDown (critical)"),
        "{}",
        body(&resolved)
    );
    moonfrp_tests::poll("two sent notifications", moonfrp_tests::TIMEOUT, || {
        (notes(agent, "sent") == Some(2.0)).then_some(())
    });
    assert_eq!(notes(agent, "failed").unwrap_or(0.0), 0.0);

    // `status --alerts`: nothing active now, the log has both events.
    let out = Command::new(agent_bin())
        .args(["status", "--alerts", "--listen", &agent.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("ALERTS (0)") && text.contains("none active"),
        "{text}"
    );
    let log: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("ALERT LOG"))
        .collect();
    assert!(log[0].contains("2 events"), "{text}");
    assert!(
        log[1].contains("resolved") && log[1].contains("TunnelDown") && log[1].contains("web"),
        "{text}"
    );
    assert!(
        log[2].contains("firing") && log[2].contains("tunnel web is down"),
        "{text}"
    );

    tests_are_marked_and_answered(agent, server, path);
}

/// A test through the running agent, then from the command line: marked, and answered 250.
fn tests_are_marked_and_answered(agent: &Agent, server: &SmtpServer, path: &Path) {
    let (status, _, answer) =
        http_request(agent.addr, "POST", "/api/v1/alerts/test?channel=mail", None).unwrap();
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let r = &v["data"]["results"][0];
    assert_eq!(
        (r["channel"].as_str(), r["type"].as_str(), r["ok"].as_bool()),
        (Some("mail"), Some("smtp"), Some(true)),
        "{v}"
    );
    assert!(r["answer"].as_str().unwrap().starts_with("250 "), "{v}");
    let marked = server.wait_message(3);
    assert!(
        header(&marked, "subject").starts_with("[TEST] [FIRING] MoonfrpTestNotification"),
        "{marked}"
    );
    assert!(
        body(&marked).starts_with("This is a TEST notification"),
        "{marked}"
    );
    let (code, out, err) = alert_test(path);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("smtp mail: sent — 250 2.0.0 Ok: stored as message 4"),
        "{out}"
    );
    assert!(header(&server.wait_message(4), "subject").starts_with("[TEST]"));
    let (status, _, answer) =
        http_request(agent.addr, "POST", "/api/v1/alerts/test?channel=nope", None).unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("mail"), "{answer}");
    // Test notifications are not alerts: the counters did not move.
    assert_eq!(notes(agent, "sent"), Some(2.0));
}

#[test]
fn wrong_credentials_are_counted_as_failed_and_never_logged() {
    let wrong = "Wr0ng-battery-staple-93";
    let setup = starttls_setup(wrong, free_port());
    let (server, path, agent) = (&setup.server, &setup.path, &setup.agent);
    // Nothing listens on the port: TunnelDown fires at once, the server refuses the login.
    moonfrp_tests::poll("a failed notification", moonfrp_tests::TIMEOUT, || {
        (notes(agent, "failed") == Some(1.0)).then_some(())
    });
    assert_eq!(notes(agent, "sent").unwrap_or(0.0), 0.0);
    assert!(server.messages().is_empty());
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("alert notification failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("535") && line.contains("mail"), "{line}");
    let (_, _, api_log) = agent.get("/api/v1/logs?level=warn", None).unwrap();
    assert!(api_log.contains("535"), "{api_log}");
    for text in [&log, &api_log] {
        assert!(!text.contains(wrong), "the password is in the log:\n{text}");
    }

    let (code, out, err) = alert_test(path);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.starts_with("smtp mail: FAILED — ") && out.contains("535"),
        "{out}"
    );
    assert!(
        err.contains("1 of 1 channel(s) did not take the test notification"),
        "{err}"
    );
    let (status, _, answer) =
        http_request(agent.addr, "POST", "/api/v1/alerts/test", None).unwrap();
    assert_eq!(status, 502, "{answer}");
    assert!(!out.contains(wrong) && !err.contains(wrong) && !answer.contains(wrong));
}

#[test]
fn alert_test_speaks_smtps_and_plain_and_refuses_a_certificate_of_another_ca() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("smtp-password");
    std::fs::write(&secret, PASSWORD).unwrap();
    let tls = SmtpServer::start(
        Mode::Tls,
        Some((&pki.path("server.pem"), &pki.path("server.key"))),
        Some((USER, PASSWORD)),
    );
    let path = config(
        dir.path(),
        free_port(),
        &channel(tls.port, "tls", &pki.path("ca.pem"), &secret),
    );
    let (code, out, err) = alert_test(&path);
    assert_eq!(code, 0, "{out}{err}\n{}", tls.log());
    assert!(tls.wait_message(1)["tls"].as_bool().unwrap());

    // The same server, trusted through another CA: the certificate is refused, nothing is sent.
    let path = config(
        dir.path(),
        free_port(),
        &channel(tls.port, "tls", &pki.path("other-ca.pem"), &secret),
    );
    let (code, out, _) = alert_test(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED") && out.to_lowercase().contains("certificate"),
        "{out}"
    );
    assert_eq!(tls.messages().len(), 1);

    // A relay on this host without TLS or AUTH.
    let plain = SmtpServer::start(Mode::Plain, None, None);
    let path = dir.path().join("plain.toml");
    std::fs::write(
        &path,
        format!(
            "[[alerts.channels]]\nname = \"mail\"\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             from = \"alerts@example.com\"\nto = \"ops@example.com\"\n",
            plain.port
        ),
    )
    .unwrap();
    let (code, out, err) = alert_test(&path);
    assert_eq!(code, 0, "{out}{err}");
    let m = plain.wait_message(1);
    assert_eq!(m["to"], serde_json::json!(["ops@example.com"]));
    assert!(body(&m).contains("TEST notification"), "{m}");
}
