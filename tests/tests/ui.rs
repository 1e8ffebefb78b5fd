//! The web page in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/ui/pages.mjs`, `tests/ui/auth.mjs`), against a real agent with real traffic.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use moonfrp_tests::{Agent, free_port, http_get, workspace};

#[test]
fn the_page_is_served_with_a_policy_that_keeps_it_home() {
    let agent = Agent::start(&["-t", &format!("web={}", free_port())]);
    for path in [
        "/",
        "/ui/",
        "/ui/app.js",
        "/ui/chart.js",
        "/ui/tunnel.js",
        "/ui/style.css",
    ] {
        let (head, body) = moonfrp_tests::http_get_raw(agent.addr, path, &[]).unwrap();
        assert!(head.starts_with("http/1.0 200"), "{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'")
                && head.contains("connect-src 'self'"),
            "{path}: {head}"
        );
        assert!(!body.is_empty());
    }
    let (status, _, _) = http_get(agent.addr, "/ui/nothing.js", None).unwrap();
    assert_eq!(status, 404);
}

/// Every page in Chromium against a real agent with real traffic (what `tests/ui/pages.mjs`
/// checks is listed at its top): exact payload bytes in the tunnel row, the tunnel going down
/// live, the bandwidth chart's points equal to the history API's, zoom asking the API for the
/// new range, CSV equal to the API's, PNG export, the alert log and the host charts; screenshots
/// of each page at two sizes.
#[test]
fn every_page_in_chromium_shows_what_the_api_says() {
    // A listener on the tunnel's port (the tunnel is up while it is there) takes 54,321 bytes.
    let (listener, port) = moonfrp_tests::tcp_listener();
    // A second tunnel named like markup, with the characters a URL fragment cares about (no `=`
    // or `/`: those end a name on the command line).
    let hostile = "<img src onerror><b>#?%&amp;\"' x";
    let agent = Agent::start(&[
        "-t",
        &format!("web={port}"),
        "-t",
        &format!("{hostile}={}", free_port()),
    ]);
    let mut client = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).unwrap();
    client.write_all(&vec![1u8; 54_321]).unwrap();
    drop(client);
    let (mut c, _) = listener.accept().unwrap();
    assert_eq!(std::io::copy(&mut c, &mut std::io::sink()).unwrap(), 54_321);

    let shots = workspace().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = Command::new("node")
        .arg(workspace().join("tests/ui/pages.mjs"))
        .arg(format!("http://{}/", agent.addr))
        .args(["web", "54321"])
        .arg(&shots)
        .arg(hostile)
        .current_dir(workspace().join("tests/ui"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (the test setup installs playwright-core in tests/ui)");
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let first = out.next().and_then(Result::ok).unwrap_or_default();
    if first != "ready" {
        let status = node.wait().unwrap();
        let err = std::io::read_to_string(node.stderr.take().unwrap()).unwrap_or_default();
        panic!(
            "the page check failed ({status}): {first}\n{err}\n{}",
            agent.log()
        );
    }
    // The tunnel goes down: nothing listens on its port any more, and a connection is refused
    // (an alert for the log).
    drop(listener);
    let refused = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port));
    assert!(refused.is_err(), "nothing listens on {port}");
    writeln!(node.stdin.take().unwrap(), "closed").unwrap();
    let result = out.next().and_then(Result::ok).unwrap_or_default();
    let status = node.wait().unwrap();
    let err = std::io::read_to_string(node.stderr.take().unwrap()).unwrap_or_default();
    assert!(status.success(), "{result}\n{err}\n{}", agent.log());
    let v: serde_json::Value = serde_json::from_str(&result).unwrap();
    eprintln!("{v:#}");
    // Within one interval (1 s) of the agent noticing, plus the page's own refresh.
    assert!(v["down_after_ms"].as_f64().unwrap() < 3_000.0, "{result}");
    assert!(v["reason"].as_str().unwrap().contains("listen"), "{result}");
    assert!(v["points"].as_u64().unwrap() > 1, "{result}");
    assert!(v["cpu_modes"].as_array().unwrap().len() > 1, "{result}");
    for page in ["overview", "tunnel", "alerts", "host"] {
        for size in ["1280x800", "390x844"] {
            let f = format!("{page}-{size}.png");
            assert!(
                std::fs::metadata(shots.join(&f)).unwrap().len() > 5_000,
                "{f}"
            );
        }
    }
}

#[test]
fn behind_basic_auth_the_page_asks_and_works_after() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    let hash = bcrypt::hash("page-pw", 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  ops: {hash}\n")).unwrap();
    let agent = moonfrp_tests::AgentCmd::new(&[
        "-t",
        &format!("web={}", free_port()),
        "--web.config.file",
        web.to_str().unwrap(),
    ])
    .spawn();
    moonfrp_tests::poll("the agent", std::time::Duration::from_secs(30), || {
        let (status, ..) = http_get(agent.addr, "/healthz", None).ok()?;
        (status == 401).then_some(())
    });
    let (ok, out) = moonfrp_tests::outcome(
        Command::new("node")
            .arg(workspace().join("tests/ui/auth.mjs"))
            .arg(format!("http://{}/", agent.addr))
            .args(["ops", "page-pw"])
            .current_dir(workspace().join("tests/ui")),
    );
    assert!(ok, "{out}\n{}", agent.log());
    assert!(out.contains("\"rows\":1"), "{out}");
}
