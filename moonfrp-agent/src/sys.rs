//! The kernel filesystems the agent needs: cgroup v2 (where the traffic programs attach),
//! tracefs (tracepoint formats and attach points) and bpffs (where maps and links are pinned).
//! Found from mountinfo, never assumed.
use std::{
    ffi::CString,
    io::BufRead,
    path::{Path, PathBuf},
};

use procfs::{FromBufRead, process::MountInfos};
use tracing::info;

/// Where tracefs is mounted when the agent has to mount it itself.
pub const TRACEFS_PATH: &str = "/sys/kernel/tracing";
/// Where bpffs is mounted when the agent has to mount it itself.
pub const BPFFS_PATH: &str = "/sys/fs/bpf";

/// A kernel filesystem that could not be found or mounted.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(String),
    #[error(
        "no cgroup v2 filesystem is mounted (looked for fstype cgroup2 in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error(
        "{0} is not on a bpf filesystem, and only {BPFFS_PATH} is mounted by the agent; choose `kernel.pin_dir` under {BPFFS_PATH} or mount bpffs there (`mount -t bpf bpf DIR`)"
    )]
    NotBpffs(String),
    #[error(
        "cannot mount {fstype} at {path}: {reason} (needs CAP_SYS_ADMIN, or mount it before starting the agent: `mount -t {fstype} {fstype} {path}`)"
    )]
    Mount {
        fstype: &'static str,
        path: String,
        reason: String,
    },
}

/// Mount points of the filesystems we care about, from a mountinfo table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The first cgroup2 mount (pure layout: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified).
    pub cgroup2: Option<PathBuf>,
    pub tracefs: Option<PathBuf>,
    /// Every bpffs mount point.
    pub bpffs: Vec<PathBuf>,
    /// cgroup v1 hierarchies (hybrid and legacy layouts): each controller (`memory`, `pids`,
    /// `cpuacct`, `blkio`, `name=systemd`, …) and where its hierarchy is mounted.
    pub cgroup1: std::collections::BTreeMap<String, PathBuf>,
}

/// Parses a mountinfo table.
pub fn parse_mounts(r: impl BufRead) -> Result<Mounts, SysError> {
    let infos = MountInfos::from_buf_read(r).map_err(|e| SysError::MountInfo(e.to_string()))?;
    let find = |fstype: &str| {
        infos
            .0
            .iter()
            .find(|m| m.fs_type == fstype)
            .map(|m| m.mount_point.clone())
    };
    Ok(Mounts {
        cgroup2: find("cgroup2"),
        tracefs: find("tracefs"),
        bpffs: infos
            .0
            .iter()
            .filter(|m| m.fs_type == "bpf")
            .map(|m| m.mount_point.clone())
            .collect(),
        cgroup1: infos
            .0
            .iter()
            .filter(|m| m.fs_type == "cgroup" && m.root == "/")
            .flat_map(|m| {
                m.super_options
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "rw" | "ro") && !k.starts_with("release_agent")
                    })
                    .map(|(k, v)| {
                        let key = v.as_ref().map_or_else(|| k.clone(), |v| format!("{k}={v}"));
                        (key, m.mount_point.clone())
                    })
            })
            .collect(),
    })
}

/// The current mounts of this process's mount namespace.
pub fn current_mounts() -> Result<Mounts, SysError> {
    let f = std::fs::File::open("/proc/self/mountinfo")
        .map_err(|e| SysError::MountInfo(e.to_string()))?;
    parse_mounts(std::io::BufReader::new(f))
}

/// The cgroup v2 root to attach the traffic programs to.
pub fn cgroup2_root(m: &Mounts) -> Result<PathBuf, SysError> {
    m.cgroup2.clone().ok_or(SysError::NoCgroup2)
}

/// Returns tracefs's mount point, mounting it at [`TRACEFS_PATH`] if it is not mounted.
pub fn ensure_tracefs(m: &Mounts) -> Result<PathBuf, SysError> {
    ensure(m.tracefs.as_deref(), "tracefs", TRACEFS_PATH)
}

/// Makes sure `pin_dir` lies on a bpffs, mounting one at [`BPFFS_PATH`] if it lies under it
/// and none is mounted there.
pub fn ensure_bpffs(m: &Mounts, pin_dir: &Path) -> Result<(), SysError> {
    if m.bpffs.iter().any(|mp| pin_dir.starts_with(mp)) {
        return Ok(());
    }
    if !pin_dir.starts_with(BPFFS_PATH) {
        return Err(SysError::NotBpffs(pin_dir.display().to_string()));
    }
    ensure(None, "bpf", BPFFS_PATH).map(|_| ())
}

fn ensure(found: Option<&Path>, fstype: &'static str, path: &str) -> Result<PathBuf, SysError> {
    if let Some(p) = found {
        return Ok(p.to_owned());
    }
    let err = |reason: String| SysError::Mount {
        fstype,
        path: path.to_owned(),
        reason,
    };
    std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, target, fs) = (c(fstype), c(path), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    info!(fstype, path, "mounted {fstype} (it was not mounted)");
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Mounts {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mountinfo")
            .join(name);
        parse_mounts(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn hybrid_layout_finds_unified() {
        let m = fixture("hybrid.txt");
        assert_eq!(
            m.cgroup2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(m.tracefs, None);
        assert_eq!(
            m.cgroup1.get("memory").map(PathBuf::as_path),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            m.cgroup1.get("cpuacct").map(PathBuf::as_path),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
    }

    #[test]
    fn pure_v2_layout() {
        let m = fixture("pure-v2.txt");
        assert_eq!(cgroup2_root(&m).unwrap(), Path::new("/sys/fs/cgroup"));
        assert!(m.cgroup1.is_empty());
        assert_eq!(m.tracefs.as_deref(), Some(Path::new("/sys/kernel/tracing")));
    }

    #[test]
    fn no_cgroup2_is_a_clear_error() {
        let m = parse_mounts(&b"22 1 259:2 / / rw - ext4 /dev/sda rw\n"[..]).unwrap();
        assert!(
            cgroup2_root(&m)
                .unwrap_err()
                .to_string()
                .contains("no cgroup v2")
        );
    }
}
