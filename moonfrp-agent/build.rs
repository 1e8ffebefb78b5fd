//! Builds moonfrp-ebpf for the BPF target (nightly + bpf-linker, see `cargo xtask setup`) and
//! places the object in OUT_DIR, where the agent includes it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // The fuzz targets exercise parsers only: no kernel object (and no nested BPF build under
    // the fuzzer's instrumentation flags).
    if std::env::var_os("CARGO_FEATURE_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("moonfrp"), b"")?;
        return Ok(());
    }
    // The directory as cargo gives it to this run, not as it was when this script was compiled:
    // cargo reuses a compiled build script for a checkout elsewhere with the same sources.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    link_order(&manifest_dir);
    // The kernel side also compiles moonfrp-common; aya-build only watches the eBPF crate.
    println!("cargo:rerun-if-changed={manifest_dir}/../moonfrp-common");
    let root = format!("{manifest_dir}/../moonfrp-ebpf");
    let ebpf = aya_build::Package {
        name: "moonfrp-ebpf",
        root_dir: &root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )
}

/// Release builds of the agent for x86-64 Linux (linked by the toolchain's own lld there) place
/// the functions a running agent executes first, hottest first, and together: `link-order.txt`,
/// written by `cargo xtask link-order`. The kernel maps a binary's code into the process 64 KiB
/// around every page it runs; with those functions scattered among the ones it never runs (the
/// clients, the TUI, error paths), nearly all of the code was resident. A symbol the file names
/// that no longer exists is skipped; one it does not name goes after the named ones, as before.
fn link_order(manifest_dir: &str) {
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !release || !lld_target || std::env::var_os("MOONFRP_NO_LINK_ORDER").is_some() {
        return;
    }
    let order = format!("{manifest_dir}/link-order.txt");
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rerun-if-env-changed=MOONFRP_NO_LINK_ORDER");
    if std::path::Path::new(&order).exists() {
        println!("cargo:rustc-link-arg-bin=moonfrp-agent=-Wl,--symbol-ordering-file={order}");
        println!("cargo:rustc-link-arg-bin=moonfrp-agent=-Wl,--no-warn-symbol-ordering");
    }
}
