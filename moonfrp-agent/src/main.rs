//! `moonfrp-agent`: parse the command line, set up logging, run; errors become exit codes
//! (2: bad configuration or usage, 1: the agent could not start or failed).
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser;
use moonfrp_agent::{
    agent,
    cli::{Cli, Command},
};
use tracing_subscriber::EnvFilter;

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints a client command's output and error, and exits with its code.
fn finish((code, out, err): (u8, String, String)) -> ExitCode {
    print!("{out}");
    if !err.is_empty() {
        eprintln!("moonfrp-agent: {err}");
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Run(args) | Command::Check(args) => args,
        Command::BenchHistory(b) => {
            return match moonfrp_agent::history::bench::run(b) {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::to_string(&report).expect("the report serializes")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moonfrp-agent: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Inspect(a) => return finish(moonfrp_agent::view::inspect::run(a)),
        Command::Status(a) => return finish(moonfrp_agent::view::status::run(a)),
        Command::Top(a) => {
            return match moonfrp_agent::view::top::run(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("moonfrp-agent: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::History(h) => {
            return match moonfrp_agent::history::cli::run(h) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moonfrp-agent: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
    };
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moonfrp-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::History(_)
        | Command::BenchHistory(_)
        | Command::Status(_)
        | Command::Top(_)
        | Command::Inspect(_) => {
            unreachable!("handled above")
        }
        Command::Check(_) => {
            println!(
                "configuration is valid: listen {}, interval {:?}, {} tunnel(s)",
                config.listen,
                config.interval,
                config.tunnels.len()
            );
            for t in &config.tunnels {
                println!("  {t} (from {})", t.source.as_str());
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(&config.log_level);
            match agent::run(config, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("moonfrp-agent: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
