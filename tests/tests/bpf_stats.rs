//! BPF run-time statistics are sampled: on for a short window after a collection, then off for
//! at least nine window lengths however short the interval, while no program on the host —
//! moonfrp's or anyone's — pays for them. A bystander program (empty, not moonfrp's) shows it:
//! the kernel counts its runs only while the statistics are on. Alone in its file: other agents
//! would open windows of their own.
use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use moonfrp_tests::{AgentCmd, bpf::EmptyPrograms, free_port};

/// Runs counted so far of the bystander's two programs.
fn bystander_runs(b: &EmptyPrograms) -> u64 {
    b.stats().values().map(|s| s.run_count).sum()
}

/// Datagrams to `port` until `stop`, so that programs on the hooks run all the time.
fn traffic(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let rx = moonfrp_tests::bind_udp(port);
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            tx.send_to(&[1; 32], (Ipv4Addr::LOCALHOST, port)).unwrap();
            while rx.recv(&mut buf).is_ok() {}
            thread::sleep(Duration::from_micros(200));
        }
    })
}

#[test]
fn statistics_are_on_only_inside_the_sampling_windows() {
    let port = free_port();
    let bystander = EmptyPrograms::attach().expect("the bystander program attaches");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(port, stop.clone());
    // Before the agent: nobody has the statistics on, the bystander's runs are not counted.
    let before = bystander_runs(&bystander);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        bystander_runs(&bystander),
        before,
        "BPF statistics are on before the agent starts: another tool holds them (kernel.bpf_stats_enabled?)"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(
        &config,
        format!(
            "[kernel]\nbpf_stats_window = \"200ms\"\n[[tunnels]]\nname = \"dns\"\nport = {port}\nproto = \"udp\"\n"
        ),
    )
    .unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()])
        .interval("1s")
        .start();
    let (mut grew, mut still) = (0u32, 0u32);
    let mut prev = bystander_runs(&bystander);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        thread::sleep(Duration::from_millis(20));
        let now = bystander_runs(&bystander);
        if now > prev {
            grew += 1;
        } else {
            still += 1;
        }
        prev = now;
    }
    let share = f64::from(grew) / f64::from(grew + still);
    eprintln!(
        "the bystander's runs were counted in {grew} of {} readings ({share:.2})",
        grew + still
    );
    // A 200 ms window, then at least 1.8 s off, whatever the 1 s interval would allow: a tenth
    // of the time at most (a window opens at the first collection after the rest: every 2 or
    // 3 s), and never none of it.
    assert!(
        (0.03..=0.13).contains(&share),
        "statistics on {share:.2} of the time"
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();

    let m = agent.metrics();
    let window = m
        .get("moonfrp_agent_bpf_stats_window_seconds_total", &[])
        .expect("window seconds exported");
    let snaps = m.get("moonfrp_agent_snapshots_total", &[]).unwrap();
    // A closed window per two or three snapshots (one a second), the latest window perhaps
    // still open.
    assert!(
        window >= 0.2 * ((snaps / 3.0).floor() - 1.0) && window <= 0.25 * (snaps / 2.0 + 1.0),
        "window seconds {window} for {snaps} snapshots"
    );
    let runs = m
        .get(
            "moonfrp_agent_bpf_runs_total",
            &[("probe", "traffic_ingress")],
        )
        .expect("runs of traffic_ingress");
    assert!(runs > 0.0, "no sampled runs");
    let ns = m
        .get(
            "moonfrp_agent_bpf_run_time_seconds_total",
            &[("probe", "traffic_ingress")],
        )
        .unwrap()
        / runs
        * 1e9;
    assert!(ns > 0.0 && ns < 100_000.0, "{ns} ns per run");
    // Once the agent is gone, nothing keeps them on.
    drop(agent);
    let gone = bystander_runs(&bystander);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = traffic(port, stop.clone());
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(bystander_runs(&bystander), gone, "statistics left on");
}
