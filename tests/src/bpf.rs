//! A BPF program that is not moonfrp's: an empty cgroup_skb program (`r0 = 1; exit`) on the same
//! hooks as moonfrp's (ingress and egress of the cgroup v2 root). The benchmark's floor (what any
//! program on that hook pays: the hook itself and the statistics; what moonfrp's programs cost
//! above it is theirs), and the tests' bystander (what moonfrp's statistics cost other programs).
//! Loaded with raw `bpf()` calls: nothing of moonfrp's build or loader is in it.
use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, ensure};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;

/// Program names as the statistics show them.
pub const INGRESS: &str = "floor_ingress";
pub const EGRESS: &str = "floor_egress";

/// Both empty programs, attached until dropped.
pub struct EmptyPrograms {
    /// (name, program fd).
    progs: Vec<(&'static str, OwnedFd)>,
    _links: Vec<OwnedFd>,
}

/// Run-time statistics of one program (they grow only while the kernel's statistics are on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time: Duration,
    pub run_count: u64,
}

/// The statistics of the program behind `fd` of process `pid` (or `self`), from its fdinfo.
pub fn fd_prog_stats(pid: &str, fd: i32) -> Option<ProgStats> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(ProgStats {
        run_time: Duration::from_nanos(field("run_time_ns:")?),
        run_count: field("run_cnt:")?,
    })
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> anyhow::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of the size passed; the kernel reads it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    ensure!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: a new fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Loads `r0 = 1; exit` as a cgroup_skb program for `attach_type`, named `name`.
fn load(name: &str, attach_type: u32) -> anyhow::Result<OwnedFd> {
    // mov64 r0, 1 (0xb7) and exit (0x95): code, regs, off (i16), imm (i32).
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SKB.to_ne_bytes());
    put(&mut attr, 4, &2u32.to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 48, name.as_bytes());
    put(&mut attr, 68, &attach_type.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("loading the empty program {name}"))
}

/// The cgroup v2 root, from mountinfo (`/sys/fs/cgroup` or, on hybrid hosts, its `unified`).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

impl EmptyPrograms {
    /// Loads both programs and attaches them to the cgroup v2 root.
    pub fn attach() -> anyhow::Result<Self> {
        let root = cgroup2_root()?;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("cannot open the cgroup v2 root {}", root.display()))?;
        let mut progs = Vec::new();
        let mut links = Vec::new();
        for (name, at) in [
            (INGRESS, BPF_CGROUP_INET_INGRESS),
            (EGRESS, BPF_CGROUP_INET_EGRESS),
        ] {
            let prog = load(name, at)?;
            let mut attr = [0u8; 128];
            put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
            put(&mut attr, 4, &(cgroup.as_raw_fd() as u32).to_ne_bytes());
            put(&mut attr, 8, &at.to_ne_bytes());
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
            progs.push((name, prog));
            links.push(link);
        }
        Ok(Self {
            progs,
            _links: links,
        })
    }

    /// Run-time statistics of both programs, by name.
    pub fn stats(&self) -> BTreeMap<String, ProgStats> {
        self.progs
            .iter()
            .filter_map(|(name, fd)| {
                Some(((*name).to_owned(), fd_prog_stats("self", fd.as_raw_fd())?))
            })
            .collect()
    }
}
