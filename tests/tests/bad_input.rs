//! Bad input that is not a flood: files that are not what they should be, inspections that
//! would take every kernel slot, values out of range, a reload that cannot apply everything,
//! and the command-line clients against answers and pipes that used to make them panic.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener},
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use moonfrp_tests::{
    Agent, AgentCmd, agent_bin, agent_command, free_port, hostile_http::HostileHttp, http_request,
};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// `moonfrp-agent <cmd> -c <config>`: (exit code, stderr + stdout).
fn with_config(cmd: &str, config: &Path) -> (i32, String) {
    let (code, out, err) = agent_command(&[cmd, "-c", config.to_str().unwrap()]);
    (code, format!("{err}{out}"))
}

#[test]
fn a_textfile_target_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.prom");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let link = dir.path().join("link.prom");
    std::os::unix::fs::symlink(dir.path().join("target.prom"), &link).unwrap();
    for target in [
        fifo.as_path(),
        Path::new("/dev/null"),
        link.as_path(),
        dir.path(),
    ] {
        for cmd in ["check", "run"] {
            let (code, out, err) = agent_command(&[
                cmd,
                "-t",
                "web=8080",
                "--textfile",
                target.to_str().unwrap(),
            ]);
            assert_eq!(code, 2, "{cmd} --textfile {}: {out}{err}", target.display());
            assert!(
                err.contains("is not a regular file") && err.contains("textfile"),
                "{err}"
            );
        }
    }
    // Nothing was replaced or created.
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!dir.path().join("target.prom").exists());
}

#[test]
fn a_planted_history_symlink_is_not_followed_and_an_open_data_dir_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let victim = dir.path().join("victim");
    std::os::unix::fs::symlink(&victim, data.join("history.db")).unwrap();
    let agent = AgentCmd::new(&["-t", &format!("web={}", free_port())])
        .data_dir(&data)
        .start();
    let m = agent.wait_snapshots(1);
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(0.0));
    assert!(
        !victim.exists(),
        "the agent wrote through the planted symlink"
    );
    let log = agent.log();
    assert!(log.contains("is a symbolic link"), "{log}");
    assert!(log.contains("mode is 0700 now"), "{log}");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(agent);
    // Once the link is gone, history works in the (now private) directory.
    std::fs::remove_file(data.join("history.db")).unwrap();
    let agent = AgentCmd::new(&["-t", &format!("web={}", free_port())])
        .data_dir(&data)
        .start();
    let m = agent.wait_snapshots(1);
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(1.0));
}

#[test]
fn inspections_are_capped_and_configured_tunnels_always_keep_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    let tunnels = |n: u16| -> String {
        (0..n).fold(String::new(), |mut s, i| {
            let _ = write!(s, "[[tunnels]]\nname = \"t{i}\"\nport = {}\n", 31_000 + i);
            s
        })
    };
    write(
        &config,
        &format!(
            "[kernel]\nslots = 24\n[frp]\nenabled = false\n{}",
            tunnels(3)
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let post = |port: u32| {
        http_request(
            agent.addr,
            "POST",
            &format!("/api/v1/inspect?port={port}&ttl=10m"),
            None,
        )
        .unwrap()
    };
    // 5,000 requests for 5,000 ports: 16 watched, the others refused with 409.
    let (mut ok, mut conflict) = (0, 0);
    let mut message = String::new();
    for i in 0..5000 {
        let (status, _, body) = post(40_000 + i);
        match status {
            200 => ok += 1,
            409 => {
                conflict += 1;
                message = body;
            }
            other => panic!("POST inspect: {other} {body}"),
        }
    }
    assert_eq!((ok, conflict), (16, 4984));
    assert!(
        message.contains("16 inspections are running already"),
        "{message}"
    );
    let m = agent.wait_snapshots(1);
    assert_eq!(m.get("moonfrp_agent_watch_slots_used", &[]), Some(19.0));
    assert!(m.limit("inspections") >= 4984.0);

    // A reload adds six tunnels: 9 configured + 16 inspections > 24 slots. The configured ones
    // all get theirs; an inspection gives its slot up.
    write(
        &config,
        &format!(
            "[kernel]\nslots = 24\n[frp]\nenabled = false\n{}",
            tunnels(9)
        ),
    );
    agent.signal(libc::SIGHUP);
    let m = agent.wait_for("the new tunnels", |m| {
        m.get("moonfrp_tunnel_up", &[("tunnel", "t8")]).is_some()
    });
    for i in 0..9 {
        assert!(
            m.get("moonfrp_tunnel_info", &[("tunnel", &format!("t{i}"))])
                .is_some(),
            "t{i} lost its slot"
        );
    }
    assert_eq!(
        m.get("moonfrp_agent_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(m.get("moonfrp_agent_watch_slots_used", &[]), Some(24.0));
    assert_eq!(m.get("moonfrp_agent_tunnels_unwatched", &[]), Some(0.0));
    // Every slot is taken now: a new inspection is refused, saying why.
    let (status, _, body) = post(60_000);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no free kernel slot"), "{body}");
    // Wrong requests get the right answers.
    let (status, _, body) = http_request(
        agent.addr,
        "POST",
        "/api/v1/inspect?port=60001&ttl=0s",
        None,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _, body) =
        http_request(agent.addr, "DELETE", "/api/v1/inspect?port=60002", None).unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, _, body) =
        http_request(agent.addr, "DELETE", "/api/v1/inspect?port=40001", None).unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Config texts with a value out of range, each with what its error must name.
fn out_of_range(a_file: &Path) -> Vec<(String, &'static str)> {
    let rule = |extra: &str| {
        format!(
            "[[alerts.rules]]\nname = \"R\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"<\"\n{extra}\n"
        )
    };
    let webhook = |name: &str, extra: &str| {
        format!(
            "[[alerts.channels]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n{extra}\n"
        )
    };
    vec![
        ("[kernel]\npeers = 10000000\n".into(), "kernel.peers"),
        ("[kernel]\npeers = 4000000000\n".into(), "kernel.peers"),
        ("[kernel]\ntracked_connections = 0\n".into(), "kernel.tracked_connections"),
        ("[kernel]\nbpf_stats_window = \"10ms\"\n".into(), "kernel.bpf_stats_window"),
        ("[kernel]\nbpf_stats = \"sometimes\"\n".into(), "not a bpf_stats mode"),
        ("interval = \"99999999999y\"\n".into(), "interval"),
        ("interval = \"2h\"\n".into(), "interval"),
        (rule("warning = nan"), "finite"),
        (rule("critical = inf"), "finite"),
        (rule("critical = 1\nannotations = { summary = \"{{tunnel is down\" }"), "never closed"),
        (rule("critical = 1\nannotations = { summary = \"{{ 1+1 }}\" }"), "not a placeholder"),
        (rule("critical = 1\nfor = \"400d\""), "`for`"),
        (webhook("a", "") + &webhook("a", ""), "another channel is named `a`"),
        (webhook("a", "timeout = \"0s\""), "`timeout`"),
        (webhook("a", "retries = 1000"), "`retries`"),
        (
            "[[alerts.channels]]\nname = \"x\"\ntype = \"exec\"\ncommand = [\"/nonexistent/hook\"]\n".into(),
            "command[0]",
        ),
        (
            "[[alerts.channels]]\nname = \"x\"\ntype = \"exec\"\ncommand = [\"hook.sh\"]\n".into(),
            "absolute path",
        ),
        (format!("data_dir = \"{}\"\n", a_file.display()), "data_dir"),
        ("[frp]\napi_timeout = \"0s\"\n".into(), "frp.api_timeout"),
        ("[frp]\ngrace = \"30d\"\n".into(), "frp.grace"),
        ("[frp]\nmax_proxies = 0\n".into(), "frp.max_proxies"),
        ("[history]\nmax_points = 100000000\n".into(), "history.max_points"),
        ("[history]\nretention = \"5y\"\n".into(), "retention"),
        ("[server]\nmax_requests = 0\n".into(), "server.max_requests"),
        ("[server]\nmax_connections = 1000000\n".into(), "server.max_connections"),
        ("[alerts]\nrepeat_interval = \"0s\"\n".into(), "alerts.repeat_interval"),
        ("[metrics]\nduration_buckets = [\"1s\", \"1.01s\"]\n".into(), "metrics.duration_buckets"),
        ("[metrics]\nduration_buckets = [\"3d\"]\n".into(), "metrics.duration_buckets"),
        ("[collectors]\nunits = [\"frps[\"]\n".into(), "collectors.units[0]"),
        ("[collectors]\nmax_containers = 100000\n".into(), "collectors.max_containers"),
        (smtp("tls = \"ssl\""), "`tls`"),
        (smtp("to = []"), "`to`"),
        (smtp("to = \"not-an-address\""), "`to`"),
        (smtp("username = \"u\"\npassword_env = \"MOONFRP_NO_SUCH_VARIABLE\""), "`password_env`"),
        (smtp("username = \"u\""), "`username`"),
        (smtp("subject = \"{{status\""), "never closed"),
        (
            smtp(&format!("tls_ca_file = \"{}\"", a_file.display())),
            "`tls_ca_file`",
        ),
        (webhook("a", "host = \"smtp.example.com\""), "for smtp channels"),
    ]
}

/// An smtp channel with these keys besides host, from and (unless given) to.
fn smtp(extra: &str) -> String {
    let to = if extra.starts_with("to =") {
        ""
    } else {
        "to = \"ops@example.com\"\n"
    };
    format!(
        "[[alerts.channels]]\nname = \"mail\"\ntype = \"smtp\"\nhost = \"mail.example.com\"\nfrom = \"alerts@example.com\"\n{to}{extra}\n"
    )
}

#[test]
fn values_out_of_range_are_refused_by_check_and_run_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("a-file");
    write(&a_file, "");
    let cases = out_of_range(&a_file);
    let config = dir.path().join("moonfrp.toml");
    for (text, needle) in &cases {
        write(&config, text);
        for cmd in ["check", "run"] {
            let (code, out) = with_config(cmd, &config);
            assert_eq!(code, 2, "{cmd} with {text:?}: {out}");
            assert!(
                out.contains(needle),
                "{cmd} with {text:?}: lacks `{needle}`:\n{out}"
            );
        }
    }

    // A config file that is a device, or too large, is refused before it is read whole.
    let started = Instant::now();
    let (code, out, err) = agent_command(&["check", "-c", "/dev/zero"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not a regular file"), "{err}");
    write(&config, &format!("# {}\n", "x".repeat(2 << 20)));
    let (code, out) = with_config("check", &config);
    assert_eq!(code, 2);
    assert!(out.contains("larger than"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A huge value is named, not echoed whole.
    write(&config, &format!("listen = \"{}\"\n", "a".repeat(900_000)));
    let (code, out) = with_config("run", &config);
    assert_eq!(code, 2);
    assert!(
        out.contains("listen") && out.len() < 2000,
        "{} bytes",
        out.len()
    );
    // A parse error never quotes a secret: not the agent's (a webhook URL with its token)...
    write(
        &config,
        "[[alerts.channels]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T0KEN-SECRET\n",
    );
    let (code, out) = with_config("check", &config);
    assert_eq!(code, 2);
    assert!(
        out.contains("line 4") && !out.contains("T0KEN-SECRET"),
        "{out}"
    );

    // ...nor an frp config's password; and `check` fails on frp configs that do not parse.
    let frp = dir.path().join("frp");
    std::fs::create_dir(&frp).unwrap();
    write(
        &frp.join("frps.toml"),
        "bindPort = 7000\nwebServer.port = 7500\nwebServer.password = \"hunter2-secret\n",
    );
    write(
        &frp.join("frpc.ini"),
        "[common]\nserver_addr = 1.2.3.4\nadmin_pwd hunter3-secret\n",
    );
    write(
        &config,
        &format!("[frp]\nconfigs = [\"{}/*\"]\n", frp.display()),
    );
    let (code, out) = with_config("check", &config);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("frps.toml") && out.contains("frpc.ini"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("hunter3"),
        "{out}"
    );
}

#[test]
fn a_reload_that_changes_a_restart_only_key_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    write(
        &config,
        "[frp]\nenabled = false\n[[tunnels]]\nname = \"a\"\nport = 31100\n",
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let m = agent.metrics();
    assert_eq!(
        m.get("moonfrp_agent_config_restart_required", &[]),
        Some(0.0)
    );
    // (The harness gives `--listen` as a flag, which wins over the file: `kernel` stands for
    // every key that needs a restart.)
    write(
        &config,
        "[kernel]\npeers = 1024\n[frp]\nenabled = false\n[[tunnels]]\nname = \"a\"\nport = 31100\n[[tunnels]]\nname = \"b\"\nport = 31101\n",
    );
    agent.signal(libc::SIGHUP);
    // The live part applies; the kernel sizes stay until a restart, and the agent says so.
    let m = agent.wait_for("tunnel b", |m| {
        m.get("moonfrp_tunnel_up", &[("tunnel", "b")]).is_some()
    });
    assert_eq!(
        m.get("moonfrp_agent_config_restart_required", &[]),
        Some(1.0)
    );
    assert_eq!(
        m.get("moonfrp_agent_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        m.get("moonfrp_agent_bpf_map_max_entries", &[("map", "PEERS")]),
        Some(16384.0),
        "the running table keeps its size"
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("only applied at the next restart") && l.contains("kernel")),
        "{log}"
    );
}

#[test]
fn the_clients_survive_absurd_answers_closed_pipes_and_hung_agents() {
    let agent = Agent::start(&["-t", &format!("web={}", free_port())]);
    agent.wait_snapshots(1);

    // `status` with times no calendar can write: shown as numbers, no panic.
    let (_, _, body) = agent.get("/api/v1/status", None).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["time"] = serde_json::json!(1e12);
    v["data"]["version"] = serde_json::json!("1.0\u{1b}]0;owned\u{7}");
    let fake = HostileHttp::start();
    fake.json("/api/v1/status", v.to_string());
    let (code, out, err) = agent_command(&["status", "--listen", &fake.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("@1000000000000"), "{out}");
    assert!(!out.contains(['\u{1b}', '\u{7}']), "{out:?}");

    // `history … | head -1`: the pipe closes, the command ends quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' history --listen {} --metric moonfrp_agent_snapshots_total --since 1h | head -1",
            agent_bin().display(),
            agent.addr
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && err.trim().is_empty(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // An agent that accepts and never answers: an error naming it, and no other database read.
    let hung = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let started = Instant::now();
    let (code, out, err) = agent_command(&[
        "history",
        "--listen",
        &hung_addr,
        "--metric",
        "moonfrp_agent_snapshots_total",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("gave no whole answer"), "{err}");
    assert!(!err.contains("reading"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(hung);
    // Nobody at a given address, and no data directory given: not some default database.
    let (code, _, err) = agent_command(&[
        "history",
        "--listen",
        &hung_addr,
        "--metric",
        "moonfrp_agent_snapshots_total",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    // With its data directory, the file is read, and the command says which.
    let (code, out, err) = agent_command(&[
        "history",
        "--listen",
        &hung_addr,
        "--data-dir",
        agent.data_dir.to_str().unwrap(),
        "--metric",
        "moonfrp_agent_snapshots_total",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&agent.data_dir.join("history.db").display().to_string()),
        "{err}"
    );
    assert!(out.contains("moonfrp_agent_snapshots_total"), "{out}");
}
