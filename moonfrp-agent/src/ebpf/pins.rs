//! Pinned maps, links and programs (bpffs): what keeps the programs counting while the agent is
//! stopped, and lets a restarted or upgraded agent continue the same counters.
//!
//! Layout: `<pin_dir>/v<PIN_LAYOUT>/{maps,links,programs}/<name>`. An agent reuses the directory
//! of its own layout when every pinned map has the type and sizes its configuration asks for;
//! another layout's directory, or maps of other sizes (`kernel.slots` changed), are removed —
//! which detaches their programs — and created anew, and the log says so. Pins live in memory:
//! a reboot ends them, and the counters start from zero as everything else does.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use moonfrp_common::{
    PIN_LAYOUT, PeerCache, PeerCounters, PeerKey, TcpCounters, TrafficCounters, names,
};
use tracing::{info, warn};

use super::{KernelConfig, syscall::sys_bpf};

/// A pin directory of this layout, ready for the loader.
#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    /// The maps were there already: the counters continue.
    pub continued: bool,
}

/// What a map must be to be reused: (name, type, key size, value size, max entries).
type MapShape = (&'static str, MapType, u32, u32, u32);

#[allow(clippy::cast_possible_truncation)]
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// The maps the loader pins, with the shape this configuration gives them.
pub fn shapes(cfg: &KernelConfig) -> [MapShape; 6] {
    [
        (
            names::WATCH,
            MapType::Array,
            4,
            4,
            moonfrp_common::WATCH_ENTRIES,
        ),
        (
            names::TRAFFIC,
            MapType::PerCpuArray,
            4,
            size::<TrafficCounters>(),
            cfg.slots,
        ),
        (
            names::TCP_STATS,
            MapType::PerCpuArray,
            4,
            size::<TcpCounters>(),
            cfg.slots,
        ),
        (
            names::CONN_START,
            MapType::Array,
            4,
            size::<moonfrp_common::ConnStart>(),
            cfg.connection_entries(),
        ),
        (
            names::PEERS,
            MapType::LruPerCpuHash,
            size::<PeerKey>(),
            size::<PeerCounters>(),
            cfg.peers.max(1),
        ),
        (
            names::PEER_CACHE,
            MapType::PerCpuArray,
            4,
            size::<PeerCache>(),
            cfg.slots,
        ),
    ]
}

/// The layout directories (`v<N>`) under `pin_dir`: what moonfrp pinned. Anything else there is
/// someone else's and never touched, even if `pin_dir` is set to a shared directory.
fn layouts(pin_dir: &Path) -> Vec<std::fs::DirEntry> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix('v')
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect()
}

impl Pins {
    /// Prepares `<pin_dir>/v<PIN_LAYOUT>`: reused if its maps fit `cfg`, else (and every other
    /// layout's directory) removed first.
    pub fn open(pin_dir: &Path, cfg: &KernelConfig) -> Result<Self, String> {
        let own = format!("v{PIN_LAYOUT}");
        for e in layouts(pin_dir) {
            if e.file_name() != own.as_str() {
                remove_tree(&e.path())
                    .map_err(|err| format!("cannot remove {}: {err}", e.path().display()))?;
                warn!(
                    path = %e.path().display(),
                    "removed pinned state of another moonfrp layout: its counters restart at 0"
                );
            }
        }
        let dir = pin_dir.join(own);
        let mut continued = dir.join("maps").is_dir();
        if continued && let Err(why) = fits(&dir, cfg) {
            warn!(%why, path = %dir.display(), "the pinned maps do not fit this configuration: replaced; counters restart at 0");
            remove_tree(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            continued = false;
        }
        for sub in ["maps", "links", "programs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create the pin directory {}: {e}", d.display()))?;
        }
        if continued {
            info!(path = %dir.display(), "continuing the counters pinned by the previous agent");
        }
        Ok(Self { dir, continued })
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link(&self, probe: &str) -> PathBuf {
        self.dir.join("links").join(probe)
    }

    pub fn program(&self, probe: &str) -> PathBuf {
        self.dir.join("programs").join(probe)
    }
}

/// Whether every pinned map has the shape `cfg` gives it; the first difference otherwise.
fn fits(dir: &Path, cfg: &KernelConfig) -> Result<(), String> {
    for (name, kind, key, value, entries) in shapes(cfg) {
        let info = MapInfo::from_pin(dir.join("maps").join(name))
            .map_err(|e| format!("map {name}: {e}"))?;
        let found = (
            info.map_type().ok(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        if found != (Some(kind), key, value, entries) {
            return Err(format!(
                "map {name} is {found:?} (type, key, value, entries); this configuration wants {:?}",
                (kind, key, value, entries)
            ));
        }
    }
    Ok(())
}

/// Removes a pin tree: each pin is unlinked (a link whose last reference goes detaches its
/// program; a map or program without users is freed), then the directories. The paths removed.
pub fn remove_tree(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            removed.extend(remove_tree(&e?.path())?);
        }
        std::fs::remove_dir(path)?;
    } else {
        std::fs::remove_file(path)?;
    }
    removed.push(path.to_owned());
    Ok(removed)
}

/// Removes every layout directory under `dir`, then `dir` itself if nothing else is in it.
fn remove_layouts(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in layouts(dir) {
        removed.extend(remove_tree(&e.path())?);
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(dir)?;
        removed.push(dir.to_owned());
    }
    Ok(removed)
}

/// `moonfrp-agent cleanup`: removes what moonfrp pinned (the layout directories under the pin
/// directory, and the directory if that leaves it empty); (exit code, stdout, stderr).
pub fn cleanup(cfg: &KernelConfig) -> (u8, String, String) {
    let Some(dir) = cfg.pins() else {
        return (
            0,
            "pinning is off (kernel.pin_dir = \"\"): nothing to remove\n".into(),
            String::new(),
        );
    };
    match remove_layouts(dir) {
        Ok(removed) if removed.is_empty() => (
            0,
            format!("nothing pinned under {}\n", dir.display()),
            String::new(),
        ),
        Ok(removed) => (
            0,
            format!(
                "removed {} pins and directories under {}: moonfrp's programs are detached (once no agent holds them) and their counters gone\n",
                removed.len(),
                dir.display()
            ),
            String::new(),
        ),
        Err(e) => (
            1,
            String::new(),
            format!("cannot remove {}: {e} (run it as root)", dir.display()),
        ),
    }
}

/// `bpf(BPF_OBJ_GET)`: a new descriptor of the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_GET's attr; the path outlives the call.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr)? };
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf(BPF_LINK_UPDATE)`: the link runs `program` from now on, atomically (no packet sees
/// neither or both). Supported by cgroup links; aya 0.14 keeps it to itself.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: BPF_LINK_UPDATE's attr, no pointers.
    unsafe { sys_bpf(BPF_LINK_UPDATE, &mut attr) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_object() {
        let obj = aya_obj::Object::parse(super::super::loader::OBJECT).expect("the object parses");
        for (name, _, key, value, _) in shapes(&KernelConfig::default()) {
            let m = &obj.maps[name];
            assert_eq!((m.key_size(), m.value_size()), (key, value), "map {name}");
        }
    }

    #[test]
    fn only_layout_directories_are_ours() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["v1", "v12", "v", "vx", "cilium", "v1x"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("v2"), "").unwrap();
        let mut ours: Vec<String> = layouts(dir.path())
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ours.sort();
        assert_eq!(ours, ["v1", "v12", "v2"]);
        // cleanup leaves what is not ours, and so the directory.
        remove_layouts(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["cilium", "v", "v1x", "vx"]);
    }
}
