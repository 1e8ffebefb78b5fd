//! The HTTP endpoints as a scraper sees them, checked with the real promtool.
use std::{
    io::Write,
    net::{Ipv4Addr, TcpListener, TcpStream},
};

use moonfrp_tests::{Agent, Metrics, free_port, promtool_check};

#[test]
fn metrics_pass_promtool_and_scrapes_are_stable() {
    let (tcp, udp) = (free_port(), free_port());
    let agent = Agent::start(&["-t", &format!("web={tcp}"), "-t", &format!("dns={udp}/udp")]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, tcp)).unwrap();
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
