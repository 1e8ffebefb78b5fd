//! Installs what builds and tests need, checking first so that a ready machine costs seconds:
//! nightly `rust-src` (for `-Z build-std`), bpf-linker built against the nightly's own libLLVM,
//! and Debian packages for the tests.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

/// bpf-linker version known to build and link here (see DESIGN.md, toolchain facts).
const BPF_LINKER: &str = "0.13.0";
/// Debian packages the test suite uses: prometheus (server and promtool), Alertmanager,
/// node_exporter, tmux (drives `top`), util-linux (setpriv, unshare), iproute2, openssl and
/// curl (certificates for the TLS tests, an independent HTTPS client), iperf3 (the overhead
/// bench's independent load generator), chromium (the web page's tests, driven by
/// playwright-core from npm: see [`npm_packages`]), QEMU with busybox and cpio (the kernels
/// `cargo xtask test-kernels` boots), and g++ (libFuzzer, built by `libfuzzer-sys`).
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "tmux",
    "util-linux",
    "iproute2",
    "openssl",
    "curl",
    "iperf3",
    "chromium",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "g++",
];

pub fn all(test_deps: bool) -> anyhow::Result<()> {
    toolchain()?;
    if test_deps {
        debian_packages(TEST_PACKAGES)?;
        npm_packages()?;
        python_packages()?;
    }
    Ok(())
}

/// Prints and runs a command; fails with its name and status.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    ensure!(status.success(), "`{}` failed ({status})", show(cmd));
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The nightly toolchain's sysroot (the eBPF crate is built with plain `nightly`).
fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the `nightly` toolchain is missing: this machine image ships one; install it with \
         `rustup toolchain install nightly` where the network allows",
    )?;
    Ok(PathBuf::from(sysroot))
}

pub fn toolchain() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    let rust_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !rust_src.is_dir() {
        sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("cannot add nightly rust-src (needed for -Z build-std=core)")?;
    }
    ensure!(
        rust_src.is_dir(),
        "nightly rust-src still missing at {}",
        rust_src.display()
    );
    bpf_linker(&sysroot)
}

/// The nightly's rustfmt: `rustfmt.toml` groups imports, which only nightly rustfmt does.
pub fn rustfmt() -> anyhow::Result<()> {
    if output(Command::new("rustfmt").args(["+nightly", "--version"])).is_none() {
        sh(Command::new("rustup").args(["component", "add", "rustfmt", "--toolchain", "nightly"]))
            .context("cannot add the nightly rustfmt (the format check needs it)")?;
    }
    Ok(())
}

fn bpf_linker_ok() -> bool {
    // `--version` loads libLLVM: a linker whose library moved or vanished fails here.
    output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.ends_with(BPF_LINKER))
}

fn bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!(
        "xtask: bpf-linker {BPF_LINKER} missing or broken; building it against the nightly's libLLVM (about a minute)"
    );
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain lacks LLVM's shared library",
                lib.display()
            )
        })?;
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from the library name")?
        .to_owned();
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/bpf-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    sh(cargo()
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER}"),
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        ))
    .context("cannot build bpf-linker")?;
    ensure!(
        bpf_linker_ok(),
        "bpf-linker was installed but `bpf-linker --version` still fails"
    );
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s == "install ok installed")
}

/// The npm packages the browser tests use (`tests/ui/package-lock.json`), installed exactly as
/// locked when missing.
pub fn npm_packages() -> anyhow::Result<()> {
    let dir = crate::run::root().join("tests/ui");
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    // The machine image has Node.js with npm; a bare Debian gets its own.
    if output(Command::new("npm").arg("--version")).is_none() {
        debian_packages(&["nodejs", "npm"])?;
    }
    sh(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
    .context("npm ci in tests/ui (needs node and npm, and the npm registry)")
}

/// The PyPI packages the email tests use (`tests/smtp/requirements.txt`: aiosmtpd, a real SMTP
/// server), installed exactly as pinned into `tests/smtp/.venv` when missing.
pub fn python_packages() -> anyhow::Result<()> {
    let dir = crate::run::root().join("tests/smtp");
    let python = dir.join(".venv/bin/python");
    if Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    // The machine image has Python with venv; a bare Debian gets its own.
    if output(Command::new("python3").args(["-c", "import venv, ensurepip"])).is_none() {
        debian_packages(&["python3", "python3-venv"])?;
    }
    sh(Command::new("python3")
        .args(["-m", "venv", ".venv"])
        .current_dir(&dir))
    .context("cannot make the Python venv in tests/smtp")?;
    sh(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "-r", "requirements.txt"])
        .current_dir(&dir))
    .context("pip install in tests/smtp (needs PyPI)")
}

/// Installs the Debian packages that are missing (`apt-get update` once, only if needed).
pub fn debian_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("Debian packages {missing:?} are missing and there is no apt-get to install them");
    }
    sh(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed (needs root and the Debian mirror)")?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("cannot install {missing:?}"))
}
