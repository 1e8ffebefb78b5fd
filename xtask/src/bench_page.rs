//! `cargo xtask bench-page`: what the web page costs the browser showing it. The release agent
//! watches 1,000 tunnels (a config of them, no traffic needed: the table redraws every interval
//! regardless) at a 1 s interval, and headless Chromium (`tests/ui/bench-page.mjs`) reads its
//! main-thread time with the table's default 200 rows, with every row, and on a tunnel's page.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, ensure};
use moonfrp_tests::AgentCmd;
use serde_json::Value;

use crate::run;

#[derive(Clone, Debug, clap::Args)]
pub struct Opts {
    /// Smoke mode: 300 tunnels, 3 s windows; figures not judged.
    #[arg(long)]
    pub quick: bool,
}

/// Measures; the caller has set up the browser and its packages (`setup::all(true)`).
pub fn run(opts: &Opts) -> anyhow::Result<Value> {
    let agent = run::build_release()?;
    let (tunnels, seconds) = if opts.quick { (300, 3) } else { (1000, 20) };
    let scratch = tempfile::tempdir()?;
    let mut config = String::new();
    for i in 0..tunnels {
        let _ = write!(
            config,
            "[[tunnels]]\nname = \"tunnel-{i}\"\nport = {}\n",
            31_000 + i
        );
    }
    let cfg = scratch.path().join("moonfrp.toml");
    std::fs::write(&cfg, config)?;
    let a = AgentCmd::new(&["--config", cfg.to_str().context("utf-8 path")?])
        .bin(&agent)
        .log_level("info")
        .data_dir(scratch.path().join("data"))
        .start();
    a.wait_snapshots(3);
    let ws = run::root();
    let out = Command::new("node")
        .arg(ws.join("tests/ui/bench-page.mjs"))
        .arg(format!("http://{}/", a.addr))
        .arg(seconds.to_string())
        .current_dir(ws.join("tests/ui"))
        .output()
        .context("node (setup installs it and playwright-core)")?;
    ensure!(
        out.status.success(),
        "bench-page.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).context("bench-page.mjs printed no JSON")?;
    println!(
        "\nthe web page in Chromium: main-thread seconds per second, {tunnels} tunnels, 1 s interval, {seconds} s windows"
    );
    println!("| view | rows drawn | busy | layout | script |");
    println!("|---|---|---|---|---|");
    for (what, key, rows) in [
        ("tunnel table, default", "default", &r["rows_default"]),
        ("tunnel table, Show all", "all", &r["rows_all"]),
        ("a tunnel's page (charts)", "tunnel_page", &Value::Null),
    ] {
        let f = |k: &str| r[key][k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {what} | {} | {:.3} s/s | {:.3} s/s | {:.3} s/s |",
            if rows.is_null() {
                "–".to_owned()
            } else {
                rows.to_string()
            },
            f("task"),
            f("layout"),
            f("script")
        );
    }
    for key in ["default", "all", "tunnel_page"] {
        ensure!(
            r[key]["task"].as_f64().is_some_and(f64::is_finite),
            "bench-page: no figure for {key}: {r}"
        );
    }
    Ok(r)
}
