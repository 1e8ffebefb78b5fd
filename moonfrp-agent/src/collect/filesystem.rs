//! Filesystem usage of real mounts: mountinfo (procfs) for the list, statvfs for the numbers.
//! Pseudo filesystems and system paths are skipped with node_exporter's default lists.
use std::{collections::BTreeSet, ffi::CString, io::BufRead, time::Duration};

use procfs::{FromBufRead, process::MountInfos};

use super::{CollectError, deadline::Stuck, read_file};

const PATH: &str = "/proc/self/mountinfo";

const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
    "ramfs",
    "efivarfs",
];
const SYSTEM_PATHS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run/credentials",
    "/var/lib/docker",
    "/var/lib/containers/storage",
];

/// A mount to report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mount {
    pub mountpoint: String,
    pub fstype: String,
    pub device: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filesystem {
    pub mount: Mount,
    pub size_bytes: u64,
    /// Available to unprivileged users.
    pub avail_bytes: u64,
    pub used_bytes: u64,
}

fn skipped(mountpoint: &str, fstype: &str) -> bool {
    PSEUDO_FS.contains(&fstype)
        || SYSTEM_PATHS.iter().any(|p| {
            mountpoint == *p
                || mountpoint
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Real mounts, one per mount point (the last one mounted there wins, as in the namespace).
pub fn parse_mounts(r: impl BufRead) -> Result<Vec<Mount>, CollectError> {
    let infos = MountInfos::from_buf_read(r).map_err(|e| CollectError::parse(PATH, e))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in infos.0.into_iter().rev() {
        let mountpoint = m.mount_point.to_string_lossy().into_owned();
        if skipped(&mountpoint, &m.fs_type) || !seen.insert(mountpoint.clone()) {
            continue;
        }
        out.push(Mount {
            mountpoint,
            fstype: m.fs_type,
            device: m.mount_source.unwrap_or_default(),
        });
    }
    out.sort();
    Ok(out)
}

fn statvfs(path: &str) -> std::io::Result<(u64, u64, u64)> {
    let c = CString::new(path).map_err(std::io::Error::other)?;
    // SAFETY: zeroed plain C struct filled in by statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    Ok((
        st.f_blocks * frsize,
        st.f_bavail * frsize,
        st.f_bfree * frsize,
    ))
}

/// Every real mount with its usage. `statvfs` runs off the collection's thread: a mount that
/// does not answer within `limit` (a hung network share) is left out, and skipped until its
/// call returns, while the others are read.
pub fn read(stuck: &Stuck, limit: Duration) -> Result<Vec<Filesystem>, CollectError> {
    let mounts = parse_mounts(read_file(PATH)?.as_bytes())?;
    let (sizes, _) = stuck.each(
        mounts.iter().map(|m| m.mountpoint.clone()).collect(),
        limit,
        statvfs,
    );
    let sizes: std::collections::HashMap<String, std::io::Result<(u64, u64, u64)>> =
        sizes.into_iter().collect();
    let mut out = Vec::with_capacity(mounts.len());
    for mount in mounts {
        // One unreadable mount (a stale network share, a permission) does not hide the others.
        let Some(Ok((size, avail, free))) =
            sizes.get(&mount.mountpoint).map(|r| r.as_ref().map(|v| *v))
        else {
            continue;
        };
        if size == 0 {
            continue;
        }
        out.push(Filesystem {
            size_bytes: size,
            avail_bytes: avail,
            used_bytes: size - free,
            mount,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn real_mounts_only() {
        let mounts = parse_mounts(fixture("mountinfo/pure-v2.txt").as_bytes()).unwrap();
        let points: Vec<&str> = mounts.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(points, ["/"]);
        let mounts = parse_mounts(fixture("mountinfo/hybrid.txt").as_bytes()).unwrap();
        assert!(
            mounts
                .iter()
                .all(|m| !m.mountpoint.starts_with("/sys") && !m.mountpoint.starts_with("/proc"))
        );
    }

    #[test]
    fn skip_rules() {
        assert!(skipped("/sys/fs/cgroup", "cgroup2"));
        assert!(skipped("/dev/shm", "tmpfs"));
        assert!(!skipped("/devices", "ext4"));
        assert!(!skipped("/var/lib/frp", "xfs"));
        assert!(skipped("/snap/core/1", "squashfs"));
    }

    #[test]
    fn root_has_size() {
        let all = read(&Stuck::default(), Duration::from_secs(5)).unwrap();
        assert!(
            all.iter()
                .any(|f| f.size_bytes > 0 && f.used_bytes <= f.size_bytes),
            "{all:?}"
        );
    }
}
