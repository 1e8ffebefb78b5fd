//! What an operator sees when something is wrong: bad configuration, missing privileges, a probe
//! that cannot attach; and that a clean stop leaves nothing attached.
use std::{
    net::{Ipv4Addr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output},
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, agent_bin, bpf_object_exists, free_port};

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin()).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moonfrp.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[test]
fn bad_configuration_is_named_and_exits_2() {
    let (_d1, unknown) = write_config("listen = \"127.0.0.1:9477\"\nintreval = \"5s\"\n");
    let (_d2, range) = write_config("[[tunnels]]\nname = \"ssh\"\nport = 70000\n");
    let (_d3, dup) = write_config("[[tunnels]]\nname = \"ssh\"\nport = 6000\n");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["run", "--config", &unknown],
            vec![unknown.as_str(), "intreval", "line 2"],
        ),
        (
            vec!["run", "--config", &range],
            vec![range.as_str(), "tunnels[0]", "70000", "1..=65535"],
        ),
        (
            vec!["run", "--tunnel", "web=0"],
            vec!["--tunnel web=0", "out of range"],
        ),
        (
            vec!["run", "--tunnel", "web=65536/tcp"],
            vec!["--tunnel web=65536/tcp", "out of range"],
        ),
        (
            vec!["run", "--config", &dup, "--tunnel", "ssh=7000"],
            vec![
                "duplicate tunnel name `ssh`",
                "--tunnel ssh=7000",
                dup.as_str(),
            ],
        ),
        (
            vec!["run", "--config", "/nonexistent/moonfrp.toml"],
            vec!["/nonexistent/moonfrp.toml", "cannot read config file"],
        ),
        (
            vec!["run", "--config", "/etc"],
            vec!["cannot read config file /etc"],
        ),
        (
            vec!["run", "--interval", "100ms"],
            vec!["--interval", "out of range; use 1s..=1h"],
        ),
    ];
    for (args, needles) in cases {
        let out = agent(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: message lacks `{n}`:\n{err}");
        }
    }
    // The same configuration is accepted once fixed, without privileges, by `check`.
    let out = agent(&["check", "--tunnel", "web=8080", "--tunnel", "dns=5353/udp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dns=5353/udp"));
}

/// Runs `moonfrp-agent run` under `setpriv <opts>`; expects exit code 1 and returns stderr.
fn run_under_setpriv(opts: &[&str]) -> String {
    // A copy any user can execute, wherever the checkout lives (it may be under a 0700 home).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("moonfrp-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(opts)
        .arg("--")
        .arg(&bin)
        .args(["run", "-t", "web=8080"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "setpriv {opts:?}: {err}");
    err
}

#[test]
fn missing_capabilities_are_named_with_the_fix() {
    // Root without CAP_BPF (and without CAP_SYS_ADMIN, which would stand in for it).
    let err = run_under_setpriv(&["--bounding-set=-bpf,-sys_admin", "--inh-caps=-all"]);
    assert!(err.contains("missing CAP_BPF"), "{err}");
    assert!(
        !err.contains("CAP_PERFMON ("),
        "only CAP_BPF is missing: {err}"
    );
    assert!(
        err.contains("setcap cap_bpf,cap_perfmon,cap_net_admin+ep"),
        "{err}"
    );

    // An unprivileged user lacks all three.
    let err = run_under_setpriv(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(err.contains(cap), "{cap} not named: {err}");
    }
}

#[test]
fn a_probe_that_cannot_attach_is_skipped_and_the_rest_work() {
    // Hide one tracepoint's format file in a private mount namespace: its probe cannot be set
    // up, the other five must keep counting.
    let port = free_port();
    // (A fresh VM may not have tracefs mounted yet: mount it in the namespace first.)
    let hide = "T=/sys/kernel/tracing; mountpoint -q $T || mount -t tracefs tracefs $T; \
                mount -t tmpfs none $T/events/tcp/tcp_retransmit_skb";
    let agent = Agent::spawn_in_private_mounts(hide, &["-t", &format!("web={port}")]);
    let m = agent.wait_for("the first snapshot", |m| {
        m.get("moonfrp_agent_snapshots_total", &[]).is_some()
    });
    assert_eq!(
        m.get(
            "moonfrp_agent_probe_attached",
            &[("probe", "tcp_retransmit")]
        ),
        Some(0.0)
    );
    m.assert_each(
        "moonfrp_agent_probe_attached",
        "probe",
        &moonfrp_tests::PROBES
            .into_iter()
            .filter(|p| *p != "tcp_retransmit")
            .collect::<Vec<_>>(),
        1.0,
    );
    assert!(
        agent.log().contains("tcp/tcp_retransmit_skb"),
        "the log does not say why:\n{}",
        agent.log()
    );
    assert_eq!(agent.get("/readyz", None).unwrap().0, 200);

    let l = moonfrp_tests::bind_tcp(port);
    let c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let _s = l.accept().unwrap();
    let m = agent.wait_snapshots(2);
    assert_eq!(m.tunnel("web", "moonfrp_tunnel_connections_active"), 1.0);
    assert!(m.tunnel("web", "moonfrp_tunnel_receive_packets_total") > 0.0);
    drop(c);
}

#[test]
fn sigterm_detaches_everything() {
    let port = free_port();
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    let (progs, links) = (agent.prog_ids(), agent.link_ids());
    assert_eq!(progs.len(), 6);
    assert!(links.len() >= 6, "links: {links:?}");
    assert!(progs.iter().all(|id| bpf_object_exists(*id, false)));
    let status = agent.stop();
    assert!(status.success(), "exit status {status}");
    // The kernel frees programs after the last reference goes (RCU): allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = progs
            .iter()
            .filter(|id| bpf_object_exists(**id, false))
            .collect();
        let left_links: Vec<_> = links
            .iter()
            .filter(|id| bpf_object_exists(**id, true))
            .collect();
        if left.is_empty() && left_links.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after exit: programs {left:?}, links {left_links:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
