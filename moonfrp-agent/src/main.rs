//! `moonfrp-agent`: parse the command line, set up logging, run; errors become exit codes
//! (2: bad configuration or usage, 1: the agent could not start or failed).
use std::process::ExitCode;

use clap::Parser;
use moonfrp_agent::{
    agent,
    cli::{Cli, Command},
    logging,
};

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
    if !matches!(cli.command, Command::Run(_)) {
        // A client command piped into `head` ends quietly when the pipe closes, as Unix tools
        // do, instead of panicking on a failed print. The agent itself keeps ignoring SIGPIPE.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let args = match &cli.command {
        Command::Run(args) | Command::Check(args) | Command::Cleanup(args) => args,
        Command::Inspect(a) => return finish(moonfrp_agent::client::inspect::run(a)),
        Command::Status(a) => return finish(moonfrp_agent::client::status::run(a)),
        Command::Logs(a) => return finish(moonfrp_agent::client::logs::run(a)),
        Command::AlertTest(a) => {
            let config = match moonfrp_agent::config::Config::load(
                a.config.as_deref(),
                &moonfrp_agent::config::Overrides::default(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("moonfrp-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            return finish(moonfrp_agent::alert_test::run(
                &config,
                a.channel.as_deref(),
                a.json,
            ));
        }
        Command::Top(a) => {
            return match moonfrp_agent::client::top::run(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("moonfrp-agent: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::History(h) => {
            return match moonfrp_agent::client::history::run(h) {
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
        | Command::Status(_)
        | Command::Top(_)
        | Command::Inspect(_)
        | Command::Logs(_)
        | Command::AlertTest(_) => {
            unreachable!("handled above")
        }
        Command::Cleanup(_) => finish(moonfrp_agent::ebpf::pins::cleanup(&config.start.kernel)),
        Command::Check(_) => {
            let (report, ok) = moonfrp_agent::check::report(&config);
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Command::Run(args) => {
            logging::init(&config.start.log_level);
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
