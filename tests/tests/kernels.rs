//! `kernel_check`, the client `cargo xtask test-kernels` runs inside each VM, against the agent
//! on this machine's kernel: the host's column of the README's Kernels table, with the same code
//! and the same expectations as the booted kernels'.
use std::process::Command;

use moonfrp_tests::{Agent, AgentCmd};

fn kernel_check() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kernel_check"))
}

/// `-t` arguments for kernel_check's tunnels (fixed ports 6000–6005: below the range
/// `free_port` hands out, so no other test takes them).
fn tunnels() -> Vec<String> {
    let out = kernel_check().arg("--tunnels").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|t| ["-t".to_owned(), t.to_owned()])
        .collect()
}

/// Runs kernel_check against `agent` with `mode`; every CHECK line must say ok.
fn check(agent: &Agent, mode: &[&str], at_least: usize) {
    let out = kernel_check()
        .arg(agent.addr.to_string())
        .args(mode)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<&str> = text.lines().filter(|l| l.starts_with("CHECK ")).collect();
    println!("{}", verdicts.join("\n"));
    assert!(
        out.status.success() && verdicts.iter().all(|l| l.ends_with(" ok")),
        "kernel_check {mode:?} failed:\n{}\n{}",
        verdicts.join("\n"),
        agent.log()
    );
    assert!(verdicts.len() >= at_least, "{verdicts:?}");
}

/// Both runs in one test: they share kernel_check's fixed ports.
#[test]
fn kernel_check_holds_here_with_and_without_btf() {
    let args = tunnels();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    {
        let agent = Agent::start(&args);
        check(&agent, &[], 12);
    }
    // With the kernel's BTF hidden (a private mount namespace): on 6.10+ refusals do not need
    // it, so everything still counts; before 6.10 only refusals would stop (the VM shows that).
    let agent = AgentCmd::new(&args)
        .in_private_mounts("mount --bind /dev/null /sys/kernel/btf/vmlinux")
        .start();
    check(&agent, &["--without-btf"], 4);
}
