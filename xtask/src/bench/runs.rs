//! The measurements themselves: the agent CPU matrix, the datapath A/B pairs, the scrape.
use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use moonfrp_tests::{Agent, AgentCmd, free_port, http_get};

use super::{AbResult, AgentCpu, KernelCost, Kind, Opts, Scrape, load, measure, median, report};

fn parse_interval(s: &str) -> anyhow::Result<Duration> {
    let secs = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse::<u64>()
        .with_context(|| format!("interval `{s}`: use e.g. 60s"))?;
    ensure!((1..=60).contains(&secs), "interval `{s}` must be 1s..=60s");
    Ok(Duration::from_secs(secs))
}

/// A config file with `n` tunnels on consecutive ports from `base`.
fn tunnels_config(dir: &std::path::Path, n: u32, base: u16) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(
            text,
            "[[tunnels]]\nname = \"t{i}\"\nport = {}",
            u32::from(base) + i
        );
    }
    let path = dir.join(format!("tunnels-{n}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Background load for the CPU table, at fixed rates, until `stop`.
fn background_load(
    base: u16,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    let rates = [
        (Kind::TcpBulk, 25e6),
        (Kind::UdpSmall, 2_000.0),
        (Kind::TcpChurn, 100.0),
    ];
    rates
        .into_iter()
        .enumerate()
        .map(|(i, (kind, rate))| {
            let stop = stop.clone();
            let port = base + i as u16;
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = load::run(kind, port, Duration::from_secs(1), Some(rate)) {
                        eprintln!("bench: background {}: {e:#}", kind.name());
                        thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        })
        .collect()
}

pub(super) fn agent_cpu(
    opts: &Opts,
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<AgentCpu>> {
    let intervals: Vec<Duration> = opts
        .interval
        .iter()
        .map(|s| parse_interval(s))
        .collect::<Result<_, _>>()?;
    let base = 40_000;
    // Every agent (one per tunnel count and interval) runs at once: each one's CPU is its own.
    let mut agents = Vec::new();
    for &n in &opts.tunnels {
        let config = tunnels_config(dir, n, base)?;
        for &iv in &intervals {
            let cmd = AgentCmd::new(&["--config", config.to_str().context("utf-8 path")?])
                .bin(bin)
                .interval(&format!("{}s", iv.as_secs()))
                .log_level("warn");
            agents.push((n, iv, cmd.start()));
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = background_load(base, &stop);
    let longest = intervals
        .iter()
        .max()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    let window = if opts.quick {
        Duration::from_secs(8)
    } else {
        longest * 2 + Duration::from_secs(5)
    };
    eprintln!(
        "bench: agent CPU: {} agents, window {window:?} under background load",
        agents.len()
    );

    // Scrape before reading the CPU (and after reading it at the end): the scrapes that count
    // snapshots must not land inside the window.
    let before: Vec<(measure::Cpu, u64)> = agents
        .iter()
        .map(|(_, _, a)| {
            let s = snapshots(a);
            Ok((measure::cpu(a.pid())?, s))
        })
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    thread::sleep(window);
    let wall = started.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for ((n, iv, a), (b, s0)) in agents.iter().zip(&before) {
        let after = measure::cpu(a.pid())?;
        let collections = snapshots(a).saturating_sub(*s0);
        rows.push(AgentCpu {
            tunnels: *n,
            interval_s: iv.as_secs_f64(),
            cpu_pct_stat: after.ticks.saturating_sub(b.ticks) as f64
                / measure::ticks_per_second()
                / wall
                * 100.0,
            cpu_pct_ns: after.ns.saturating_sub(b.ns) as f64 / 1e9 / wall * 100.0,
            rss_bytes: measure::rss(a.pid())?,
            window_s: wall,
            collections_in_window: collections,
            method: "measured",
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in load {
        let _ = h.join();
    }
    drop(agents);
    if opts.quick {
        report::estimate_long_intervals(&mut rows);
    }
    Ok(rows)
}

fn snapshots(a: &Agent) -> u64 {
    a.metrics()
        .get("moonfrp_agent_snapshots_total", &[])
        .unwrap_or(0.0) as u64
}

/// Runs `kind` once, with an agent watching its port when `attached`; with BPF statistics, the
/// programs' costs over the run are added to `costs`.
fn one_run(
    kind: Kind,
    attached: bool,
    dur: Duration,
    bin: &std::path::Path,
    costs: Option<&mut Vec<KernelCost>>,
) -> anyhow::Result<f64> {
    let port = free_port();
    let agent = attached.then(|| {
        AgentCmd::new(&["-t", &kind.tunnel_flag(port)])
            .bin(bin)
            .interval("60s")
            .log_level("warn")
            .start()
    });
    let before = agent
        .as_ref()
        .map(|a| measure::prog_stats(a.pid()))
        .transpose()?;
    let started = Instant::now();
    let value = load::run(kind, port, dur, None)?;
    let wall = started.elapsed().as_secs_f64();
    if let (Some(a), Some(before), Some(costs)) = (&agent, before, costs) {
        for (program, after) in measure::prog_stats(a.pid())? {
            let b = before.get(&program).copied().unwrap_or_default();
            let runs = after.run_count.saturating_sub(b.run_count);
            let ns = after.run_time.saturating_sub(b.run_time).as_nanos() as f64;
            costs.push(KernelCost {
                load: kind,
                program,
                runs,
                run_ns: ns,
                wall_s: wall,
                runs_per_s: 0.0,
                ns_per_run: 0.0,
                cpu_pct: 0.0,
            });
        }
    }
    Ok(value)
}

/// Interleaved pairs; A first in even pairs, B first in odd ones, so drift cancels out.
pub(super) fn ab(
    kind: Kind,
    control: bool,
    pairs: usize,
    dur: Duration,
    bin: &std::path::Path,
    costs: &mut Vec<KernelCost>,
) -> anyhow::Result<AbResult> {
    let mut values = Vec::new();
    for i in 0..pairs {
        let b_attached = !control;
        let (a, b) = if i % 2 == 0 {
            let a = one_run(kind, false, dur, bin, None)?;
            (a, one_run(kind, b_attached, dur, bin, Some(costs))?)
        } else {
            let b = one_run(kind, b_attached, dur, bin, Some(costs))?;
            (one_run(kind, false, dur, bin, None)?, b)
        };
        values.push((a, b));
    }
    let mut ratios: Vec<f64> = values.iter().map(|(a, b)| b / a).collect();
    let (mut av, mut bv): (Vec<f64>, Vec<f64>) = values.iter().copied().unzip();
    Ok(AbResult {
        load: kind,
        unit: kind.unit(),
        kind: if control { "A/A" } else { "A/B" },
        a_median: median(&mut av),
        b_median: median(&mut bv),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ratio_median: median(&mut ratios),
        pairs: values,
    })
}

pub(super) fn scrape(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: u32,
    quick: bool,
) -> anyhow::Result<Scrape> {
    let config = tunnels_config(dir, n, 50_000)?;
    let agent = AgentCmd::new(&["--config", config.to_str().context("utf-8 path")?])
        .bin(bin)
        .log_level("warn")
        .start();
    let rounds = if quick { 10 } else { 50 };
    let mut snaps = Vec::new();
    for _ in 0..if quick { 2 } else { 5 } {
        let m = agent.wait_snapshots(1);
        snaps.push(
            m.get("moonfrp_agent_snapshot_duration_seconds", &[])
                .unwrap_or(f64::NAN)
                * 1e3,
        );
    }
    let time = |accept: Option<&str>| -> anyhow::Result<(f64, usize)> {
        let mut ms = Vec::new();
        let mut size = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let (status, _, body) = http_get(agent.addr, "/metrics", accept)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(status == 200, "scrape failed with {status}");
            size = body.len();
        }
        Ok((median(&mut ms), size))
    };
    let (text_ms, text_bytes) = time(None)?;
    let (om_ms, om_bytes) = time(Some("application/openmetrics-text"))?;
    Ok(Scrape {
        tunnels: n,
        text_ms_median: text_ms,
        text_bytes,
        openmetrics_ms_median: om_ms,
        openmetrics_bytes: om_bytes,
        snapshot_ms_median: median(&mut snaps),
    })
}
