//! Which capabilities the agent needs, and a message that says how to grant the missing ones.
use std::fmt::Write as _;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities we need, with what each is for. CAP_SYS_ADMIN stands in for all of them
/// (kernels before 5.8 have neither CAP_BPF nor CAP_PERFMON).
const NEEDED: &[(u32, &str, &str)] = &[
    (
        CAP_BPF,
        "CAP_BPF",
        "load the programs and create their maps",
    ),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "attach to tracepoints and read kernel pointers",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "attach the traffic programs to the cgroup",
    ),
];

/// Missing privileges.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct MissingCapabilities(pub String);

/// Checks an effective capability set (the `CapEff` mask of /proc/self/status).
pub fn check_mask(cap_eff: u64) -> Result<(), MissingCapabilities> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) && has(CAP_NET_ADMIN) {
        return Ok(());
    }
    let missing: Vec<_> = NEEDED
        .iter()
        .filter(|(cap, ..)| !has(*cap) && !has(CAP_SYS_ADMIN))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut msg =
        String::from("moonfrp-agent lacks the privileges to load its kernel programs: missing ");
    for (i, (_, name, why)) in missing.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(msg, "{sep}{name} (to {why})");
    }
    msg.push_str(
        ". Run it as root (sudo), or grant the capabilities: \
         `setcap cap_bpf,cap_perfmon,cap_net_admin+ep $(command -v moonfrp-agent)` \
         (add cap_sys_admin on kernels before 5.8); see README, section Privileges.",
    );
    Err(MissingCapabilities(msg))
}

/// Parses `CapEff:` from the text of /proc/self/status.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

const CAP_DAC_READ_SEARCH: u32 = 2;

/// What the agent cannot do without CAP_DAC_READ_SEARCH when it runs as another user than
/// root: `None` if it has it (or is root).
pub fn without_dac_read_search(cap_eff: u64, euid: u32) -> Option<&'static str> {
    (euid != 0 && cap_eff & (1 << CAP_DAC_READ_SEARCH) == 0).then_some(
        "running as a user other than root without CAP_DAC_READ_SEARCH: root-only files stay \
         unreadable — tracepoint formats in tracefs (the connection, reset and retransmit \
         probes stay off), frp config files only root may read (and the API passwords in them), \
         and other users' /proc/<pid>/fd (frps' open files); the packaged unit grants it",
    )
}

/// Checks this process's own capabilities: an error if a needed one is missing, a warning in
/// the log for what an optional one costs.
pub fn check() -> Result<(), MissingCapabilities> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = cap_eff(&status).unwrap_or(0);
    check_mask(eff)?;
    // SAFETY: geteuid has no preconditions.
    if let Some(why) = without_dac_read_search(eff, unsafe { libc::geteuid() }) {
        tracing::warn!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_capability_sets() {
        assert_eq!(check_mask(0x0000_01ff_ffff_ffff), Ok(()));
        let minimal = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert_eq!(check_mask(minimal), Ok(()));
        let old_kernel = (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert_eq!(check_mask(old_kernel), Ok(()));
    }

    #[test]
    fn names_exactly_what_is_missing() {
        let err = check_mask((1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN))
            .unwrap_err()
            .0;
        assert!(err.contains("missing CAP_BPF (to load"), "{err}");
        assert!(!err.contains("CAP_PERFMON ("), "{err}");
        assert!(err.contains("setcap") && err.contains("root"), "{err}");
        let err = check_mask(0).unwrap_err().0;
        assert!(
            err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("CAP_NET_ADMIN")
        );
    }

    #[test]
    fn dac_read_search_matters_for_other_users_only() {
        assert!(without_dac_read_search(0, 0).is_none());
        assert!(without_dac_read_search(1 << CAP_DAC_READ_SEARCH, 999).is_none());
        assert!(without_dac_read_search(0, 999).unwrap().contains("tracefs"));
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(0x1ff_ffff_ffff));
    }
}
