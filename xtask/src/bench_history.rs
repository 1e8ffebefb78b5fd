//! `cargo xtask bench-history`: the history store's cost. The agent's hidden `bench-history`
//! command writes a day (24 h + 1 interval at 60 s) of synthetic busy tunnels through the
//! writer's path with a fake clock and times queries, for 100 and 1,000 tunnels; then the real
//! agent runs on each database (its tunnels watched, API asked) for its memory, and again
//! without history.
//! Prints a table, writes history.json, and judges the targets.
use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};
use moonfrp_tests::{AgentCmd, http_get};
use serde_json::{Value, json};

use crate::{bench::measure::status_bytes, run, setup};

#[derive(Clone, Debug, clap::Args)]
pub struct Opts {
    /// Smoke mode: an hour instead of a day (bytes per day extrapolated), figures not judged.
    #[arg(long)]
    pub quick: bool,
    /// Where to write history.json [default: target/bench-history].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Targets at 60 s (issue 17): MiB per day at 100 and 1,000 tunnels, write p99, a 24 h query of
/// one series and the summary at 1,000 tunnels; the agent's RSS at 100 tunnels with a day stored.
const MIB_PER_DAY_100: f64 = 5.0;
const MIB_PER_DAY_1000: f64 = 40.0;
const WRITE_P99_MS: f64 = 10.0;
const QUERY_24H_MS: f64 = 5.0;
const SUMMARY_MS: f64 = 10.0;
const RSS_MIB_100: f64 = 24.0;
const BASE_PORT: u16 = 30_000;

fn store_run(
    bench: &std::path::Path,
    tunnels: u16,
    intervals: u32,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    eprintln!("xtask: bench-history: writing {intervals} intervals of {tunnels} tunnels");
    let out = Command::new(bench)
        .args(["--tunnels", &tunnels.to_string()])
        .args(["--intervals", &intervals.to_string()])
        .args(["--base-port", &BASE_PORT.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .context("cannot run the bench_history example")?;
    ensure!(
        out.status.success(),
        "bench_history failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("bench-history printed no JSON report")
}

/// The real agent on a filled database, its tunnels watched: RSS after snapshots and API calls
/// (and the peak, which comes from loading the programs); with `history = false` the same agent
/// without history, for comparison in the same run.
fn agent_memory(
    agent: &std::path::Path,
    dir: &std::path::Path,
    tunnels: u16,
    snapshots: u64,
    history: bool,
) -> anyhow::Result<Value> {
    let mut config = String::new();
    for i in 0..tunnels {
        let proto = if i % 10 == 0 { "udp" } else { "tcp" };
        let _ = write!(
            config,
            "[[tunnels]]\nname = \"tunnel-{i}\"\nport = {}\nproto = \"{proto}\"\n",
            BASE_PORT + i
        );
    }
    if !history {
        config.push_str("[history]\nenabled = false\n");
    }
    let cfg = dir.join(if history {
        "moonfrp.toml"
    } else {
        "no-history.toml"
    });
    std::fs::write(&cfg, config)?;
    let a = AgentCmd::new(&["--config", cfg.to_str().context("utf-8 path")?])
        .bin(agent)
        .log_level("info")
        .data_dir(dir.join("data"))
        .start();
    a.wait_snapshots(snapshots);
    let queries = [
        "/api/v1/history?metric=moonfrp_tunnel_receive_bytes_total&tunnel=tunnel-1&since=24h",
        "/api/v1/history?metric=moonfrp_tunnel_receive_bytes_total&since=24h&rate=true&step=5m",
        "/api/v1/history?metric=moonfrp_system_cpu_usage_ratio&from=now-7d",
        "/api/v1/summary",
        "/api/v1/tunnels",
    ];
    for path in if history { &queries[..] } else { &queries[4..] } {
        let (status, _, body) = http_get(a.addr, path, None)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
    }
    a.wait_snapshots(2);
    let pid = a.pid();
    Ok(json!({
        "tunnels": tunnels,
        "history": history,
        "rss_bytes": status_bytes(pid, "VmRSS:")?,
        "peak_rss_bytes": status_bytes(pid, "VmHWM:")?,
    }))
}

fn print_table(r: &Value, intervals: u32) {
    println!(
        "\nhistory store, 60 s interval, {} intervals{}",
        intervals,
        if r["quick"].as_bool() == Some(true) {
            " (quick: bytes per day extrapolated)"
        } else {
            ""
        }
    );
    println!(
        "| tunnels | series | write p50 | write p99 | write max | bytes/day | 24 h query (1 series) | 24 h rate query | summary |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in r["stores"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        let w = |k: &str| s["write_ms"][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {:.1} ms ({} points) | {:.1} ms | {:.1} ms |",
            s["tunnels"],
            s["series"],
            w("p50"),
            w("p99"),
            w("max"),
            mib(f("bytes_per_day")),
            f("query_24h_ms"),
            s["query_24h_points"],
            f("query_24h_rate_ms"),
            f("summary_ms"),
        );
    }
    for m in r["agents"].as_array().into_iter().flatten() {
        println!(
            "agent, {} tunnels, {}: RSS {:.1} MiB after snapshots and API queries, peak {:.1} MiB",
            m["tunnels"],
            if m["history"].as_bool() == Some(true) {
                "a day stored"
            } else {
                "without history"
            },
            mib(m["rss_bytes"].as_f64().unwrap_or(f64::NAN)),
            mib(m["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN)),
        );
    }
}

fn mib(b: f64) -> f64 {
    b / 1024.0 / 1024.0
}

pub fn run(opts: &Opts) -> anyhow::Result<Value> {
    setup::toolchain()?;
    let agent = run::build_release()?;
    let bench = run::build_release_example("bench_history")?;
    let intervals = if opts.quick { 61 } else { 1441 };
    let scratch = tempfile::tempdir()?;
    let mut stores = Vec::new();
    for tunnels in [100u16, 1000] {
        let dir = scratch.path().join(format!("t{tunnels}"));
        std::fs::create_dir_all(&dir)?;
        stores.push(store_run(&bench, tunnels, intervals, &dir.join("data"))?);
    }
    let snapshots = if opts.quick { 3 } else { 10 };
    let mut agents = Vec::new();
    for tunnels in [100u16, 1000] {
        let dir = scratch.path().join(format!("t{tunnels}"));
        for history in [true, false] {
            agents.push(agent_memory(&agent, &dir, tunnels, snapshots, history)?);
        }
    }
    let report = json!({
        "quick": opts.quick,
        "stores": stores,
        "agents": agents,
    });

    print_table(&report, intervals);
    let rss = agents[0]["rss_bytes"].as_f64().unwrap_or(f64::NAN);
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| run::root().join("target/bench-history"));
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("history.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let (s100, s1000) = (&stores[0], &stores[1]);
    let f = |s: &Value, k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    let checks = [
        (
            "bytes per day at 100 tunnels",
            mib(f(s100, "bytes_per_day")),
            MIB_PER_DAY_100,
            "MiB",
        ),
        (
            "bytes per day at 1,000 tunnels",
            mib(f(s1000, "bytes_per_day")),
            MIB_PER_DAY_1000,
            "MiB",
        ),
        (
            "write p99 at 1,000 tunnels",
            s1000["write_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            WRITE_P99_MS,
            "ms",
        ),
        (
            "24 h query of one series at 1,000 tunnels",
            f(s1000, "query_24h_ms"),
            QUERY_24H_MS,
            "ms",
        ),
        (
            "summary at 1,000 tunnels",
            f(s1000, "summary_ms"),
            SUMMARY_MS,
            "ms",
        ),
        (
            "agent RSS, 100 tunnels + a day stored",
            mib(rss),
            RSS_MIB_100,
            "MiB",
        ),
    ];
    let mut broken = Vec::new();
    for (what, got, limit, unit) in checks {
        ensure!(got.is_finite(), "{what}: no figure");
        let ok = got <= limit;
        println!(
            "{} {what}: {got:.1} {unit} (target ≤ {limit:.0} {unit})",
            if ok { "ok  " } else { "OVER" }
        );
        if !ok {
            broken.push(what);
        }
    }
    if !opts.quick {
        ensure!(broken.is_empty(), "over target: {}", broken.join(", "));
    }
    println!("wrote {}", out.join("history.json").display());
    Ok(report)
}

/// Every figure of a report is there.
pub fn check_complete(r: &Value) -> anyhow::Result<()> {
    for s in r["stores"].as_array().context("no stores")? {
        for k in ["series", "bytes_per_day", "query_24h_ms", "summary_ms"] {
            ensure!(
                s[k].as_f64().is_some_and(|v| v > 0.0),
                "store figure {k} missing"
            );
        }
        ensure!(
            s["write_ms"]["p99"].as_f64().is_some_and(|v| v > 0.0),
            "write p99 missing"
        );
    }
    let agents = r["agents"].as_array().context("no agents")?;
    ensure!(agents.len() == 4, "{} agent runs, not 4", agents.len());
    for a in agents {
        ensure!(
            a["rss_bytes"].as_f64().is_some_and(|v| v > 0.0),
            "agent with {} tunnels: RSS missing",
            a["tunnels"]
        );
    }
    Ok(())
}
