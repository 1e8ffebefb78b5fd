//! Developer commands. `cargo xtask run` and `cargo xtask test` are the README's two commands:
//! each installs what it needs first (see `setup`).
mod bench;
mod bench_history;
mod bench_page;
mod dist;
mod fuzz;
mod kernels;
mod link_order;
mod run;
mod setup;
mod smoke;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "moonfrp developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces (nightly rust-src, bpf-linker) and, with --test-deps, the
    /// Debian packages the tests use. Idempotent; fast when everything is there.
    Setup {
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the agent (release) with its kernel programs.
    Build,
    /// Set up, build, and run the agent here. Without agent arguments it uses
    /// examples/moonfrp.toml; anything after `--` goes to `moonfrp-agent run`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure the agent's overhead: CPU and memory, kernel hook cost, datapath A/B, scrape
    /// (root). Prints a table and writes overhead.json.
    BenchOverhead(bench::Opts),
    /// Measure the history store: write cost and disk bytes per day at 100 and 1,000 tunnels,
    /// query times, and the agent's memory with a day stored (root). Writes history.json.
    BenchHistory(bench_history::Opts),
    /// Measure what the web page costs the browser: Chromium's main-thread time on the tunnel
    /// table (default rows and every row) and a tunnel's page, 1,000 tunnels (root).
    BenchPage(bench_page::Opts),
    /// Build the Debian package and a tarball (target/dist): the release agent, its hardened
    /// systemd unit, its default config.
    Dist(dist::Opts),
    /// Record which functions a running agent executes (uprobes on a copy of the release
    /// binary under a production-like workload) into moonfrp-agent/link-order.txt, which the
    /// release link places first and together (root).
    LinkOrder(link_order::Opts),
    /// The floor process of bench-overhead's CPU table (not for direct use).
    #[command(hide = true)]
    BenchFloor {
        #[arg(long)]
        interval_ms: u64,
    },
    /// Build the libFuzzer targets of fuzz/ and run each for --seconds (default 20) from its
    /// corpus; fails on a crash, a timeout or an out-of-memory.
    Fuzz(fuzz::Opts),
    /// Boot other kernels (Debian 12's 6.1) under QEMU with the release agent and run the
    /// accuracy checks inside; prints a table kernel × check (root).
    TestKernels(kernels::Opts),
    /// Set up (with test packages), then run every test: unit tests and the privileged
    /// integration tests (needs root).
    Test,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup { test_deps } => setup::all(test_deps),
        Command::Build => setup::toolchain()
            .and_then(|()| run::build_release())
            .map(|_| ()),
        Command::Run { args } => run::run(&args),
        Command::Dist(opts) => setup::toolchain()
            .and_then(|()| dist::dist(&opts))
            .map(|_| ()),
        Command::BenchOverhead(opts) => bench::run(&opts).map(|_| ()),
        Command::BenchHistory(opts) => bench_history::run(&opts).map(|_| ()),
        Command::BenchPage(opts) => setup::all(true)
            .and_then(|()| bench_page::run(&opts))
            .map(|_| ()),
        Command::BenchFloor { interval_ms } => {
            bench::floor::run(std::time::Duration::from_millis(interval_ms))
        }
        Command::LinkOrder(opts) => link_order::run(&opts),
        Command::Fuzz(opts) => setup::toolchain().and_then(|()| fuzz::run(&opts)).map(drop),
        Command::TestKernels(opts) => {
            setup::toolchain().and_then(|()| kernels::run(&opts).map(drop))
        }
        Command::Test => test::all(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
