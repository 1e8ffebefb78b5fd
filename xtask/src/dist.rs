//! `cargo xtask dist`: a Debian package (built with dpkg-deb) and a plain tarball for other
//! distributions, from the release agent, its hardened systemd unit and its default config
//! (`deploy/package/`).
use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use clap::Args;

use crate::{
    run::{build_release, root},
    setup::sh,
};

#[derive(Args, Debug)]
pub struct Opts {
    /// Package this agent binary instead of building the release one (the tests package the
    /// binary they test).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Where to write the package and the tarball [default: target/dist].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

const PACKAGE: &str = "moonfrp-agent";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a package holds besides DEBIAN/: (path in the package, source, mode).
fn payload(bin: &Path) -> Vec<(&'static str, PathBuf, u32)> {
    let deploy = root().join("deploy");
    vec![
        ("usr/bin/moonfrp-agent", bin.to_owned(), 0o755),
        (
            "lib/systemd/system/moonfrp-agent.service",
            deploy.join("package/moonfrp-agent.service"),
            0o644,
        ),
        (
            "etc/moonfrp/moonfrp.toml",
            deploy.join("package/moonfrp.toml"),
            0o640,
        ),
        (
            "usr/share/doc/moonfrp-agent/README.md",
            root().join("README.md"),
            0o644,
        ),
        (
            "usr/share/doc/moonfrp-agent/examples/prometheus-alerts.yml",
            deploy.join("prometheus/alerts.yml"),
            0o644,
        ),
    ]
}

/// The newest GLIBC_x.y symbol version the binary needs (for `Depends: libc6 (>= x.y)`).
fn glibc_needed(bin: &Path) -> String {
    let out = Command::new("objdump").arg("-T").arg(bin).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut versions: Vec<Vec<u32>> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .map(|v| v.split('.').filter_map(|n| n.parse().ok()).collect())
        .collect();
    versions.sort();
    versions.last().map_or_else(
        || "2.34".to_owned(),
        |v| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(".")
        },
    )
}

fn arch() -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("dpkg --print-architecture (dpkg is needed to build the package)")?;
    ensure!(out.status.success(), "dpkg --print-architecture failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn copy(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn control(arch: &str, glibc: &str, installed_kib: u64) -> String {
    let mut c = String::new();
    let _ = write!(
        c,
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: moonfrp developers <moonfrp@users.noreply.github.com>\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6 (>= {glibc}), passwd\n\
         Recommends: systemd\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://github.com/moonfrp/moonfrp\n\
         Description: eBPF-assisted metrics agent for hosts that run FRP tunnels\n \
         Counts each FRP tunnel's bytes, packets, connections, refused connections,\n \
         resets, retransmits and peers in the kernel (eBPF), reads FRP's own view\n \
         (config files, frps dashboard and frpc admin APIs), and serves it all as\n \
         Prometheus/OpenMetrics, with 24 h of history and alert rules. Runs as the\n \
         unprivileged moonfrp user with four capabilities.\n"
    );
    c
}

/// Builds the package and the tarball; their paths.
pub fn dist(opts: &Opts) -> anyhow::Result<Vec<PathBuf>> {
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => build_release()?,
    };
    ensure!(bin.is_file(), "no agent binary at {}", bin.display());
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root().join("target/dist"));
    std::fs::create_dir_all(&out)?;
    let arch = arch()?;
    let files = payload(&bin);

    // The Debian package.
    let stage = tempfile::tempdir()?;
    let s = stage.path();
    let mut bytes = 0;
    for (path, src, mode) in &files {
        copy(src, &s.join(path), *mode)?;
    }
    // Shipped stripped, as Debian's own packages are (dh_strip): symbols and debug info stay
    // in the build tree.
    let staged_bin = s.join("usr/bin/moonfrp-agent");
    sh(Command::new("strip")
        .arg("--strip-unneeded")
        .arg(&staged_bin))?;
    for (path, ..) in &files {
        bytes += std::fs::metadata(s.join(path))?.len();
    }
    let debian = s.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        control(&arch, &glibc_needed(&bin), bytes.div_ceil(1024)),
    )?;
    std::fs::write(debian.join("conffiles"), "/etc/moonfrp/moonfrp.toml\n")?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &root().join("deploy/package/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    // Directories 0755 whatever the umask (dpkg-deb checks DEBIAN/'s).
    for dir in walk_dirs(s)? {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("{PACKAGE}_{VERSION}_{arch}.deb"));
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(s)
        .arg(&deb))?;

    // The tarball: the same files in one directory, with an install note.
    let name = format!("{PACKAGE}-{VERSION}-linux-{arch}");
    let tar_stage = tempfile::tempdir()?;
    let t = tar_stage.path().join(&name);
    for (path, _, mode) in &files {
        let file = Path::new(path).file_name().context("a file name")?;
        copy(&s.join(path), &t.join(file), *mode)?;
    }
    std::fs::write(t.join("INSTALL"), INSTALL)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    sh(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(tar_stage.path())
        .arg(&name))?;
    for p in [&deb, &tarball] {
        println!("{}", p.display());
    }
    Ok(vec![deb, tarball])
}

fn walk_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk_dirs(&p)?);
        }
    }
    Ok(out)
}

const INSTALL: &str = "\
moonfrp-agent: install by hand (the Debian package does the same)

  install -m 0755 moonfrp-agent /usr/bin/moonfrp-agent
  useradd --system --user-group --home-dir /var/lib/moonfrp --no-create-home \\
      --shell /usr/sbin/nologin moonfrp
  install -d -m 0750 -o root -g moonfrp /etc/moonfrp
  install -m 0640 -o root -g moonfrp moonfrp.toml /etc/moonfrp/moonfrp.toml
  install -m 0644 moonfrp-agent.service /etc/systemd/system/moonfrp-agent.service
  systemctl daemon-reload
  systemctl enable --now moonfrp-agent
  curl -s localhost:9477/metrics | head

Remove: systemctl disable --now moonfrp-agent; moonfrp-agent cleanup -c /etc/moonfrp/moonfrp.toml
(removes the pinned kernel maps: the programs detach); then delete the files above.
See README.md.
";
