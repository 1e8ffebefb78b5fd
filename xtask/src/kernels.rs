//! `cargo xtask test-kernels`: boots the kernels operators run under QEMU (TCG; KVM guests crash
//! on this machine kind) with the release agent, the libraries it links, busybox and our
//! `kernel_check` client in an initramfs; inside, the agent watches the check's ports and the
//! check prints one `CHECK` line per verdict on the serial console; here they become a table
//! kernel × check. A kernel that cannot be fetched or booted fails the run.
//!
//! Each boot runs `tests/src/bin/kernel_check.rs` twice: against an agent with everything, then
//! against one that cannot read the kernel's BTF (how it degrades); the exposition it brings back
//! is checked with promtool here. `cargo xtask test` runs this for every kernel of the list; the
//! host's own kernel is booted too when its image is readable (`/boot/vmlinuz-$(uname -r)`).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{run::root, setup};

/// A kernel to boot: its name in the table, the Debian package that carries it and the suite
/// whose index lists it, and what the kernel lacks (given to `kernel_check`, which then expects
/// the degradation the README states instead of the full count).
struct Kernel {
    name: &'static str,
    package: &'static str,
    suite: &'static str,
    lacks: &'static [&'static str],
}

/// The kernels the suite boots: Debian 12's (what most FRP servers here run) and Debian 11's
/// (5.10: before drop reasons and before 5.11's memory accounting). Both come from a suite's
/// main index (its point releases), not from security updates that replace packages.
const KERNELS: &[Kernel] = &[
    Kernel {
        name: "debian-12-6.1",
        package: "linux-image-6.1.0-50-cloud-amd64-unsigned",
        suite: "bookworm",
        lacks: &[],
    },
    Kernel {
        name: "debian-11-5.10",
        package: "linux-image-5.10.0-32-cloud-amd64-unsigned",
        suite: "bullseye",
        lacks: &["drop-reasons"],
    },
];

/// The name of the host's kernel in the table.
const HOST: &str = "host";

#[derive(clap::Args, Default)]
pub struct Opts {
    /// Only these kernels (by name); default all.
    #[arg(long)]
    kernel: Vec<String>,
    /// Add N to every expectation inside the VM: the run must fail (the harness's self-check).
    #[arg(long, default_value_t = 0)]
    off_by: u64,
}

/// Verdicts: check name → kernel name → `want=… got=… ok|FAILED`.
type Table = BTreeMap<String, BTreeMap<String, String>>;

/// Boots every kernel asked for and prints the table; fails when a check fails anywhere.
/// Returns how many checks held.
pub fn run(opts: &Opts) -> anyhow::Result<u64> {
    setup::debian_packages(&["qemu-system-x86", "busybox-static", "cpio", "prometheus"])?;
    let agent = crate::run::build_release()?;
    setup::sh(setup::cargo().args(["build", "-p", "moonfrp-tests", "--bin", "kernel_check"]))?;
    let check = root().join("target/debug/kernel_check");
    let work = root().join("target/kernels");
    std::fs::create_dir_all(&work)?;
    let initrd = initramfs(&agent, &check, &work, opts.off_by)?;
    let wanted = |name: &str| opts.kernel.is_empty() || opts.kernel.iter().any(|n| n == name);
    let mut images = Vec::new();
    for k in KERNELS.iter().filter(|k| wanted(k.name)) {
        images.push((k.name, fetch(k, &work)?, k.lacks));
    }
    if wanted(HOST) {
        match host_image() {
            Ok(image) => images.push((HOST, image, &[])),
            Err(why) => eprintln!("xtask: the host's kernel is not booted: {why}"),
        }
    }
    ensure!(!images.is_empty(), "no kernel named {:?}", opts.kernel);
    let mut table = Table::new();
    for (name, vmlinuz, lacks) in &images {
        let console = boot(vmlinuz, &initrd, lacks)?;
        let log = work.join(format!("{name}.console.log"));
        std::fs::write(&log, &console)?;
        eprintln!("xtask: {name} console: {}", log.display());
        for (check, verdict) in verdicts(&console, &work.join(format!("{name}.metrics")))
            .with_context(|| format!("{name} (console: {})", log.display()))?
        {
            table
                .entry(check)
                .or_default()
                .insert((*name).to_owned(), verdict);
        }
    }
    let names: Vec<&str> = images.iter().map(|(n, ..)| *n).collect();
    print(&table, &names);
    let failed = table
        .values()
        .flat_map(BTreeMap::values)
        .filter(|v| !v.ends_with(" ok"))
        .count();
    if failed > 0 {
        bail!("{failed} check(s) failed on a kernel (table above)");
    }
    Ok(table.values().map(|k| k.len() as u64).sum())
}

/// The host kernel's image, when it can be read.
fn host_image() -> Result<PathBuf, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("cannot read its release: {e}"))?;
    let image = PathBuf::from(format!("/boot/vmlinuz-{}", release.trim()));
    std::fs::File::open(&image)
        .map(|_| image.clone())
        .map_err(|e| format!("{}: {e}", image.display()))
}

/// The checks a boot printed, with promtool's verdict on the exposition it brought back (saved
/// at `metrics`). Fails when the console shows no verdict at all (the boot went wrong).
fn verdicts(console: &str, metrics: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut checks = parse(console);
    let tail = || {
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    ensure!(
        !checks.is_empty(),
        "no CHECK line on the console; it ends with:\n{}",
        tail()
    );
    let Some(text) = exposition(console) else {
        bail!("no exposition on the console; it ends with:\n{}", tail());
    };
    std::fs::write(metrics, &text)?;
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(metrics)?)
        .output()
        .context("promtool (Debian package prometheus)")?;
    let problems =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !problems.trim().is_empty() || !out.status.success() {
        eprintln!("xtask: promtool on {}:\n{problems}", metrics.display());
    }
    let clean = out.status.success() && problems.trim().is_empty();
    checks.insert(
        "promtool_check_metrics".into(),
        format!(
            "want=clean got={} {}",
            if clean { "clean" } else { "problems" },
            if clean { "ok" } else { "FAILED" }
        ),
    );
    Ok(checks)
}

/// The text between `---- metrics ----` and `---- end metrics ----`, without the console's `\r`.
fn exposition(console: &str) -> Option<String> {
    let mut lines = console.lines().map(|l| l.trim_end_matches('\r'));
    lines.find(|l| *l == "---- metrics ----")?;
    let mut out = String::new();
    for l in lines {
        if l == "---- end metrics ----" {
            return Some(out);
        }
        out.push_str(l);
        out.push('\n');
    }
    None
}

/// The kernel image of `k`, downloaded from the Debian archive once.
fn fetch(k: &Kernel, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join(k.name);
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir.join("boot"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let Some(v) = find(&dir) {
        return Ok(v);
    }
    std::fs::create_dir_all(&dir)?;
    let apt = apt_options(k.suite, work)?;
    setup::sh(
        Command::new("apt-get")
            .args(&apt)
            .args(["download", k.package])
            .current_dir(&dir),
    )
    .with_context(|| {
        format!(
            "cannot download {} from Debian {}'s archive",
            k.package, k.suite
        )
    })?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    setup::sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    find(&dir).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
}

/// apt options that read only `suite`'s main index, kept under `work` (fetched once), whatever
/// this machine's own sources are.
fn apt_options(suite: &str, work: &Path) -> anyhow::Result<Vec<String>> {
    let dir = work.join(format!("apt-{suite}"));
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let sources = dir.join("sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
        ),
    )?;
    let opts: Vec<String> = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_owned(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "Debug::NoLocking=1".to_owned(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_owned(), o])
    .collect();
    let fetched = std::fs::read_dir(dir.join("lists"))?
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
    if !fetched {
        setup::sh(Command::new("apt-get").args(&opts).arg("update"))
            .with_context(|| format!("cannot read Debian {suite}'s package index"))?;
    }
    Ok(opts)
}

/// The shared libraries `bin` links (from ldd), with the loader.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("ldd")?;
    ensure!(out.status.success(), "ldd {} failed", bin.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// The busybox initramfs with the agent and the check; `/init` runs them and powers off.
fn initramfs(agent: &Path, check: &Path, work: &Path, off_by: u64) -> anyhow::Result<PathBuf> {
    let stage = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "usr/bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox")).context("busybox-static")?;
    std::fs::copy(agent, stage.join("usr/bin/moonfrp-agent"))?;
    std::fs::copy(check, stage.join("usr/bin/kernel_check"))?;
    let mut libs = libraries(agent)?;
    libs.extend(libraries(check)?);
    libs.sort();
    libs.dedup();
    for lib in libs {
        let to = stage.join(lib.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().expect("a library has a directory"))?;
        std::fs::copy(&lib, &to).with_context(|| format!("copy {}", lib.display()))?;
    }
    // The ports the agent watches inside: kernel_check's.
    let out = Command::new(check).arg("--tunnels").output()?;
    ensure!(out.status.success(), "{} --tunnels failed", check.display());
    let tunnels = String::from_utf8(out.stdout)?
        .lines()
        .fold(String::new(), |mut s, t| {
            s.push_str(" -t ");
            s.push_str(t);
            s
        });
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
echo "MOONFRP-KERNEL $(uname -r)"
moonfrp-agent run{tunnels} -i 1s -l 127.0.0.1:9477 --pin-dir "" --data-dir /tmp/data > /tmp/agent.log 2>&1 &
i=0
while ! wget -q -O /dev/null http://127.0.0.1:9477/readyz 2>/dev/null; do
  i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.2
done
lacks=$(sed -n 's/.*moonfrp\.lacks=\([^ ]*\).*/\1/p' /proc/cmdline)
kernel_check 127.0.0.1:9477 --off-by {off_by} --lacks "$lacks"
echo "MOONFRP-CHECK-EXIT $?"
echo "---- agent log ----"
cat /tmp/agent.log
kill %1; wait
# The same without the kernel's BTF (what needs it must say so; the rest must count).
mount --bind /dev/null /sys/kernel/btf/vmlinux
moonfrp-agent run{tunnels} -i 1s -l 127.0.0.1:9478 --pin-dir "" --data-dir /tmp/data2 > /tmp/agent2.log 2>&1 &
i=0
while ! wget -q -O /dev/null http://127.0.0.1:9478/readyz 2>/dev/null; do
  i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.2
done
kernel_check 127.0.0.1:9478 --without-btf
echo "MOONFRP-CHECK-EXIT $?"
echo "---- agent log without BTF ----"
cat /tmp/agent2.log
poweroff -f
"#
    );
    let init_path = stage.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let out = work.join("initramfs.cpio.gz");
    setup::sh(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > {}",
                out.display()
            ))
            .current_dir(&stage),
    )?;
    Ok(out)
}

/// Boots `vmlinuz` with `initrd` and returns what the serial console printed; `lacks` goes on
/// the kernel command line for `/init` to hand to kernel_check.
fn boot(vmlinuz: &Path, initrd: &Path, lacks: &[&str]) -> anyhow::Result<String> {
    eprintln!("xtask: booting {} under QEMU (TCG)", vmlinuz.display());
    let out = Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 moonfrp.lacks={}",
            lacks.join(",")
        ))
        .output()
        .context("qemu-system-x86_64")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CHECK name want=… got=… ok|FAILED` lines: name → the rest.
fn parse(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("CHECK "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, rest)| (name.to_owned(), rest.to_owned()))
        .collect()
}

fn print(table: &Table, kernels: &[&str]) {
    let cell = |check: &BTreeMap<String, String>, k: &str| {
        check.get(k).cloned().unwrap_or_else(|| "-".into())
    };
    let widths: Vec<usize> = kernels
        .iter()
        .map(|k| {
            table
                .values()
                .map(|c| cell(c, k).len())
                .chain([k.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let row = |first: &str, cells: Vec<String>| {
        let mut line = format!("{first:<34}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(line, "  {c:<w$}");
        }
        println!("{}", line.trim_end());
    };
    row("check", kernels.iter().map(|k| (*k).to_owned()).collect());
    for (check, by_kernel) in table {
        row(check, kernels.iter().map(|k| cell(by_kernel, k)).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console of a real boot of Debian 12's 6.1 with `--off-by 1` (every expectation one
    /// more than the truth), kept as a fixture: the harness must call every check failed.
    #[test]
    fn a_run_expecting_one_more_fails() {
        let console = include_str!("../fixtures/console-6.1-off-by-1.log");
        let dir = tempfile::tempdir().unwrap();
        let checks = verdicts(console, &dir.path().join("m")).unwrap();
        let failed: Vec<&String> = checks
            .iter()
            .filter(|(_, v)| v.ends_with("FAILED"))
            .map(|(k, _)| k)
            .collect();
        // Everything kernel_check counts is off by one; the BTF-less run and promtool are not.
        assert!(failed.len() >= 10, "{checks:?}");
        assert!(
            failed.iter().all(|k| !k.starts_with("nobtf_")),
            "{failed:?}"
        );
        assert!(checks["promtool_check_metrics"].ends_with(" ok"));
        assert!(verdicts("no checks here", &dir.path().join("n")).is_err());
    }

    #[test]
    fn a_failed_check_is_read_as_failed() {
        let console = "noise\r\nCHECK tcp4_receive_payload_bytes want=123457 got=123456 FAILED\r\nCHECK udp4_receive_payload_bytes want=1000 got=1000 ok\r\n";
        let c = parse(console);
        assert_eq!(c.len(), 2);
        assert!(c["tcp4_receive_payload_bytes"].ends_with("FAILED"));
        assert!(c["udp4_receive_payload_bytes"].ends_with(" ok"));
    }
}
