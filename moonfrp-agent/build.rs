//! Builds moonfrp-ebpf for the BPF target (nightly + bpf-linker, see `cargo xtask setup`) and
//! places the object in OUT_DIR, where the agent includes it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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
