//! Least privilege: the agent as an unprivileged uid with exactly the packaged unit's
//! capabilities (setpriv: ambient, inheritable and bounding sets), counting exact bytes, reading
//! a root-owned frps stand-in's process metrics, pinning its maps, writing history and serving
//! the API; without one of the four capabilities it says which, and what it costs.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use moonfrp_tests::{AgentCmd, Daemon, agent_bin, free_port, http_get, send_tcp, workspace};

/// An unprivileged uid without a passwd entry (nothing else on the host uses it).
const UID: u32 = 47_231;

/// The capabilities of `deploy/package/moonfrp-agent.service`, as setpriv names them.
fn unit_caps() -> Vec<String> {
    let unit =
        std::fs::read_to_string(workspace().join("deploy/package/moonfrp-agent.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    assert_eq!(line, bounding, "ambient and bounding sets differ");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `setpriv` arguments that run a command as [`UID`] with exactly `caps`.
fn setpriv(caps: &[String]) -> Vec<String> {
    let set = if caps.is_empty() {
        "-all".to_owned()
    } else {
        format!("-all,+{}", caps.join(",+"))
    };
    vec![
        "setpriv".into(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

/// A copy of the agent any user can execute, and a data directory [`UID`] owns.
fn prepared() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("moonfrp-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(UID), Some(UID)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    (dir, bin, data)
}

/// tracefs and bpffs mounted, as systemd mounts them at boot (the agent, without
/// CAP_SYS_ADMIN, cannot).
fn kernel_filesystems() {
    for (fs, path) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(" - {fs} ")));
        if !mounted {
            let ok = Command::new("mount")
                .args(["-t", fs, fs, path])
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot mount {fs} at {path}");
        }
    }
}

/// A root-owned process named frps holding a few files open.
fn frps_stand_in(dir: &Path) -> Daemon {
    let script = dir.join("frps");
    std::fs::write(
        &script,
        "#!/bin/sh\nexec 3</etc/hostname 4</etc/hostname 5</etc/hostname\nwhile :; do sleep 1; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    Daemon::start(script.to_str().unwrap(), &["-c", "/etc/frp/frps.toml"])
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap()
}

/// The unit's `ExecStartPre` (as root: the pin directory on systemd's mode-0700 bpffs).
const PIN_DIR_PRE: &str =
    "ExecStartPre=+/usr/bin/install -d -o moonfrp -g moonfrp -m 0700 /sys/fs/bpf/moonfrp";

#[test]
fn the_unit_capabilities_are_enough_as_an_unprivileged_user() {
    kernel_filesystems();
    let caps = unit_caps();
    assert_eq!(caps, ["bpf", "perfmon", "net_admin", "dac_read_search"]);
    let unit =
        std::fs::read_to_string(workspace().join("deploy/package/moonfrp-agent.service")).unwrap();
    assert!(unit.lines().any(|l| l == PIN_DIR_PRE), "{unit}");
    let (dir, bin, data) = prepared();
    let _frps = frps_stand_in(dir.path());
    let pins = "/sys/fs/bpf/moonfrp";
    let port = free_port();
    // As under systemd: a private bpffs of mode 0700 (systemd's mount options), the pin
    // directory made by root for the agent's user (the unit's ExecStartPre), then the agent
    // as that user with the unit's capabilities.
    let setup = format!(
        "mount -t bpf -o mode=700 bpf /sys/fs/bpf && install -d -o {UID} -g {UID} -m 0700 {pins} && exec {} \"$0\" \"$@\"",
        setpriv(&caps).join(" ")
    );
    let wrapper = [
        "unshare".to_owned(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        setup,
    ];
    let agent = AgentCmd::new(&["-t", &format!("web={port}"), "--pin-dir", pins])
        .bin(&bin)
        .wrapper(&wrapper.iter().map(String::as_str).collect::<Vec<_>>())
        .data_dir(&data)
        .start();
    // It really is that user with those capabilities, and nothing else.
    let uids = status_field(agent.pid(), "Uid:");
    assert!(
        uids.split_whitespace().all(|u| u == UID.to_string()),
        "{uids}"
    );
    let cap_eff = u64::from_str_radix(&status_field(agent.pid(), "CapEff:"), 16).unwrap();
    let want = (1 << 39) | (1 << 38) | (1 << 12) | (1 << 2);
    assert_eq!(cap_eff, want, "CapEff {cap_eff:x}");
    let log = agent.log();
    assert_eq!(log.matches("probe attached").count(), 6, "{log}");

    // Exact payload bytes on a watched port.
    send_tcp(port, 123_457);
    agent.wait_for("the bytes counted", |m| {
        m.tunnel("web", "moonfrp_tunnel_receive_payload_bytes_total") == 123_457.0
    });
    // The root-owned frps stand-in's process metrics, open files included.
    let m = agent.wait_for("the frps stand-in seen", |m| {
        m.get("moonfrp_process_up", &[("process", "frps")]) == Some(1.0)
    });
    let fds = m
        .get("moonfrp_process_open_fds", &[("process", "frps")])
        .unwrap();
    assert!(fds >= 6.0, "open fds of the root-owned frps: {fds}");
    // History written, API served, maps pinned by that user.
    let m = agent.wait_for("history written", |m| {
        m.get("moonfrp_history_writes_total", &[("result", "ok")])
            .is_some_and(|v| v > 0.0)
    });
    assert_eq!(m.get("moonfrp_history_up", &[]), Some(1.0));
    let (status, _, body) = http_get(agent.addr, "/api/v1/status", None).unwrap();
    assert_eq!(status, 200, "{body}");
    // Its pins, in its own mount namespace (under its layout's `v<N>` directory).
    let root = PathBuf::from(format!("/proc/{}/root{pins}", agent.pid()));
    let pinned = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
        .map(|e| e.path().join("maps/TRAFFIC"))
        .find(|p| p.exists())
        .unwrap_or_else(|| root.join("v?/maps/TRAFFIC"));
    assert!(pinned.exists(), "{} missing", pinned.display());
}

#[test]
fn without_one_capability_the_agent_says_which() {
    kernel_filesystems();
    let caps = unit_caps();
    let (_dir, bin, data) = prepared();
    // The three it cannot run without: it exits and names the missing one.
    for missing in ["bpf", "perfmon", "net_admin"] {
        let rest: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let out = Command::new("setpriv")
            .args(&setpriv(&rest)[1..])
            .arg(&bin)
            .args(["run", "-t", "web=8080", "--pin-dir", "", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "without {missing}: {err}");
        let name = format!("missing CAP_{}", missing.to_ascii_uppercase());
        assert!(err.contains(&name), "without {missing}: {err}");
    }
    // Without CAP_DAC_READ_SEARCH it runs, says what it cannot read, and shows it: the
    // tracepoint probes stay off (tracefs is root's) and other users' open files are unknown.
    let rest: Vec<String> = caps
        .iter()
        .filter(|c| *c != "dac_read_search")
        .cloned()
        .collect();
    let wrapper = setpriv(&rest);
    let agent = AgentCmd::new(&["-t", &format!("web={}", free_port())])
        .bin(&bin)
        .wrapper(&wrapper.iter().map(String::as_str).collect::<Vec<_>>())
        .data_dir(&data)
        .start();
    let log = agent.log();
    assert!(log.contains("CAP_DAC_READ_SEARCH"), "{log}");
    assert!(log.contains("probe not attached"), "{log}");
}
