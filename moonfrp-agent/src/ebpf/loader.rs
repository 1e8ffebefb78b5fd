//! Loads the object, then loads and attaches each program from a declarative probe table. A probe
//! that cannot attach is skipped with its reason; the others keep working. With a pin directory
//! ([`super::pins`]) the maps, links and programs are pinned, and those a previous agent pinned
//! are taken over.
use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, ProgramInfo,
        TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use moonfrp_common::{names, programs};
use tracing::{info, warn};

use super::{KernelMaps, layout, pins::Pins, stats::StatsWindow};
use crate::ebpf::KernelConfig;

/// The compiled kernel programs (built by build.rs through aya-build).
pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/moonfrp"));

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// cgroup_skb on the cgroup v2 root.
    CgroupSkb(CgroupSkbAttachType),
    /// A tracepoint, as `category/name` (also the key of its layout).
    TracePoint(&'static str),
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// The `probe` label of `moonfrp_agent_probe_attached`.
    pub probe: &'static str,
    /// Program name in the object.
    pub program: &'static str,
    pub hook: Hook,
}

/// Every probe the agent runs.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        probe: "traffic_ingress",
        program: programs::SKB_INGRESS,
        hook: Hook::CgroupSkb(CgroupSkbAttachType::Ingress),
    },
    ProbeSpec {
        probe: "traffic_egress",
        program: programs::SKB_EGRESS,
        hook: Hook::CgroupSkb(CgroupSkbAttachType::Egress),
    },
    ProbeSpec {
        probe: "sock_state",
        program: programs::SOCK_STATE,
        hook: Hook::TracePoint(layout::SOCK_STATE),
    },
    ProbeSpec {
        probe: "tcp_retransmit",
        program: programs::RETRANSMIT,
        hook: Hook::TracePoint(layout::RETRANSMIT),
    },
    ProbeSpec {
        probe: "tcp_send_reset",
        program: programs::SEND_RESET,
        hook: Hook::TracePoint(layout::SEND_RESET),
    },
    ProbeSpec {
        probe: "tcp_receive_reset",
        program: programs::RECV_RESET,
        hook: Hook::TracePoint(layout::RECV_RESET),
    },
    // Only on kernels before 6.10 (see `layout::Layouts::needed`); elsewhere not run or listed.
    ProbeSpec {
        probe: "tcp_refused",
        program: programs::REFUSED,
        hook: Hook::TracePoint(layout::DROP),
    },
];

/// Whether a probe runs, and why not if it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub probe: &'static str,
    pub attached: bool,
    pub reason: Option<String>,
}

/// How a probe came to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attached {
    /// Attached now.
    New,
    /// The previous agent's link runs this program from now on (atomically), or its link was
    /// replaced by one to this program.
    TakenOver,
    /// The previous agent's program is the same code: it goes on running.
    Kept,
}

/// The object could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open the cgroup v2 root {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the kernel refused moonfrp's maps or programs: {0} (needs a kernel >= 5.8 with BPF, and CAP_BPF; see README, section Privileges)"
    )]
    Object(#[from] aya::EbpfError),
    #[error("map {0} is missing from the object or has the wrong type: {1}")]
    Map(&'static str, String),
}

/// Run-time statistics of one attached program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub probe: &'static str,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

/// The loaded object: programs (links detach when this is dropped), maps, probe states.
pub struct Kernel {
    /// Owns the programs and their links; dropping it detaches everything.
    ebpf: Ebpf,
    pub maps: KernelMaps,
    /// The probes this kernel needs (all of [`PROBES`] but those without a job here).
    specs: Vec<&'static ProbeSpec>,
    pub probes: Vec<ProbeStatus>,
    /// When the kernel's BPF run-time statistics are on.
    stats: StatsWindow,
    /// Per probe (as `specs`), where the running program is pinned when it is the
    /// previous agent's (kept, not loaded by this one): its statistics are read there.
    kept: Vec<Option<PathBuf>>,
    /// The maps were pinned by a previous agent: the counters continue.
    pub continued: bool,
    /// The pinned links, held while the agent runs: `cleanup` meanwhile removes the pins but
    /// not the running agent's programs, which detach when it exits.
    _links: Vec<std::os::fd::OwnedFd>,
}

impl Kernel {
    /// Run time and run count of every attached program.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if !self.stats.on() {
            return Vec::new();
        }
        self.specs
            .iter()
            .zip(&self.probes)
            .zip(&self.kept)
            .filter(|((_, status), _)| status.attached)
            .filter_map(|((spec, _), kept)| {
                let info = match kept {
                    Some(pin) => ProgramInfo::from_pin(pin).ok()?,
                    None => self.ebpf.program(spec.program)?.info().ok()?,
                };
                Some(ProgramStats {
                    probe: spec.probe,
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    /// Opens a statistics sampling window (see [`super::stats`]); called after each collection.
    pub fn sample_stats(&self) {
        self.stats.sample();
    }

    /// How long the statistics have been on, if they are kept.
    pub fn stats_seconds_on(&self) -> Option<std::time::Duration> {
        self.stats.seconds_on()
    }
}

/// Loads the object sized by `cfg`, then attaches every probe it can; with `pins`, reusing and
/// pinning maps, links and programs.
pub fn load(
    cfg: &KernelConfig,
    tracefs: &Path,
    cgroup_root: &Path,
    pins: Option<&Pins>,
) -> Result<Kernel, LoadError> {
    let layouts = layout::build(layout::read_from(tracefs), || {
        std::fs::read(layout::VMLINUX_BTF)
    });
    for note in &layouts.notes {
        warn!("{note}");
    }
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for (name, ..) in super::pins::shapes(cfg) {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    let mut ebpf = loader
        .override_global(names::LAYOUT, &layouts.layout, true)
        .override_global(names::PEER_TRACKING, &u32::from(cfg.peers > 0), true)
        .map_max_entries(names::TRAFFIC, cfg.slots)
        .map_max_entries(names::TCP_STATS, cfg.slots)
        .map_max_entries(names::PEER_CACHE, cfg.slots)
        .override_global(names::CONN_SETS, &cfg.connection_sets(), true)
        .map_max_entries(names::CONN_START, cfg.connection_entries())
        .map_max_entries(names::PEERS, cfg.peers.max(1))
        .load(OBJECT)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let cgroup = File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
        path: cgroup_root.display().to_string(),
        source,
    })?;

    let specs: Vec<&'static ProbeSpec> = PROBES
        .iter()
        .filter(|s| match s.hook {
            Hook::TracePoint(tp) => layouts.needed(tp),
            Hook::CgroupSkb(_) => true,
        })
        .collect();
    let mut kept = Vec::with_capacity(specs.len());
    let probes = specs
        .iter()
        .map(|spec| {
            let pin = pins.map(|p| (p.link(spec.probe), p.program(spec.probe)));
            let pin = pin.as_ref().map(|(l, p)| (l.as_path(), p.as_path()));
            let result = match spec.hook {
                Hook::TracePoint(tp) => match layouts.problems.get(tp) {
                    Some(problem) => Err(problem.to_string()),
                    None => attach_tracepoint(&mut ebpf, spec.program, tp, pin),
                },
                Hook::CgroupSkb(at) => {
                    attach_cgroup_skb(&mut ebpf, spec.program, &cgroup, at, pin)
                }
            };
            kept.push(
                (result == Ok(Attached::Kept))
                    .then(|| pin.map(|(_, program)| program.to_owned()))
                    .flatten(),
            );
            match result {
                Ok(how) => {
                    match how {
                        Attached::New => info!(probe = spec.probe, "probe attached"),
                        Attached::TakenOver => info!(probe = spec.probe, "probe attached, taking over the previous agent's link"),
                        Attached::Kept => info!(probe = spec.probe, "probe kept: the previous agent's program is the same code"),
                    }
                    ProbeStatus { probe: spec.probe, attached: true, reason: None }
                }
                Err(reason) => {
                    warn!(probe = spec.probe, %reason, "probe not attached; its counters stay at 0");
                    ProbeStatus { probe: spec.probe, attached: false, reason: Some(reason) }
                }
            }
        })
        .collect();
    let stats = StatsWindow::start(cfg.bpf_stats, cfg.stats_window());
    let links = pins.map_or_else(Vec::new, |p| {
        PROBES
            .iter()
            .filter_map(|s| super::pins::obj_get(&p.link(s.probe)).ok())
            .collect()
    });
    Ok(Kernel {
        _links: links,
        ebpf,
        maps,
        probes,
        stats,
        kept,
        continued: pins.is_some_and(|p| p.continued),
        specs,
    })
}

fn program_error(e: &ProgramError) -> String {
    match e {
        // Keep the end of the verifier log: that is where it says what it rejected.
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("load failed: {io_error}; verifier: {}", tail.join(" | "))
        }
        other => other.to_string(),
    }
}

/// The program `name` of the object, as its concrete type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())
}

/// (link pin, program pin) of a probe.
type PinPaths<'a> = Option<(&'a Path, &'a Path)>;

/// The tag (a hash of the instructions) of the program a pinned link runs.
fn linked_tag(link: &Path) -> Option<u64> {
    let id = FdLink::from(PinnedLink::from_pin(link).ok()?)
        .info()
        .ok()?
        .program_id();
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| p.tag())
}

/// Pins `link` at `path` through a temporary name, replacing whatever was pinned there (the
/// previous agent's link goes when its pin does).
fn pin_link(link: FdLink, path: &Path) -> Result<(), String> {
    // bpffs refuses names with a dot in them.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("_new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp)
        .map_err(|e| format!("cannot pin the link at {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot pin the link at {}: {e}", path.display()))
}

/// Pins the program that runs now at `path` (its statistics are read there).
fn pin_program(
    path: &Path,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    pin(path).map_err(|e| format!("cannot pin the program at {}: {e}", path.display()))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program_name: &str,
    tp: &str,
    pins: PinPaths<'_>,
) -> Result<Attached, String> {
    let (category, name) = tp.split_once('/').expect("tracepoints are category/name");
    let prog: &mut TracePoint = program(ebpf, program_name)?;
    prog.load().map_err(|e| program_error(&e))?;
    let Some((link_path, prog_path)) = pins else {
        prog.attach(category, name)
            .map_err(|e| format!("attach to {tp}: {e}"))?;
        return Ok(Attached::New);
    };
    let had = link_path.exists();
    if had {
        let new_tag = prog.info().map_err(|e| e.to_string())?.tag();
        if linked_tag(link_path) == Some(new_tag) && prog_path.exists() {
            // The same code already runs on the same maps: keep it, no event is missed.
            let _ = prog.unload();
            return Ok(Attached::Kept);
        }
    }
    // New code (an upgrade): attach it, then let the previous link go. For the moment between
    // the two both run: an event then is counted twice (tracepoint links cannot be updated).
    let id = prog
        .attach(category, name)
        .map_err(|e| format!("attach to {tp}: {e}"))?;
    let pinned = prog
        .take_link(id)
        .map_err(|e| e.to_string())
        .and_then(|l| FdLink::try_from(l).map_err(|e| e.to_string()))
        .and_then(|l| pin_link(l, link_path));
    if let Err(e) = pinned {
        // Kernels before 5.15 attach tracepoints without a BPF link: nothing to pin.
        warn!(tracepoint = tp, error = %e, "cannot pin the tracepoint link: it detaches when the agent stops");
        prog.attach(category, name)
            .map_err(|e| format!("attach to {tp}: {e}"))?;
        return Ok(Attached::New);
    }
    pin_program(prog_path, |p| prog.pin(p))?;
    Ok(if had {
        Attached::TakenOver
    } else {
        Attached::New
    })
}

fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program_name: &str,
    cgroup: &File,
    at: CgroupSkbAttachType,
    pins: PinPaths<'_>,
) -> Result<Attached, String> {
    let prog: &mut CgroupSkb = program(ebpf, program_name)?;
    prog.load().map_err(|e| program_error(&e))?;
    if let Some((link_path, prog_path)) = pins
        && link_path.exists()
    {
        // The previous agent's link runs this program from the next packet on: nothing is
        // missed or counted twice.
        let fd = prog.fd().map_err(|e| e.to_string())?;
        match super::pins::obj_get(link_path)
            .and_then(|link| super::pins::link_update(link.as_fd(), fd.as_fd()))
        {
            Ok(()) => {
                pin_program(prog_path, |p| prog.pin(p))?;
                return Ok(Attached::TakenOver);
            }
            Err(e) => {
                warn!(link = %link_path.display(), error = %e, "cannot take over the previous agent's link; attaching anew");
            }
        }
    }
    // aya 0.14 attaches through a BPF link, which the kernel always treats as "multi": other
    // programs on the root cgroup (systemd's, another agent's) are left alone.
    let id = prog
        .attach(cgroup, at, CgroupAttachMode::Single)
        .map_err(|e| format!("attach to cgroup: {e}"))?;
    if let Some((link_path, prog_path)) = pins {
        let link = prog.take_link(id).map_err(|e| e.to_string())?;
        let link = FdLink::try_from(link).map_err(|e| e.to_string())?;
        pin_link(link, link_path)?;
        pin_program(prog_path, |p| prog.pin(p))?;
    }
    Ok(Attached::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_has_every_program_map_and_global() {
        let obj = aya_obj::Object::parse(OBJECT).expect("the built object parses");
        for spec in PROBES {
            assert!(
                obj.programs.contains_key(spec.program),
                "program {} missing",
                spec.program
            );
        }
        for map in [
            names::WATCH,
            names::TRAFFIC,
            names::TCP_STATS,
            names::CONN_START,
            names::PEERS,
            names::PEER_CACHE,
        ] {
            assert!(obj.maps.contains_key(map), "map {map} missing");
        }
        // The globals are found by name when the loader overrides them (`must_exist = true`).
        for global in [names::LAYOUT, names::PEER_TRACKING, names::CONN_SETS] {
            let symbol = format!("{global}\0");
            assert!(
                OBJECT.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
                "global {global} missing"
            );
        }
    }
}
