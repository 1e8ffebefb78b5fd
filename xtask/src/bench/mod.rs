//! `cargo xtask bench-overhead`: the agent's CPU and memory, the kernel hooks' cost, the datapath
//! with programs attached vs not (interleaved A/B pairs, with an A/A control), and the scrape.
//! Prints a table, writes `overhead.json`, and gives a verdict per budget.
pub mod floor;
mod load;
pub mod measure;
mod report;
mod runs;

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde::Serialize;

pub use self::{
    load::{Generator, Kind},
    runs::Side,
};
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

/// Pairs per comparison in quick mode (built-in loads, then iperf3's, which run whole seconds).
const QUICK_PAIRS: usize = 5;
const QUICK_PAIRS_IPERF3: usize = 3;

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
    /// RSS after a scrape as Prometheus makes it (OpenMetrics, gzip).
    pub rss_bytes: u64,
    /// The file-backed part of it (`RssFile`: the executable's code and read-only data, the
    /// libraries): what the release link's ordering keeps small.
    pub rss_file_bytes: u64,
    /// RSS after a further scrape of plain text without gzip, whose rendering is kept too.
    pub rss_plain_bytes: u64,
    pub window_s: f64,
    pub collections_in_window: u64,
    /// "measured", or "estimated" (idle rate + cost of one collection / interval).
    pub method: &'static str,
}

/// The floor at one interval: a process that wakes and reads the host's /proc files (see
/// [`floor`]).
#[derive(Clone, Debug, Serialize)]
pub struct FloorCpu {
    pub interval_s: f64,
    pub cpu_pct_ns: f64,
    pub passes_in_window: f64,
}

/// Cost of one BPF program under one load with one side attached, over all such runs.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCost {
    pub generator: Generator,
    pub load: Kind,
    pub side: Side,
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
    pub generator: Generator,
    pub load: Kind,
    pub unit: &'static str,
    /// "A/B" = nothing vs moonfrp attached and watching; "A/E" = nothing vs the empty programs
    /// (the floor); "A/A" = nothing on both sides (the control).
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
    /// CPU per scrape as Prometheus asks (OpenMetrics, gzip), the tunnels idle.
    pub prometheus: ScrapeCpu,
    /// The same with every tunnel's counters moving between snapshots.
    pub prometheus_busy: ScrapeCpu,
    /// CPU per scrape of plain text 0.0.4 without compression.
    pub plain: ScrapeCpu,
    /// node_exporter (default collectors) CPU per scrape on this machine, as Prometheus asks.
    pub node_exporter_cpu_ms: f64,
    pub node_exporter_bytes: usize,
}

/// The agent's CPU per scrape of one format (medians, ms of one core).
#[derive(Clone, Debug, Serialize)]
pub struct ScrapeCpu {
    /// The first scrape after a snapshot: renders (and compresses) it.
    pub first_ms: f64,
    /// Any further scrape of that snapshot: copies the kept bytes.
    pub cached_ms: f64,
    /// Bytes on the wire.
    pub bytes: usize,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo: runs on two CPU models do not compare.
    pub cpu_model: String,
    /// The kernel's Spectre v2 mitigation: retpolines make every indirect call, BPF's
    /// included, several times dearer.
    pub spectre_v2: String,
    pub kernel: String,
    pub agent_cpu: Vec<AgentCpu>,
    pub floor: Vec<FloorCpu>,
    pub kernel_cost: Vec<KernelCost>,
    pub ab: Vec<AbResult>,
    pub scrape: Scrape,
    /// The budget: the run fails if one is broken.
    pub verdicts: Vec<report::Verdict>,
    /// Design targets, stricter than the budget: reported, not enforced.
    pub targets: Vec<report::Verdict>,
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

/// Runs the benchmark; fails if a budget is broken.
pub fn run(opts: &Opts) -> anyhow::Result<Report> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench-overhead loads kernel programs: run it as root"
    );
    setup::toolchain()?;
    let bin = run::build_release()?;
    eprintln!("bench: {}", crate::link_order::check(&bin)?);
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| run::root().join("target/bench-overhead"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let scratch = tempfile::tempdir()?;
    let started = Instant::now();

    let (agent_cpu, floor) = runs::agent_cpu(opts, &bin, scratch.path())?;
    eprintln!("bench: agent CPU done at {:.0?}", started.elapsed());
    setup::debian_packages(&["iperf3"])?;
    let mut kernel_cost = Vec::new();
    let mut ab_results = Vec::new();
    for generator in [Generator::Builtin, Generator::Iperf3] {
        let (pairs, dur) = match (opts.quick, generator) {
            (true, Generator::Builtin) => (QUICK_PAIRS, Duration::from_millis(300)),
            // iperf3 runs whole seconds.
            (true, Generator::Iperf3) => (QUICK_PAIRS_IPERF3, Duration::from_secs(1)),
            (false, _) => (7, Duration::from_secs(2)),
        };
        for &kind in generator.kinds() {
            eprintln!(
                "bench: {} {}: {pairs} pairs each of A/B, A/E (empty program) and A/A without BPF statistics, then {pairs} runs each watched, without peers, unwatched and empty with them, of {dur:?}",
                generator.name(),
                kind.name()
            );
            for side in [Side::Watched, Side::Empty, Side::Nothing] {
                ab_results.push(runs::ab(generator, kind, side, pairs, dur, &bin)?);
            }
            for side in [
                Side::Watched,
                Side::WatchedNoPeers,
                Side::Unwatched,
                Side::Empty,
            ] {
                runs::costs(generator, kind, side, pairs, dur, &bin, &mut kernel_cost)?;
            }
        }
    }
    eprintln!("bench: datapath done at {:.0?}", started.elapsed());
    let kernel_cost = report::merge_costs(kernel_cost);
    let scrape = runs::scrape(
        &bin,
        scratch.path(),
        opts.tunnels.iter().copied().max().unwrap_or(1000),
        opts.quick,
    )?;

    let mut r = Report {
        mode: if opts.quick { "quick" } else { "full" },
        cpus: thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned()),
        spectre_v2: read_trimmed("/sys/devices/system/cpu/vulnerabilities/spectre_v2"),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        agent_cpu,
        floor,
        kernel_cost,
        ab: ab_results,
        scrape,
        verdicts: Vec::new(),
        targets: Vec::new(),
    };
    r.verdicts = report::verdicts(&r);
    r.targets = report::targets(&r);
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
    /// Every kernel cost and datapath pair of [`Self::check_complete`].
    fn check_kernel(&self) -> anyhow::Result<()> {
        let finite = |what: &str, v: f64| {
            ensure!(v.is_finite() && v >= 0.0, "{what} is {v}");
            Ok(())
        };
        for generator in [Generator::Builtin, Generator::Iperf3] {
            for &kind in generator.kinds() {
                let what = format!("{} {}", generator.name(), kind.name());
                for side in [
                    Side::Watched,
                    Side::WatchedNoPeers,
                    Side::Unwatched,
                    Side::Empty,
                ] {
                    let programs: &[&str] = if side == Side::Empty {
                        &[moonfrp_tests::bpf::INGRESS, moonfrp_tests::bpf::EGRESS]
                    } else {
                        &[
                            moonfrp_common::programs::SKB_INGRESS,
                            moonfrp_common::programs::SKB_EGRESS,
                        ]
                    };
                    for program in programs {
                        let c = self.kernel_cost.iter().find(|c| {
                            c.generator == generator
                                && c.load == kind
                                && c.side == side
                                && c.program == *program
                        });
                        let c = c.with_context(|| {
                            format!("no kernel cost of {program} under {what} ({})", side.name())
                        })?;
                        ensure!(
                            c.runs > 0,
                            "{program} never ran under {what} ({})",
                            side.name()
                        );
                        finite("ns per run", c.ns_per_run)?;
                    }
                }
                for ab_kind in ["A/B", "A/E", "A/A"] {
                    let x = self
                        .ab
                        .iter()
                        .find(|x| x.generator == generator && x.load == kind && x.kind == ab_kind);
                    let x = x.with_context(|| format!("no {ab_kind} result for {what}"))?;
                    ensure!(
                        x.pairs.len() >= QUICK_PAIRS_IPERF3,
                        "{ab_kind} {what} has {} pairs",
                        x.pairs.len()
                    );
                    finite("ratio", x.ratio_median)?;
                    ensure!(
                        x.a_median > 0.0 && x.b_median > 0.0,
                        "{ab_kind} {what} moved nothing"
                    );
                }
            }
        }
        Ok(())
    }

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
        ensure!(
            self.floor.len() == opts.interval.len(),
            "floor rows incomplete"
        );
        for f in &self.floor {
            finite("floor cpu %", f.cpu_pct_ns)?;
        }
        for a in &self.agent_cpu {
            finite("agent cpu % (stat)", a.cpu_pct_stat)?;
            finite("agent cpu % (ns)", a.cpu_pct_ns)?;
            ensure!(a.rss_bytes > 0, "no RSS for {} tunnels", a.tunnels);
            ensure!(
                a.rss_file_bytes > 0 && a.rss_file_bytes <= a.rss_bytes,
                "file-backed RSS {} B out of 1..={} B for {} tunnels",
                a.rss_file_bytes,
                a.rss_bytes,
                a.tunnels
            );
        }
        self.check_kernel()?;
        ensure!(
            self.scrape.text_bytes > 0 && self.scrape.openmetrics_bytes > 0,
            "empty scrape"
        );
        finite("scrape time", self.scrape.text_ms_median)?;
        finite("snapshot time", self.scrape.snapshot_ms_median)?;
        for (what, c) in [
            ("prometheus", &self.scrape.prometheus),
            (
                "prometheus (every tunnel moving)",
                &self.scrape.prometheus_busy,
            ),
            ("plain", &self.scrape.plain),
        ] {
            finite(&format!("{what} first-scrape CPU"), c.first_ms)?;
            finite(&format!("{what} cached-scrape CPU"), c.cached_ms)?;
            ensure!(c.bytes > 0, "empty {what} scrape");
        }
        finite(
            "node_exporter CPU per scrape",
            self.scrape.node_exporter_cpu_ms,
        )?;
        ensure!(
            self.scrape.node_exporter_bytes > 0,
            "empty node_exporter scrape"
        );
        ensure!(
            !self.verdicts.is_empty(),
            "no verdict (the 60 s interval was not measured)"
        );
        Ok(())
    }
}

/// A one-line file of the kernel's, trimmed; "unknown" where it cannot be read.
fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}
