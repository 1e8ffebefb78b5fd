//! `status` and `top` against the real agent: `status` with the agent down, with no snapshot yet
//! and with data; `top` driven in tmux with real traffic.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use moonfrp_tests::{
    Agent, agent_bin, free_port,
    receiver::{Receiver, Reply},
    tmux::Tmux,
};
use serde_json::Value;

fn status(args: &[&str]) -> (i32, String, String) {
    moonfrp_tests::agent_command(&[&["status"], args].concat())
}

/// A client writing 10 kB every 50 ms to a listener on 127.0.0.1:`port`, until dropped.
struct Traffic(Arc<AtomicBool>);

impl Traffic {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = moonfrp_tests::bind_tcp(port);
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 16_384];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        let s = stop.clone();
        thread::spawn(move || {
            let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            while !s.load(Ordering::Relaxed) {
                if c.write_all(&[3u8; 10_000]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Self(stop)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn status_with_the_agent_down_with_no_snapshot_and_with_data() {
    // Down: nobody listens there.
    let nobody = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = status(&["--listen", &nobody]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("not running or not reachable"), "{err}");
    assert!(out.is_empty());
    // Running, no snapshot yet (a stand-in answering as the agent does then).
    let r = Receiver::start();
    r.reply("/api/v1/status", Reply::Status(503));
    let (code, _, err) = status(&["--listen", &r.addr.to_string()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no snapshot yet"), "{err}");
    // With data.
    let port = free_port();
    let _traffic = Traffic::start(port);
    let agent = Agent::start(&["-t", &format!("web={port}")]);
    agent.wait_snapshots(2);
    let listen = agent.addr.to_string();
    let (code, text, err) = status(&["--listen", &listen]);
    assert_eq!(code, 0, "{err}");
    assert!(!text.contains('\x1b'), "escape codes in piped output");
    for section in [
        "TUNNELS (1)",
        "FRP PROCESSES",
        "SERVICES",
        "SYSTEM",
        "ALERTS (",
    ] {
        assert!(text.contains(section), "{section}:\n{text}");
    }
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("web "))
        .unwrap_or_else(|| panic!("no tunnel row:\n{text}"));
    assert!(
        row.contains(&format!("{port}/tcp")) && row.contains(" up "),
        "{row}"
    );
    assert!(row.contains("kB/s"), "traffic flows at ≈ 200 kB/s: {row}");
    let (code, json, _) = status(&["--listen", &listen, "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tunnels"][0]["tunnel"], "web");
    assert_eq!(v["tunnels"][0]["port"], port);
    assert!(
        v["tunnels"][0]["receive_bytes_per_second"]
            .as_f64()
            .unwrap()
            > 10_000.0
    );
    assert!(v["system"]["memory_total_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn top_in_tmux_shows_live_traffic_sorts_and_quits_cleanly() {
    let port = free_port();
    let _traffic = Traffic::start(port);
    let agent = Agent::start(&[
        "-t",
        &format!("web={port}"),
        "-t",
        &format!("idle={}", free_port()),
    ]);
    agent.wait_snapshots(2);
    let tmux = Tmux::new(&format!("moonfrp-test-{}", std::process::id()));
    let cmd = format!(
        "{} top --listen {} --refresh 1s; echo TOP-EXITED-$?; sleep 60",
        agent_bin().display(),
        agent.addr
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "100",
        "-y",
        "30",
        &cmd,
    ]);
    let screen = tmux.wait("the web row with a rate", |s| {
        s.lines().any(|l| l.contains("web") && l.contains("kB/s"))
    });
    assert!(screen.contains("sort: bandwidth"), "{screen}");
    let web = screen.find("web").unwrap();
    let idle = screen.find("idle").unwrap();
    assert!(
        web < idle,
        "the busy tunnel sorts first by bandwidth:\n{screen}"
    );
    tmux.run(&["send-keys", "-t", "top", "n"]);
    let screen = tmux.wait("sorting by name", |s| s.contains("sort: name"));
    assert!(
        screen.find("idle").unwrap() < screen.find("web").unwrap(),
        "{screen}"
    );
    for (key, label) in [
        ("c", "sort: connections"),
        ("e", "sort: errors"),
        ("b", "sort: bandwidth"),
    ] {
        tmux.run(&["send-keys", "-t", "top", key]);
        tmux.wait(label, |s| s.contains(label));
    }
    // Resize to 80×24 (as over a small SSH window): redrawn to fit, nothing lost.
    tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "24"]);
    // The busy tunnel above the idle one: the selection (the first row) is web when Enter goes.
    let small = tmux.wait("a redraw at 80 columns with web first", |s| {
        s.lines().all(|l| l.chars().count() <= 80)
            && s.contains("sort: bandwidth")
            && s.find("web")
                .is_some_and(|w| s.find("idle").is_some_and(|i| w < i))
    });
    assert!(small.lines().count() <= 24, "{small}");
    // The busy tunnel is the first row (sorted by bandwidth): Enter shows its peers.
    tmux.run(&["send-keys", "-t", "top", "Enter"]);
    let screen = tmux.wait("the peers of web", |s| s.contains("peers of web"));
    assert!(
        screen.contains("127.0.0.1"),
        "the client's address:\n{screen}"
    );
    tmux.run(&["send-keys", "-t", "top", "Escape"]);
    tmux.wait("the tunnel table again", |s| s.contains("tunnels (2)"));
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait("top to exit", |s| s.contains("TOP-EXITED-0"));
    assert!(
        !screen.contains("moonfrp top"),
        "the alternate screen was left, the terminal restored:\n{screen}"
    );
    let _ = agent;
}
