//! The floor of the agent CPU table: a process that wakes once per interval and reads what the
//! agent's host collectors read (the /proc files, and `stat` and `exe` of every process), with
//! no kernel maps, series, history or alerts. On a VM a process that sleeps between intervals
//! pays to wake up (caches and TLB cold, the vCPU halted): this shows how much of the agent's
//! cost per interval that is, measured in the same run.
use std::{fs, path::Path, thread, time::Duration};

/// Runs forever: one pass every `interval`.
pub fn run(interval: Duration) -> ! {
    loop {
        thread::sleep(interval);
        pass();
    }
}

fn pass() {
    for f in [
        "/proc/stat",
        "/proc/meminfo",
        "/proc/loadavg",
        "/proc/net/dev",
        "/proc/net/snmp",
        "/proc/net/netstat",
        "/proc/diskstats",
    ] {
        let _ = fs::read(f);
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            let p = Path::new("/proc").join(&name);
            let _ = fs::read(p.join("stat"));
            let _ = fs::read_link(p.join("exe"));
        }
    }
}
