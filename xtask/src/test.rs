//! `cargo xtask test`: every test in the workspace. Unit tests first (no privileges), then the
//! integration tests in `tests/`, which start the real agent, load its programs and send real
//! traffic (root); then a run of the README's `cargo xtask run` command, the kernels of
//! `cargo xtask test-kernels` booted under QEMU, every fuzz target for a few seconds from its
//! corpus, and the benches' quick runs. Ends with one
//! `tests: N passed, N failed` line summing every cargo test run.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, ensure};

use crate::{
    run::root,
    setup::{self, cargo, sh},
};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Adds a libtest `test result: ok. 3 passed; 0 failed; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs a `cargo test` command, echoing its output and counting its results.
fn cargo_test(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    ensure!(status.success(), "tests failed ({status}); see above");
    Ok(())
}

pub fn all() -> anyhow::Result<()> {
    setup::all(true)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the integration tests load kernel programs: run `cargo xtask test` as root (sudo -E)"
    );

    let ws = root();
    lint(&ws)?;
    let mut tally = Tally::default();
    cargo_test(
        cargo()
            .current_dir(&ws)
            .args(["test", "--lib", "--bins", "--tests"])
            .args(packages(UNIT_TESTED)),
        &mut tally,
    )?;
    sh(cargo()
        .current_dir(&ws)
        .args(["build", "-p", "moonfrp-agent"]))?;
    cargo_test(
        cargo()
            .current_dir(&ws)
            .args([
                "test",
                "--lib",
                "--bins",
                "--tests",
                "-p",
                "moonfrp-tests",
                "--",
                "--test-threads=2",
            ])
            .env("MOONFRP_AGENT_BIN", ws.join("target/debug/moonfrp-agent"))
            .env("MOONFRP_WORKSPACE", &ws),
        &mut tally,
    )?;
    crate::smoke::readme_run()?;
    tally.passed += 1;
    let held = crate::kernels::run(&crate::kernels::Opts::default())?;
    println!("test-kernels: {held} checks held on every kernel booted");
    tally.passed += held;
    let fuzzed = crate::fuzz::run(&crate::fuzz::Opts {
        targets: Vec::new(),
        seconds: FUZZ_SECONDS,
        jobs: 2,
        release: false,
    })?;
    println!(
        "fuzz: {} targets, {FUZZ_SECONDS} s each, nothing found",
        fuzzed.len()
    );
    tally.passed += fuzzed.len() as u64;
    bench_smoke()?;
    tally.passed += 1;
    let history_out = tempfile::tempdir()?;
    let history = crate::bench_history::run(&crate::bench_history::Opts {
        quick: true,
        out: Some(history_out.path().to_owned()),
    })?;
    crate::bench_history::check_complete(&history)?;
    println!("bench-history --quick: every figure produced");
    tally.passed += 1;
    crate::bench_page::run(&crate::bench_page::Opts { quick: true })?;
    println!("bench-page --quick: every figure produced");
    tally.passed += 1;
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// The format check (nightly rustfmt, for `rustfmt.toml`'s import grouping) and clippy with
/// warnings as errors on every host crate; either failing fails the test command.
fn lint(ws: &std::path::Path) -> anyhow::Result<()> {
    setup::rustfmt()?;
    sh(Command::new("cargo")
        .current_dir(ws)
        .args(["+nightly", "fmt", "--all", "--", "--check"]))
    .context("the code is not formatted: run `cargo +nightly fmt --all`")?;
    sh(cargo()
        .current_dir(ws)
        .arg("clippy")
        .args(packages(UNIT_TESTED))
        .args(["-p", "moonfrp-tests", "-p", "moonfrp-fuzz"])
        .args(["--all-targets", "--", "-D", "warnings"]))
    .context("clippy found something: see above")?;
    println!("lint: rustfmt and clippy clean");
    Ok(())
}

/// How long each fuzz target runs in the test command (longer: `cargo xtask fuzz --seconds`).
const FUZZ_SECONDS: u64 = 15;

/// The host crates whose own tests run first (the eBPF crate is never built for the host).
const UNIT_TESTED: &[&str] = &["moonfrp-common", "moonfrp-agent", "xtask"];

/// `-p NAME` for each crate.
fn packages<'a>(crates: &[&'a str]) -> Vec<&'a str> {
    crates.iter().flat_map(|c| ["-p", c]).collect()
}

/// `bench-overhead --quick`: the harness must produce every figure (timings are not judged).
fn bench_smoke() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let opts = crate::bench::Opts {
        quick: true,
        tunnels: vec![10, 100, 1000],
        interval: vec!["60s".into(), "10s".into(), "1s".into()],
        out: Some(out.path().to_owned()),
    };
    let report = crate::bench::run(&opts)?;
    report.check_complete(&opts)?;
    ensure!(
        out.path().join("overhead.json").is_file(),
        "overhead.json not written"
    );
    println!("bench-overhead --quick: every figure produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn sums_libtest_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 33 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s");
        t.add_line(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 4 tests");
        assert_eq!((t.passed, t.failed), (35, 1));
    }
}
