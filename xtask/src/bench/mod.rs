//! `cargo xtask bench-overhead`: the agent's CPU and memory, the kernel hooks' cost, the datapath
//! with programs attached vs not (interleaved A/B pairs, with an A/A control), and the scrape.
//! Prints a table, writes `overhead.json`, and gives a verdict per budget.
mod load;
mod measure;
mod report;

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use moonfrp_tests::{Agent, AgentCmd, free_port, http_get};
use serde::Serialize;

pub use self::load::Kind;
use crate::{run, setup};

/// Options of the command.
#[derive(Clone, Debug, clap::Args)]
pub struct Opts {
    /// CI smoke mode: short windows (≤ 60 s in all); the 10 s and 60 s intervals are estimated
    /// from the measured cost of one collection, and the output says so.
    #[arg(long)]
    pub quick: bool,
    /// Tunnel counts for the agent CPU table.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub tunnels: Vec<u32>,
    /// Collection intervals for the agent CPU table (1s..=60s).
    #[arg(long, value_delimiter = ',', default_value = "60s,10s,1s")]
    pub interval: Vec<String>,
    /// Where to write overhead.json [default: target/bench-overhead].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Budget: the agent at a 60 s interval with 1,000 tunnels uses under 1 % of one core.
pub const CPU_BUDGET_PCT: f64 = 1.0;

/// One row of the agent CPU table.
#[derive(Clone, Debug, Serialize)]
pub struct AgentCpu {
    pub tunnels: u32,
    pub interval_s: f64,
    /// utime+stime over the window, % of one core (clock-tick resolution).
    pub cpu_pct_stat: f64,
    /// Process CPU clock over the window, % of one core (nanosecond resolution).
    pub cpu_pct_ns: f64,
    pub rss_bytes: u64,
    pub window_s: f64,
    pub collections_in_window: u64,
    /// "measured", or "estimated" (idle rate + cost of one collection / interval).
    pub method: &'static str,
}

/// Cost of one BPF program under one load, over all the runs with programs attached.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCost {
    pub load: Kind,
    pub program: String,
    pub runs: u64,
    pub run_ns: f64,
    pub wall_s: f64,
    pub runs_per_s: f64,
    pub ns_per_run: f64,
    /// Share of one core spent in the program.
    pub cpu_pct: f64,
}

/// Interleaved pairs of one datapath comparison.
#[derive(Clone, Debug, Serialize)]
pub struct AbResult {
    pub load: Kind,
    pub unit: &'static str,
    /// "A/B" = without vs with programs attached; "A/A" = without on both sides (the control).
    pub kind: &'static str,
    pub pairs: Vec<(f64, f64)>,
    pub a_median: f64,
    pub b_median: f64,
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

/// The scrape at many tunnels.
#[derive(Clone, Debug, Serialize)]
pub struct Scrape {
    pub tunnels: u32,
    pub text_ms_median: f64,
    pub text_bytes: usize,
    pub openmetrics_ms_median: f64,
    pub openmetrics_bytes: usize,
    pub snapshot_ms_median: f64,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub cpus: usize,
    pub kernel: String,
    pub agent_cpu: Vec<AgentCpu>,
    pub kernel_cost: Vec<KernelCost>,
    pub ab: Vec<AbResult>,
    pub scrape: Scrape,
    pub verdicts: Vec<report::Verdict>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

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

fn agent_cpu(
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
fn ab(
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

fn scrape(
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

/// Runs the benchmark; fails if a budget is broken.
pub fn run(opts: &Opts) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench-overhead loads kernel programs: run it as root"
    );
    setup::toolchain()?;
    let bin = run::build_release()?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| run::root().join("target/bench-overhead"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let scratch = tempfile::tempdir()?;
    // Kernel statistics on for the whole run (they cost ≈ 20 ns per program run themselves);
    // the kernel turns them off again when this fd closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot enable BPF run-time statistics")?;
    let started = Instant::now();

    let agent_cpu = agent_cpu(opts, &bin, scratch.path())?;
    eprintln!("bench: agent CPU done at {:.0?}", started.elapsed());
    let (pairs, dur) = if opts.quick {
        (5, Duration::from_millis(300))
    } else {
        (7, Duration::from_secs(2))
    };
    let mut kernel_cost = Vec::new();
    let mut ab_results = Vec::new();
    for kind in Kind::ALL {
        eprintln!(
            "bench: {}: {pairs} A/B pairs and {pairs} A/A pairs of {dur:?}",
            kind.name()
        );
        ab_results.push(ab(kind, false, pairs, dur, &bin, &mut kernel_cost)?);
        ab_results.push(ab(kind, true, pairs, dur, &bin, &mut kernel_cost)?);
    }
    eprintln!("bench: datapath done at {:.0?}", started.elapsed());
    let kernel_cost = report::merge_costs(kernel_cost);
    let scrape = scrape(
        &bin,
        scratch.path(),
        opts.tunnels.iter().copied().max().unwrap_or(1000),
        opts.quick,
    )?;

    let mut r = Report {
        mode: if opts.quick { "quick" } else { "full" },
        cpus: thread::available_parallelism().map_or(1, std::num::NonZero::get),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        agent_cpu,
        kernel_cost,
        ab: ab_results,
        scrape,
        verdicts: Vec::new(),
    };
    r.verdicts = report::verdicts(&r);
    report::print(&r, started.elapsed());
    let json = out.join("overhead.json");
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("written: {}", json.display());
    ensure!(
        r.verdicts.iter().all(|v| v.pass),
        "a budget is broken (see the verdicts above)"
    );
    Ok(r)
}

impl Report {
    /// Checks that the run produced every figure (the smoke check of `cargo xtask test`): it says
    /// nothing about how fast anything was.
    pub fn check_complete(&self, opts: &Opts) -> anyhow::Result<()> {
        let finite = |what: &str, v: f64| {
            ensure!(v.is_finite() && v >= 0.0, "{what} is {v}");
            Ok(())
        };
        ensure!(
            self.agent_cpu.len() == opts.tunnels.len() * opts.interval.len(),
            "agent CPU table incomplete"
        );
        for a in &self.agent_cpu {
            finite("agent cpu % (stat)", a.cpu_pct_stat)?;
            finite("agent cpu % (ns)", a.cpu_pct_ns)?;
            ensure!(a.rss_bytes > 0, "no RSS for {} tunnels", a.tunnels);
        }
        for kind in Kind::ALL {
            for program in [
                moonfrp_common::programs::SKB_INGRESS,
                moonfrp_common::programs::SKB_EGRESS,
            ] {
                let c = self
                    .kernel_cost
                    .iter()
                    .find(|c| c.load == kind && c.program == program);
                let c = c.with_context(|| {
                    format!("no kernel cost of {program} under {}", kind.name())
                })?;
                ensure!(c.runs > 0, "{program} never ran under {}", kind.name());
                finite("ns per run", c.ns_per_run)?;
            }
            for ab_kind in ["A/B", "A/A"] {
                let x = self.ab.iter().find(|x| x.load == kind && x.kind == ab_kind);
                let x = x.with_context(|| format!("no {ab_kind} result for {}", kind.name()))?;
                ensure!(
                    x.pairs.len() >= 5,
                    "{ab_kind} {} has {} pairs",
                    kind.name(),
                    x.pairs.len()
                );
                finite("ratio", x.ratio_median)?;
                ensure!(
                    x.a_median > 0.0 && x.b_median > 0.0,
                    "{ab_kind} {} moved nothing",
                    kind.name()
                );
            }
        }
        ensure!(
            self.scrape.text_bytes > 0 && self.scrape.openmetrics_bytes > 0,
            "empty scrape"
        );
        finite("scrape time", self.scrape.text_ms_median)?;
        finite("snapshot time", self.scrape.snapshot_ms_median)?;
        ensure!(
            !self.verdicts.is_empty(),
            "no verdict (the 60 s interval was not measured)"
        );
        Ok(())
    }
}
