//! The package: `cargo xtask dist` builds it; dpkg installs it into a scratch root (its
//! maintainer scripts run outside, with DPKG_ROOT); its files, modes, user and conffile are
//! checked, an edited conffile survives a reinstall, and removal and purge leave what they
//! should. The unit passes `systemd-analyze verify` and its `security` exposure is bounded.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use moonfrp_tests::{agent_bin, outcome, workspace};

fn run(cmd: &mut Command) -> String {
    let (ok, text) = outcome(cmd);
    assert!(ok, "{cmd:?}: {text}");
    text
}

/// `cargo xtask dist --bin <the tested agent>`: (package, tarball).
fn build(out: &Path) -> (PathBuf, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let printed = run(Command::new(cargo)
        .current_dir(workspace())
        .args(["xtask", "dist", "--bin"])
        .arg(agent_bin())
        .arg("--out")
        .arg(out));
    let find = |suffix: &str| {
        printed
            .lines()
            .find(|l| l.ends_with(suffix))
            .map_or_else(|| panic!("no {suffix} in: {printed}"), PathBuf::from)
    };
    (find(".deb"), find(".tar.gz"))
}

/// An empty root dpkg can install into: its database, and the account files useradd edits.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "etc",
        "usr/sbin",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    for f in ["passwd", "group", "shadow", "gshadow", "login.defs"] {
        std::fs::copy(Path::new("/etc").join(f), r.join("etc").join(f)).unwrap();
    }
    root
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--force-confold",
            "--log=/dev/null",
        ])
        .args(args))
}

/// (uid, gid, shell) of a user in the root's passwd.
fn user(root: &Path, name: &str) -> Option<(u32, u32, String)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[0] == name).then(|| {
            (
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[6].to_owned(),
            )
        })
    })
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn the_package_installs_upgrades_and_purges_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let (deb, tarball) = build(out.path());
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: moonfrp-agent"), "{info}");
    assert!(info.contains("Depends: libc6 (>= 2."), "{info}");
    let listing = run(Command::new("tar").arg("-tzf").arg(&tarball));
    for f in [
        "moonfrp-agent",
        "moonfrp-agent.service",
        "moonfrp.toml",
        "INSTALL",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("/{f}"))),
            "{f}: {listing}"
        );
    }

    let root = scratch_root();
    let r = root.path();
    let deb = deb.to_str().unwrap();
    dpkg(r, &["-i", deb]);

    // Files, modes, owners.
    let (uid, gid, shell) = user(r, "moonfrp").expect("the moonfrp user");
    assert!(uid < 1000 && uid > 0, "a system uid: {uid}");
    assert!(shell.ends_with("nologin"), "{shell}");
    assert!(
        std::fs::read_to_string(r.join("etc/group"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with(&format!("moonfrp:x:{gid}:")))
    );
    assert_eq!(mode_owner(&r.join("usr/bin/moonfrp-agent")), (0o755, 0, 0));
    assert_eq!(
        mode_owner(&r.join("lib/systemd/system/moonfrp-agent.service")),
        (0o644, 0, 0)
    );
    assert_eq!(mode_owner(&r.join("etc/moonfrp")), (0o750, 0, gid));
    assert_eq!(
        mode_owner(&r.join("etc/moonfrp/moonfrp.toml")),
        (0o640, 0, gid)
    );
    assert_eq!(mode_owner(&r.join("var/lib/moonfrp")), (0o700, uid, gid));
    let installed = run(Command::new(r.join("usr/bin/moonfrp-agent")).arg("--version"));
    assert!(installed.starts_with("moonfrp-agent "), "{installed}");
    // The default config is valid and discovers FRP from /etc/frp.
    let check = run(Command::new(r.join("usr/bin/moonfrp-agent"))
        .args(["check", "--config"])
        .arg(r.join("etc/moonfrp/moonfrp.toml")));
    assert!(check.contains("configuration is valid"), "{check}");
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--root={}", r.display()))
        .args(["--showformat=${Conffiles}", "--show", "moonfrp-agent"]));
    assert!(
        conffiles.contains("/etc/moonfrp/moonfrp.toml"),
        "{conffiles}"
    );

    // An edited conffile survives a reinstall (an upgrade); the user is not made twice.
    let config = r.join("etc/moonfrp/moonfrp.toml");
    let mut edited = std::fs::read_to_string(&config).unwrap();
    edited.push_str("\n# edited by the operator\n");
    std::fs::write(&config, &edited).unwrap();
    dpkg(r, &["-i", deb]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert_eq!(
        passwd.lines().filter(|l| l.starts_with("moonfrp:")).count(),
        1
    );

    // Remove keeps the conffile; purge removes it and the state directory.
    dpkg(r, &["-r", "moonfrp-agent"]);
    assert!(!r.join("usr/bin/moonfrp-agent").exists());
    assert!(config.exists());
    dpkg(r, &["-P", "moonfrp-agent"]);
    assert!(!config.exists());
    assert!(!r.join("var/lib/moonfrp").exists());
}

#[test]
fn the_unit_verifies_and_its_exposure_is_low() {
    let unit = workspace().join("deploy/package/moonfrp-agent.service");
    // verify resolves ExecStart on this host: point it at the tested binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("moonfrp-agent.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("/usr/bin/moonfrp-agent", &agent_bin().display().to_string());
    std::fs::write(&copy, text).unwrap();
    let (ok, text) = outcome(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("moonfrp-agent.service"))
        .collect();
    assert!(ok && own.is_empty(), "systemd-analyze verify: {text}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for moonfrp-agent.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    println!("systemd-analyze security: exposure {level}");
    // README, section Install, states the figure; 0 is best, 10 worst, < 4 is rated OK.
    assert!(level <= 3.0, "exposure {level}:\n{text}");
}
