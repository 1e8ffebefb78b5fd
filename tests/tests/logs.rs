//! The agent's own log from its API: a warning caused by a broken FRP config is answered by
//! `/api/v1/logs` and followed live by `moonfrp-agent logs -f`; the answer stays within the ring's
//! bound while the agent logs a flood.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use moonfrp_tests::{Agent, AgentCmd, agent_bin, poll};
use serde_json::Value;

fn logs(agent: &Agent, query: &str) -> Value {
    let (status, _, body) = agent.get(&format!("/api/v1/logs?{query}"), None).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["data"].clone()
}

/// Records whose message or fields mention `needle`.
fn mentioning(page: &Value, needle: &str) -> Vec<Value> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains(needle))
        .cloned()
        .collect()
}

/// An frp config directory under `dir` with a broken `frps-broken.toml`, and an agent config
/// that reads it: (the frp directory, the agent's config file).
fn broken_frp_config(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let frp = dir.join("frp");
    std::fs::create_dir(&frp).unwrap();
    std::fs::write(frp.join("frps-broken.toml"), "bindPort = \n").unwrap();
    let config = dir.join("moonfrp.toml");
    std::fs::write(
        &config,
        format!("[frp]\nconfigs = [\"{}/*.toml\"]\n", frp.display()),
    )
    .unwrap();
    (frp, config)
}

#[test]
fn a_broken_frp_config_is_a_warning_in_the_api_and_followed_live() {
    let dir = tempfile::tempdir().unwrap();
    let (frp, config) = broken_frp_config(dir.path());
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .log_level("info")
        .start();

    let page = poll(
        "the warning about frps-broken.toml",
        Duration::from_secs(20),
        || {
            let page = logs(&agent, "level=warn");
            (!mentioning(&page, "frps-broken.toml").is_empty()).then_some(page)
        },
    );
    let warning = &mentioning(&page, "frps-broken.toml")[0];
    assert_eq!(warning["level"], "warn", "{warning}");
    assert!(
        warning["target"]
            .as_str()
            .unwrap()
            .starts_with("moonfrp_agent"),
        "{warning}"
    );
    assert!(warning["seq"].as_u64().unwrap() >= 1 && warning["time"].as_f64().unwrap() > 1.7e9);
    // Nothing below the level asked for.
    assert!(
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["level"] == "warn" || r["level"] == "error"),
        "{page}"
    );
    // Info records are there when asked for: the start message.
    assert!(!mentioning(&logs(&agent, "level=info"), "info").is_empty());
    let (status, _, body) = agent.get("/api/v1/logs?level=loud", None).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("level"), "{body}");

    follow_sees_a_new_warning(&agent, &frp);

    // The one-shot command prints the same warnings and ends.
    let out = Command::new(agent_bin())
        .args([
            "logs",
            "--level",
            "warn",
            "--listen",
            &agent.addr.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("frps-broken.toml") && text.contains("frpc-late.toml"),
        "{text}"
    );
}

/// `logs -f` prints the old warning, then a new one as it happens.
fn follow_sees_a_new_warning(agent: &Agent, frp: &std::path::Path) {
    let mut follower = Command::new(agent_bin())
        .args([
            "logs",
            "-f",
            "--level",
            "warn",
            "--listen",
            &agent.addr.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_line = |needle: &str, seen: &mut Vec<String>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "`logs -f` printed no line with {needle}: {seen:#?}\nagent log:\n{}",
            agent.log()
        );
    };
    let old = wait_line("frps-broken.toml", &mut seen);
    assert!(old.contains(" WARN "), "{old}");
    // The follower now waits at the agent; a second broken config appears while it waits.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(frp.join("frpc-late.toml"), "[common\nserver_port = x\n").unwrap();
    let live = wait_line("frpc-late.toml", &mut seen);
    assert!(live.contains(" WARN "), "{live}");
    assert!(
        follower.try_wait().unwrap().is_none(),
        "`logs -f` ended: {seen:#?}"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn the_ring_stays_within_its_bound_under_a_flood() {
    // Trace level on a busy agent: every scrape, every collection step logs.
    let agent = AgentCmd::new(&["--tunnel", "flood=9"])
        .log_level("trace")
        .interval("1s")
        .start();
    let first = logs(&agent, "limit=1")["last"].as_u64().unwrap();
    let (max_records, max_bytes) = {
        let p = logs(&agent, "limit=1");
        (
            p["max_records"].as_u64().unwrap(),
            p["max_bytes"].as_u64().unwrap(),
        )
    };
    // Requests that each log at debug or trace: unknown paths, bad queries, scrapes.
    let mut last = first;
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while last < first + 3 * max_records && std::time::Instant::now() < deadline {
        for _ in 0..50 {
            let _ = agent.get("/metrics", None);
            let _ = agent.get("/api/v1/logs?limit=1", None);
        }
        last = logs(&agent, "limit=1")["last"].as_u64().unwrap();
    }
    assert!(
        last >= first + 3 * max_records,
        "the flood logged only {} records",
        last - first
    );
    let page = logs(&agent, &format!("limit={max_records}"));
    let records = page["records"].as_array().unwrap();
    let bytes: usize = records
        .iter()
        .map(|r| {
            r["message"].as_str().unwrap().len()
                + r["target"].as_str().unwrap().len()
                + r["fields"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| k.len() + v.as_str().unwrap().len())
                    .sum::<usize>()
        })
        .sum();
    assert!(
        records.len() as u64 <= max_records,
        "{} records",
        records.len()
    );
    assert!(bytes as u64 <= max_bytes, "{bytes} bytes");
    // Reading from the start says how many were dropped.
    assert!(page["missed"].as_u64().unwrap() > 0, "{}", page["missed"]);
}

/// Under systemd (stderr is the journal's stream, `JOURNAL_STREAM` says so), records go to
/// journald's native socket with structured fields, not to stderr; the API still has them. A
/// stand-in journald listens in a private mount namespace (tmpfs over /run).
#[test]
fn under_systemd_records_go_to_journald_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = broken_frp_config(dir.path());
    let journal = dir.path().join("journal.jsonl");
    let listener = moonfrp_tests::workspace().join("tests/journald/listener.py");
    let setup = format!(
        "mount -t tmpfs tmpfs /run && {{ python3 {} /run/systemd/journal/socket {} >/dev/null & }} \
         && while ! [ -S /run/systemd/journal/socket ]; do sleep 0.05; done \
         && export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)",
        listener.display(),
        journal.display()
    );
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .log_level("info")
        .in_private_mounts(&setup)
        .start();
    let entries = poll(
        "the warning in the journal",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            let entries: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            entries
                .iter()
                .any(|e| e["PRIORITY"] == "4" && e.to_string().contains("frps-broken.toml"))
                .then_some(entries)
        },
    );
    let warning = entries
        .iter()
        .find(|e| e["PRIORITY"] == "4" && e.to_string().contains("frps-broken.toml"))
        .unwrap();
    assert_eq!(warning["SYSLOG_IDENTIFIER"], "moonfrp-agent", "{warning}");
    assert!(
        warning["TARGET"]
            .as_str()
            .unwrap()
            .starts_with("moonfrp_agent"),
        "{warning}"
    );
    assert!(
        warning["MESSAGE"]
            .as_str()
            .unwrap()
            .contains("frp source failed"),
        "{warning}"
    );
    assert!(
        warning["MOONFRP_ERROR"]
            .as_str()
            .unwrap()
            .contains("frps-broken.toml"),
        "{warning}"
    );
    assert!(warning["CODE_FILE"].as_str().is_some(), "{warning}");
    // The start message is there too, at info (6).
    assert!(entries.iter().any(|e| e["PRIORITY"] == "6"), "{entries:?}");
    // Not also on stderr (the journal would hold it twice).
    let stderr = agent.log();
    assert!(!stderr.contains("frps-broken.toml"), "{stderr}");
    // The API reads the same records from the ring.
    assert!(!mentioning(&logs(&agent, "level=warn"), "frps-broken.toml").is_empty());
}
