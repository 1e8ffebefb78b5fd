//! Loads the object, then loads and attaches each program from a declarative probe table. A probe
//! that cannot attach is skipped with its reason; the others keep working.
use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, TracePoint,
    },
};
use moonfrp_common::{names, programs};
use tracing::{info, warn};

use super::{KernelMaps, layout};
use crate::ebpf::KernelConfig;

/// The compiled kernel programs (built by build.rs through aya-build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/moonfrp"));

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
];

/// Whether a probe runs, and why not if it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub probe: &'static str,
    pub attached: bool,
    pub reason: Option<String>,
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
    pub probes: Vec<ProbeStatus>,
    /// Keeps the kernel's BPF run-time statistics on while the agent runs; the kernel turns them
    /// off (restores the previous state) when this fd closes.
    stats: Option<std::os::fd::OwnedFd>,
}

impl Kernel {
    /// Run time and run count of every attached program.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if self.stats.is_none() {
            return Vec::new();
        }
        PROBES
            .iter()
            .zip(&self.probes)
            .filter(|(_, status)| status.attached)
            .filter_map(|(spec, _)| {
                let info = self.ebpf.program(spec.program)?.info().ok()?;
                Some(ProgramStats {
                    probe: spec.probe,
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

/// Loads the object sized by `cfg`, then attaches every probe it can.
pub fn load(cfg: &KernelConfig, tracefs: &Path, cgroup_root: &Path) -> Result<Kernel, LoadError> {
    let layouts = layout::build(layout::read_from(tracefs));
    let mut ebpf = EbpfLoader::new()
        .override_global(names::LAYOUT, &layouts.layout, true)
        .override_global(names::PEER_TRACKING, &u32::from(cfg.peers > 0), true)
        .map_max_entries(names::TRAFFIC, cfg.slots)
        .map_max_entries(names::TCP_STATS, cfg.slots)
        .map_max_entries(names::CONN_START, cfg.tracked_connections)
        .map_max_entries(names::PEERS, cfg.peers.max(1))
        .load(OBJECT)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    let cgroup = File::open(cgroup_root).map_err(|source| LoadError::Cgroup {
        path: cgroup_root.display().to_string(),
        source,
    })?;

    let probes = PROBES
        .iter()
        .map(|spec| {
            let result = match spec.hook {
                Hook::TracePoint(tp) => match layouts.problems.get(tp) {
                    Some(problem) => Err(problem.to_string()),
                    None => attach_tracepoint(&mut ebpf, spec.program, tp),
                },
                Hook::CgroupSkb(at) => attach_cgroup_skb(&mut ebpf, spec.program, &cgroup, at),
            };
            match result {
                Ok(()) => {
                    info!(probe = spec.probe, "probe attached");
                    ProbeStatus { probe: spec.probe, attached: true, reason: None }
                }
                Err(reason) => {
                    warn!(probe = spec.probe, %reason, "probe not attached; its counters stay at 0");
                    ProbeStatus { probe: spec.probe, attached: false, reason: Some(reason) }
                }
            }
        })
        .collect();
    let stats = if cfg.bpf_stats {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .inspect_err(|e| warn!(error = %e, "cannot enable BPF run-time statistics; moonfrp_agent_bpf_* stays empty"))
            .ok()
    } else {
        None
    };
    Ok(Kernel {
        ebpf,
        maps,
        probes,
        stats,
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

fn attach_tracepoint(ebpf: &mut Ebpf, program_name: &str, tp: &str) -> Result<(), String> {
    let (category, name) = tp.split_once('/').expect("tracepoints are category/name");
    let prog: &mut TracePoint = program(ebpf, program_name)?;
    prog.load().map_err(|e| program_error(&e))?;
    prog.attach(category, name)
        .map_err(|e| format!("attach to {tp}: {e}"))?;
    Ok(())
}

fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program_name: &str,
    cgroup: &File,
    at: CgroupSkbAttachType,
) -> Result<(), String> {
    let prog: &mut CgroupSkb = program(ebpf, program_name)?;
    prog.load().map_err(|e| program_error(&e))?;
    // aya 0.14 attaches through a BPF link, which the kernel always treats as "multi": other
    // programs on the root cgroup (systemd's, another agent's) are left alone.
    prog.attach(cgroup, at, CgroupAttachMode::Single)
        .map_err(|e| format!("attach to cgroup: {e}"))?;
    Ok(())
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
        ] {
            assert!(obj.maps.contains_key(map), "map {map} missing");
        }
        // The global is found by name when the loader overrides it (`must_exist = true`).
        let symbol = format!("{}\0", names::LAYOUT);
        assert!(
            OBJECT.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
            "global LAYOUT missing"
        );
    }
}
