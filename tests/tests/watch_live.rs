//! The watch table changes at run time without reloading or detaching any program.
use std::fmt::Write as _;

use moonfrp_tests::{Agent, send_tcp};

fn config(tunnels: &[(&str, u16)]) -> String {
    let mut s = String::from("interval = \"1s\"\n");
    for (name, port) in tunnels {
        let _ = write!(s, "[[tunnels]]\nname = \"{name}\"\nport = {port}\n");
    }
    s
}

#[test]
fn ports_added_and_removed_at_run_time() {
    let (a, b) = (moonfrp_tests::free_port(), moonfrp_tests::free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moonfrp.toml");
    std::fs::write(&path, config(&[("a", a)])).unwrap();
    let agent = Agent::start(&["--config", path.to_str().unwrap()]);
    let progs = agent.prog_ids();
    let links = agent.link_ids();
    assert_eq!(progs.len(), 6, "expected 6 programs, got {progs:?}");
    assert!(!links.is_empty(), "no BPF links held");

    // Add b: picked up on SIGHUP, counted within one interval.
    std::fs::write(&path, config(&[("a", a), ("b", b)])).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for("tunnel b to appear", |m| {
        m.get("moonfrp_tunnel_info", &[("tunnel", "b")]).is_some()
    });
    send_tcp(b, 10_000);
    send_tcp(a, 1_000);
    let m = agent.wait_snapshots(2);
    assert_eq!(
        m.tunnel("b", "moonfrp_tunnel_receive_payload_bytes_total"),
        10_000.0
    );
    assert_eq!(
        m.tunnel("a", "moonfrp_tunnel_receive_payload_bytes_total"),
        1_000.0
    );
    assert_eq!(
        m.get("moonfrp_agent_config_last_reload_successful", &[]),
        Some(1.0)
    );

    // Remove b by editing the file alone (no signal): the agent notices the change itself.
    std::fs::write(&path, config(&[("a", a)])).unwrap();
    let m = agent.wait_for("tunnel b to disappear", |m| {
        m.with_label("tunnel", "b").is_empty()
    });
    assert_eq!(
        m.tunnel("a", "moonfrp_tunnel_receive_payload_bytes_total"),
        1_000.0
    );
    send_tcp(b, 5_000);
    let m = agent.wait_snapshots(2);
    assert!(
        m.with_label("tunnel", "b").is_empty(),
        "b's series came back"
    );
    assert!(m.with_label("port", &b.to_string()).is_empty());

    // A broken edit keeps the previous tunnels and says so.
    std::fs::write(&path, "[[tunnels]]\nname = \"a\"\nport = 99999\n").unwrap();
    agent.signal(libc::SIGHUP);
    let m = agent.wait_for("the reload failure", |m| {
        m.get("moonfrp_agent_config_last_reload_successful", &[]) == Some(0.0)
    });
    assert!(m.get("moonfrp_tunnel_info", &[("tunnel", "a")]).is_some());

    // Same programs and links all along: nothing was reloaded or detached.
    assert_eq!(agent.prog_ids(), progs);
    assert_eq!(agent.link_ids(), links);
}
