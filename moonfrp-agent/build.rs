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
    // The kernel side also compiles moonfrp-common; aya-build only watches the eBPF crate.
    println!(
        "cargo:rerun-if-changed={}/../moonfrp-common",
        env!("CARGO_MANIFEST_DIR")
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../moonfrp-ebpf");
    let ebpf = aya_build::Package {
        name: "moonfrp-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)",
    )
}
