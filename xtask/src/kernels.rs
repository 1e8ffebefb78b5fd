//! `cargo xtask test-kernels`: boots the kernels operators run under QEMU (TCG; KVM guests crash
//! on this machine kind) with the release agent, the libraries it links, busybox and our
//! `kernel_check` client in an initramfs; inside, the agent watches the check's ports and the
//! check prints one `CHECK` line per verdict on the serial console; here they become a table
//! kernel × check. A kernel that cannot be fetched or booted fails the run.
//!
//! First step of the kernels work: Debian 12's 6.1 cloud kernel, the accuracy checks of
//! `tests/src/bin/kernel_check.rs`; not yet in `cargo xtask test`. Found on its first run: on
//! 6.1 a refused connection is not counted (`refused_connect` fails); every other check holds.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{run::root, setup};

/// A kernel to boot: its name in the table and the Debian package that carries it.
struct Kernel {
    name: &'static str,
    package: &'static str,
}

/// The kernels the suite boots (Debian 12's own is what most FRP servers here run).
const KERNELS: &[Kernel] = &[Kernel {
    name: "debian-12-6.1",
    package: "linux-image-6.1.0-50-cloud-amd64-unsigned",
}];

/// The ports the agent watches inside (kernel_check's).
const TUNNELS: &[&str] = &[
    "tcp4=6000",
    "udp4=6001/udp",
    "tcp6=6002",
    "udp6=6003/udp",
    "refused=6004",
];

#[derive(clap::Args)]
pub struct Opts {
    /// Only these kernels (by name); default all.
    #[arg(long)]
    kernel: Vec<String>,
    /// Add N to every expectation inside the VM: the run must fail (the harness's self-check).
    #[arg(long, default_value_t = 0)]
    off_by: u64,
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    setup::debian_packages(&["qemu-system-x86", "busybox-static", "cpio"])?;
    let agent = crate::run::build_release()?;
    setup::sh(setup::cargo().args(["build", "-p", "moonfrp-tests", "--bin", "kernel_check"]))?;
    let check = root().join("target/debug/kernel_check");
    let work = root().join("target/kernels");
    std::fs::create_dir_all(&work)?;
    let initrd = initramfs(&agent, &check, &work, opts.off_by)?;
    let mut table: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut failed = false;
    for k in KERNELS
        .iter()
        .filter(|k| opts.kernel.is_empty() || opts.kernel.iter().any(|n| n == k.name))
    {
        let vmlinuz = fetch(k, &work)?;
        let console = boot(&vmlinuz, &initrd)?;
        let log = work.join(format!("{}.console.log", k.name));
        std::fs::write(&log, &console)?;
        eprintln!("xtask: {} console: {}", k.name, log.display());
        let checks = parse(&console);
        ensure!(
            !checks.is_empty(),
            "{}: no CHECK line on the console; it ends with:\n{}",
            k.name,
            console
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        for (name, verdict) in checks {
            failed |= !verdict.ends_with(" ok");
            table
                .entry(name)
                .or_default()
                .insert(k.name.to_owned(), verdict);
        }
    }
    print(&table);
    if failed {
        bail!("a check failed on a kernel (table above)");
    }
    Ok(())
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
    setup::sh(
        Command::new("apt-get")
            .args(["download", k.package])
            .current_dir(&dir),
    )
    .with_context(|| format!("cannot download {} from the Debian archive", k.package))?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    setup::sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    find(&dir).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
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
    let tunnels = TUNNELS.iter().fold(String::new(), |mut s, t| {
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
kernel_check 127.0.0.1:9477 --off-by {off_by}
echo "MOONFRP-CHECK-EXIT $?"
echo "---- agent log ----"
cat /tmp/agent.log
echo "---- tcp_send_reset format ----"
cat /sys/kernel/tracing/events/tcp/tcp_send_reset/format
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

/// Boots `vmlinuz` with `initrd` and returns what the serial console printed.
fn boot(vmlinuz: &Path, initrd: &Path) -> anyhow::Result<String> {
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
        .args(["-append", "console=ttyS0 quiet panic=-1"])
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

fn print(table: &BTreeMap<String, BTreeMap<String, String>>) {
    let kernels: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    println!("{:<34} {}", "check", kernels.join("  "));
    for (check, by_kernel) in table {
        let cells: Vec<String> = kernels
            .iter()
            .map(|k| by_kernel.get(*k).cloned().unwrap_or_else(|| "-".into()))
            .collect();
        println!("{check:<34} {}", cells.join("  "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_is_read_as_failed() {
        let console = "noise\r\nCHECK tcp4_receive_payload_bytes want=123457 got=123456 FAILED\r\nCHECK udp4_receive_payload_bytes want=1000 got=1000 ok\r\n";
        let c = parse(console);
        assert_eq!(c.len(), 2);
        assert!(c["tcp4_receive_payload_bytes"].ends_with("FAILED"));
        assert!(c["udp4_receive_payload_bytes"].ends_with(" ok"));
    }
}
