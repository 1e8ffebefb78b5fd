//! The HTTP endpoints as a scraper sees them, checked with the real promtool.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write},
    net::{Ipv4Addr, TcpStream},
};

use moonfrp_tests::{Agent, AgentCmd, Metrics, free_port, http_get_raw, poll, promtool_check};

#[test]
fn metrics_pass_promtool_and_scrapes_are_stable() {
    let (tcp, udp) = (free_port(), free_port());
    let agent = Agent::start(&["-t", &format!("web={tcp}"), "-t", &format!("dns={udp}/udp")]);
    let listener = moonfrp_tests::bind_tcp(tcp);
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, tcp)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    drop((client, server));
    agent.wait_for("a closed connection", |m| {
        m.get(
            "moonfrp_tunnel_connections_closed_total",
            &[("tunnel", "web")],
        ) == Some(1.0)
    });

    let (status, content_type, text) = agent.get("/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let (ok, findings) = promtool_check(&text);
    assert!(
        ok && findings.trim().is_empty(),
        "promtool findings:\n{findings}\n{text}"
    );
    for series in [
        "moonfrp_tunnel_receive_bytes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "moonfrp_agent_snapshot_duration_seconds",
    ] {
        assert!(text.contains(series), "{series} missing");
    }

    // No traffic between two snapshots: every tunnel series is the same.
    let tunnel_lines = |m: &Metrics| -> Vec<String> {
        m.text
            .lines()
            .filter(|l| l.starts_with("moonfrp_tunnel"))
            .map(str::to_owned)
            .collect()
    };
    let first = agent.wait_snapshots(1);
    let second = agent.wait_snapshots(1);
    assert_eq!(tunnel_lines(&first), tunnel_lines(&second));
    // Two scrapes of one snapshot are byte-for-byte identical (scraping changes nothing).
    let (a, b) = loop {
        let a = agent.get("/metrics", None).unwrap().2;
        let b = agent.get("/metrics", None).unwrap().2;
        let seq = |t: &str| Metrics::parse(t).get("moonfrp_agent_snapshots_total", &[]);
        if seq(&a) == seq(&b) {
            break (a, b);
        }
    };
    assert_eq!(a, b);
}

#[test]
fn openmetrics_on_request_and_health_endpoints() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let accept =
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, content_type, body) = agent.get("/metrics", Some(accept)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains(
        "# TYPE moonfrp_tunnel_receive_bytes counter\n# UNIT moonfrp_tunnel_receive_bytes bytes\n"
    ));

    assert_eq!(agent.get("/healthz", None).unwrap().0, 200);
    let (status, _, body) = agent.get("/readyz", None).unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(agent.get("/nope", None).unwrap().0, 404);
    let m = agent.metrics();
    m.assert_each(
        "moonfrp_agent_probe_attached",
        "probe",
        &moonfrp_tests::PROBES,
        1.0,
    );
}

/// `GET /metrics` with `Accept-Encoding: gzip`: the headers and the raw body.
fn scrape_gzip(agent: &Agent) -> (String, Vec<u8>) {
    http_get_raw(agent.addr, "/metrics", &["Accept-Encoding: gzip"]).unwrap()
}

#[test]
fn gzip_scrapes_decode_to_the_same_bytes_of_one_snapshot() {
    // One snapshot at start, the next a minute later: every scrape below reads the first.
    let agent = AgentCmd::new(&["-t", &format!("web={}", free_port())])
        .interval("60s")
        .start();
    let (head, gz) = scrape_gzip(&agent);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let (_, _, plain) = agent.get("/metrics", None).unwrap();
    assert_eq!(text, plain, "gzip decodes to the plain scrape");
    assert_eq!(
        scrape_gzip(&agent).1,
        gz,
        "two gzip scrapes, identical bytes"
    );
    assert_eq!(agent.get("/metrics", None).unwrap().2, plain);
    assert!(
        gz.len() * 4 < plain.len(),
        "{} → {} bytes",
        plain.len(),
        gz.len()
    );
}

/// `gzip -dc`: the system's decoder, which checks the trailer's CRC and length.
fn gunzip_with_the_gzip_tool(gz: &[u8]) -> String {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip (Debian package gzip)");
    child.stdin.take().unwrap().write_all(gz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn gzip_scrapes_of_successive_snapshots_take_the_unchanged_runs_and_decode_to_their_text() {
    // 600 tunnels named so that their labels need escaping (several runs of each family), a
    // snapshot a second, traffic on one tunnel between snapshots: from the second gzip
    // rendering on, most of a scrape is the previous rendering's compressed runs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    let ports: Vec<u16> = (0..600).map(|_| free_port()).collect();
    let mut text = String::from("[frp]\nenabled = false\n");
    for (i, port) in ports.iter().enumerate() {
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!("[[tunnels]]\nname = 't\"{i}\\x'\nport = {port}\n"),
        );
    }
    std::fs::write(&config, text).unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .interval("1s")
        .start();
    let listener = moonfrp_tests::bind_tcp(ports[0]);
    let om = "Accept: application/openmetrics-text;version=1.0.0";
    let snapshot = |text: &str| {
        Metrics::parse(text)
            .get("moonfrp_agent_snapshots_total", &[])
            .expect("the snapshot count")
    };
    let mut checked = 0;
    while checked < 5 {
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"moved").unwrap();
        drop((client, server));
        agent.wait_snapshots(1);
        let (head, gz) =
            http_get_raw(agent.addr, "/metrics", &[om, "Accept-Encoding: gzip"]).unwrap();
        assert!(head.contains("content-encoding: gzip"), "{head}");
        let (_, plain) = http_get_raw(agent.addr, "/metrics", &[om]).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        let decoded = gunzip_with_the_gzip_tool(&gz);
        if snapshot(&decoded) != snapshot(&plain) {
            continue; // a snapshot between the two scrapes
        }
        assert_eq!(decoded, plain, "the gzip scrape decodes to the plain one");
        assert!(plain.contains("tunnel=\"t\\\"7\\\\x\""), "escaped names");
        checked += 1;
    }
    // The agent says what each rendering took: the later ones took most of their runs.
    let log = agent.log();
    let taken: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("gzip rendering"))
        .filter_map(|l| {
            let v = l.split("runs_taken=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();
    assert!(taken.len() >= 5, "one line a rendering: {taken:?}\n{log}");
    assert!(
        taken.iter().filter(|&&n| n > 20).count() >= 3,
        "runs taken from the previous rendering: {taken:?}"
    );
}

/// (sample name, labels) → value, for every sample of an exposition history keeps (no
/// histogram buckets, no NaN).
fn samples_of(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    Metrics::parse(text)
        .samples
        .into_iter()
        .filter(|s| !s.name.ends_with("_bucket") && !s.value.is_nan())
        .map(|s| ((s.name, s.labels.into_iter().collect()), s.value))
        .collect()
}

#[test]
fn history_stores_exactly_the_series_metrics_shows_and_alerts_see_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(
        &config,
        format!(
            "[frp]\nenabled = false\n[[tunnels]]\nname = \"web\"\nport = {}\n[[tunnels]]\nname = \"dns\"\nport = {}\nproto = \"udp\"\n\
             [[alerts.rules]]\nname = \"TunnelCount\"\nmetric = \"moonfrp_tunnels\"\nop = \">=\"\nwarning = 0\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .interval("60s")
        .start();
    let (_, _, text) = agent.get("/metrics", None).unwrap();
    let exposed = samples_of(&text);
    let taken = exposed[&(
        "moonfrp_agent_last_snapshot_timestamp_seconds".to_owned(),
        BTreeMap::new(),
    )];
    // The snapshot in history, once the writer has stored it, read back through the history
    // API (the file keeps samples in compressed blocks): every stored series of every name.
    let names: std::collections::BTreeSet<&String> = exposed.keys().map(|k| &k.0).collect();
    let at = |stored: &mut BTreeMap<(String, BTreeMap<String, String>), f64>, name: &str| {
        let (status, _, body) = agent
            .get(
                &format!(
                    "/api/v1/history?metric={name}&from={}&to={}",
                    taken - 0.001,
                    taken + 0.001
                ),
                None,
            )
            .unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for s in v["data"]["series"].as_array().unwrap() {
            let labels: BTreeMap<String, String> =
                serde_json::from_value(s["labels"].clone()).unwrap();
            for p in s["samples"].as_array().unwrap() {
                stored.insert((name.to_owned(), labels.clone()), p[1].as_f64().unwrap());
            }
        }
    };
    poll("the snapshot in history", moonfrp_tests::TIMEOUT, || {
        let mut stored = BTreeMap::new();
        at(&mut stored, "moonfrp_agent_last_snapshot_timestamp_seconds");
        (!stored.is_empty()).then_some(())
    });
    let mut stored = BTreeMap::new();
    for name in &names {
        at(&mut stored, name);
    }
    let keys = |m: &BTreeMap<(String, BTreeMap<String, String>), f64>| -> Vec<(String, BTreeMap<String, String>)> {
        m.keys().cloned().collect()
    };
    assert_eq!(
        keys(&stored),
        keys(&exposed),
        "the same series, names and labels"
    );
    let differ: Vec<_> = stored
        .iter()
        .filter(|(k, v)| exposed.get(*k).is_none_or(|e| e.to_bits() != v.to_bits()))
        .map(|(k, v)| (k, v, exposed.get(k)))
        .collect();
    assert!(differ.is_empty(), "stored, exposed: {differ:?}");
    // The alert rule read the same value as /metrics shows.
    let (_, _, alerts) = agent.get("/api/v1/alerts", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    let alert = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alertname"] == "TunnelCount")
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert_eq!(
        alert["value"].as_f64(),
        Some(exposed[&("moonfrp_tunnels".to_owned(), BTreeMap::new())])
    );
}
