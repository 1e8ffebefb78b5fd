//! `cargo xtask test`: every test in the workspace. Unit tests first (no privileges), then the
//! integration tests in `tests/`, which start the real agent, load its programs and send real
//! traffic (root), including a run of the README's `cargo xtask run` command.
use anyhow::ensure;

use crate::{
    run::root,
    setup::{self, cargo, sh},
};

pub fn all() -> anyhow::Result<()> {
    setup::all(true)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the integration tests load kernel programs: run `cargo xtask test` as root (sudo -E)"
    );

    let ws = root();
    sh(cargo().current_dir(&ws).args([
        "test",
        "-p",
        "moonfrp-common",
        "-p",
        "moonfrp-agent",
        "-p",
        "xtask",
    ]))?;
    sh(cargo()
        .current_dir(&ws)
        .args(["build", "-p", "moonfrp-agent"]))?;
    sh(cargo()
        .current_dir(&ws)
        .args(["test", "-p", "moonfrp-tests", "--", "--test-threads=2"])
        .env("MOONFRP_AGENT_BIN", ws.join("target/debug/moonfrp-agent"))
        .env("MOONFRP_WORKSPACE", &ws))?;
    Ok(())
}
