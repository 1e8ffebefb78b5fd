//! Runs the README's run command (`cargo xtask run`) the way a new user would, scrapes it, and
//! stops it: the last step of `cargo xtask test`. It runs after the cargo test runs finish,
//! because the command builds in the same target directory.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{run::root, setup::cargo};

/// Series the scrape must show: the example config's tunnels and the agent's own process.
const EXPECTED: &[&str] = &[
    "moonfrp_tunnel_receive_bytes_total{tunnel=\"frps-transport\",port=\"7000\",proto=\"tcp\"}",
    "moonfrp_tunnel_connections_active{tunnel=\"ssh\",port=\"6000\",proto=\"tcp\"}",
    "process_cpu_seconds_total ",
    "process_resident_memory_bytes ",
];

struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for the command.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn readme_run() -> anyhow::Result<()> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    eprintln!("xtask: smoke test of the README run command on {addr}");
    // History goes to a scratch directory, not the host's /var/lib/moonfrp.
    let data = tempfile::tempdir()?;
    let child = cargo()
        .current_dir(root())
        .args([
            "xtask",
            "run",
            "--",
            "--interval",
            "1s",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            data.path().to_str().context("utf-8 temp dir")?,
        ])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start `cargo xtask run`")?;
    let mut group = Group(child);
    // Includes a release build on a fresh clone.
    let deadline = Instant::now() + Duration::from_mins(10);
    loop {
        if let Some(status) = group.0.try_wait()? {
            bail!("`cargo xtask run` exited early ({status})");
        }
        if let Ok((200, _, body)) = moonfrp_tests::http_get(addr, "/metrics", None)
            && EXPECTED.iter().all(|e| body.contains(e))
            && body.contains("moonfrp_history_writes_total{result=\"ok\"} ")
            && !body.contains("moonfrp_history_writes_total{result=\"ok\"} 0")
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "`cargo xtask run` did not serve the expected series on {addr} in time"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(group);
    println!("readme run command: serves tunnel and process series on /metrics and keeps history");
    Ok(())
}
