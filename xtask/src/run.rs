//! `cargo xtask build` / `run`: the release agent with its kernel programs.
use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::setup::{self, cargo, sh};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// Builds the release agent and returns its path.
pub fn build_release() -> anyhow::Result<PathBuf> {
    sh(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", "moonfrp-agent"]))?;
    Ok(root().join("target/release/moonfrp-agent"))
}

/// Builds an example of the agent's library in release mode; its path.
pub fn build_release_example(name: &str) -> anyhow::Result<PathBuf> {
    sh(cargo().current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "moonfrp-agent",
        "--example",
        name,
    ]))?;
    Ok(root().join("target/release/examples").join(name))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::toolchain()?;
    let agent = build_release()?;
    let mut cmd = Command::new(&agent);
    cmd.arg("run");
    let has_tunnels = args.iter().any(|a| {
        matches!(a.as_str(), "-c" | "--config" | "-t" | "--tunnel")
            || a.starts_with("--config=")
            || a.starts_with("--tunnel=")
    });
    if !has_tunnels {
        let example = root().join("examples/moonfrp.toml");
        eprintln!(
            "xtask: no --config or --tunnel given: using {}",
            example.display()
        );
        cmd.arg("--config").arg(example);
    }
    // A trial in a terminal leaves nothing behind: no pins unless asked for.
    if !args
        .iter()
        .any(|a| a == "--pin-dir" || a.starts_with("--pin-dir="))
    {
        cmd.args(["--pin-dir", ""]);
    }
    cmd.args(args);
    eprintln!(
        "xtask: starting {} (Ctrl-C stops it and detaches everything)",
        agent.display()
    );
    Err(cmd.exec()).context("cannot start the agent")
}
