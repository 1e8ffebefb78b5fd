//! One collection cycle: ask FRP which tunnels exist, bring the kernel watch table in line, read
//! the kernel counters and every host collector, judge each tunnel's health, and return the
//! `Snapshot`. Everything that must survive between intervals lives in [`Cycle`].
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Instant, SystemTime},
};

use moonfrp_common::{Proto, names};
use tracing::{error, info, warn};

use crate::{
    collect::{CollectorRun, Collectors},
    config::Config,
    ebpf::Kernel,
    frp::{
        discovery::{Discovery, Found, Origin},
        health::{self, Signals},
    },
    process,
    snapshot::{AgentSample, LastError, PortlessTunnel, Snapshot, TunnelMeta, read_tunnels},
    sockets,
    tunnel::{TunnelSource, TunnelSpec},
    untrusted::Limit,
    watch::{WatchError, WatchTable},
};

/// Identity of a tunnel for health bookkeeping.
type HealthKey = (String, Option<(u16, Proto)>);

#[derive(Debug)]
struct HealthState {
    up: bool,
    failures: u64,
    last_error: Option<LastError>,
}

/// Kernel state plus what the agent remembers between intervals.
pub struct Cycle {
    kernel: Kernel,
    watch: WatchTable,
    host: Collectors,
    discovery: Option<Discovery>,
    /// Tunnels from the command line and the agent's config file.
    explicit: Vec<TunnelSpec>,
    /// Tunnels FRP told us about in the latest cycle.
    found: Vec<Found>,
    /// The kernel's watch table may not match the desired tunnels (not applied yet, or the last
    /// update failed): the next collection applies them even if FRP's ports did not move.
    watch_stale: bool,
    /// Was each tunnel up last time, how often it went down, and the latest reason.
    health: HashMap<HealthKey, HealthState>,
    /// Refused-connection counters at the previous cycle.
    refused: HashMap<(u16, Proto), u64>,
    maps: Vec<(&'static str, u32)>,
    /// Busiest peers per tunnel to put on `/metrics` (0: none).
    export_peers: usize,
    /// Ports watched for a while on request, until the given time.
    adhoc: BTreeMap<(u16, Proto), Instant>,
    seq: u64,
    pub config_ok: bool,
    /// Keys changed in the config file that only a restart applies.
    pub restart_pending: Vec<&'static str>,
    pub errors: BTreeMap<&'static str, u64>,
    textfile_error: Option<String>,
    /// Tunnels that wanted a slot and got none (all in use), by name.
    unwatched: BTreeSet<String>,
}

/// The name a port watched on request is counted under.
fn inspect_name(port: u16, proto: Proto) -> String {
    format!("inspect-{port}-{}", proto.as_str())
}

/// Most ports watched at once on request (`POST /api/v1/inspect`).
pub const MAX_INSPECTIONS: usize = 16;

/// Why an inspection was refused.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "{MAX_INSPECTIONS} inspections are running already; end one (DELETE) or wait for one to expire"
    )]
    TooMany,
    #[error(
        "no free kernel slot: all {0} are taken by configured and discovered tunnels, which come first; raise `kernel.slots`"
    )]
    NoSlot(u32),
    #[error("{0}")]
    Watch(#[from] WatchError),
}

impl Cycle {
    pub fn new(kernel: Kernel, config: &Config) -> Self {
        let maps = vec![
            (names::WATCH, moonfrp_common::WATCH_ENTRIES),
            (names::TRAFFIC, kernel.maps.slots()),
            (names::TCP_STATS, kernel.maps.slots()),
            (names::CONN_START, config.start.kernel.connection_entries()),
            (names::PEERS, config.start.kernel.peers),
        ];
        let mut watch = WatchTable::new(kernel.maps.slots());
        if kernel.continued {
            watch.restore(&kernel.maps.watched());
        }
        Self {
            watch,
            kernel,
            host: Collectors::new(&config.collectors),
            discovery: config
                .frp
                .enabled
                .then(|| Discovery::new(config.frp.options.clone())),
            explicit: config.tunnels.clone(),
            found: Vec::new(),
            watch_stale: true,
            health: HashMap::new(),
            refused: HashMap::new(),
            maps,
            adhoc: BTreeMap::new(),
            export_peers: config.start.kernel.export_peers as usize,
            seq: 0,
            config_ok: true,
            restart_pending: Vec::new(),
            errors: BTreeMap::new(),
            textfile_error: None,
            unwatched: BTreeSet::new(),
        }
    }

    /// Takes a reloaded configuration: explicit tunnels, collectors and discovery options.
    pub fn reconfigure(&mut self, config: &Config) -> Result<(), WatchError> {
        self.explicit.clone_from(&config.tunnels);
        self.host.set_options(&config.collectors);
        match (&mut self.discovery, config.frp.enabled) {
            (Some(d), true) => d.set_options(config.frp.options.clone()),
            (None, true) => self.discovery = Some(Discovery::new(config.frp.options.clone())),
            (_, false) => {
                self.discovery = None;
                self.found.clear();
            }
        }
        self.apply_tunnels()
    }

    /// Explicit tunnels, then FRP's, then inspections, one owner per (port, protocol), cut to
    /// the kernel's slots in that order: configured tunnels always win a slot over discovered
    /// ones, and both over inspections.
    fn desired(&self) -> Vec<TunnelSpec> {
        let mut out = self.explicit.clone();
        let mut taken: HashSet<(u16, Proto)> = out.iter().map(|t| (t.port, t.proto)).collect();
        for f in &self.found {
            let Some((port, proto)) = f.port else {
                continue;
            };
            if taken.insert((port, proto)) {
                let source = if f.origin == Origin::FrpsApi {
                    TunnelSource::FrpsApi
                } else {
                    TunnelSource::FrpConfig
                };
                out.push(TunnelSpec {
                    name: f.name.clone(),
                    port,
                    proto,
                    source,
                });
            }
        }
        for &(port, proto) in self.adhoc.keys() {
            if taken.insert((port, proto)) {
                out.push(TunnelSpec {
                    name: inspect_name(port, proto),
                    port,
                    proto,
                    source: TunnelSource::Inspect,
                });
            }
        }
        out
    }

    /// The name a (port, protocol) is counted under, if a configured or discovered tunnel
    /// covers it.
    fn covered(&self, port: u16, proto: Proto) -> Option<String> {
        self.explicit
            .iter()
            .map(|t| (t.port, t.proto, &t.name))
            .chain(
                self.found
                    .iter()
                    .filter_map(|f| f.port.map(|(p, q)| (p, q, &f.name))),
            )
            .find(|(p, q, _)| *p == port && *q == proto)
            .map(|(.., n)| n.clone())
    }

    /// Watches (`port`, `proto`) until `ttl` from now (renewed by asking again), unless a tunnel
    /// already covers it; returns the name it is counted under. At most [`MAX_INSPECTIONS`] at
    /// once, and only in a slot no configured or discovered tunnel needs.
    pub fn inspect(
        &mut self,
        port: u16,
        proto: Proto,
        ttl: std::time::Duration,
    ) -> Result<String, InspectError> {
        if let Some(name) = self.covered(port, proto) {
            return Ok(name);
        }
        if !self.adhoc.contains_key(&(port, proto)) {
            if self.adhoc.len() >= MAX_INSPECTIONS {
                Limit::Inspections.hit();
                return Err(InspectError::TooMany);
            }
            if self.desired().len() >= self.watch.capacity() as usize {
                Limit::Inspections.hit();
                return Err(InspectError::NoSlot(self.watch.capacity()));
            }
        }
        self.adhoc.insert((port, proto), Instant::now() + ttl);
        self.apply_tunnels()?;
        Ok(inspect_name(port, proto))
    }

    /// Ends an inspection early; the port goes back to unwatched unless a tunnel covers it.
    /// `false` if the port was not being inspected.
    pub fn end_inspect(&mut self, port: u16, proto: Proto) -> Result<bool, WatchError> {
        if self.adhoc.remove(&(port, proto)).is_none() {
            return Ok(false);
        }
        self.apply_tunnels()?;
        Ok(true)
    }

    /// Drops inspections whose time is up.
    fn expire_inspections(&mut self) {
        let now = Instant::now();
        let before = self.adhoc.len();
        self.adhoc.retain(|_, until| *until > now);
        if self.adhoc.len() != before
            && let Err(e) = self.apply_tunnels()
        {
            error!("cannot stop watching an inspected port: {e}");
            *self.errors.entry("watch").or_default() += 1;
        }
    }

    /// Asks FRP again and updates the watch table at once (a config file changed); the next
    /// snapshot shows the result.
    pub fn refresh_tunnels(&mut self, rt: &tokio::runtime::Handle) {
        if let Some(d) = &mut self.discovery {
            self.found = d.refresh(rt, &mut self.errors);
            if let Err(e) = self.apply_tunnels() {
                error!("cannot watch every discovered tunnel: {e}");
                *self.errors.entry("watch").or_default() += 1;
            }
        }
    }

    /// Makes the kernel watch table match the desired tunnels, as many as there are slots.
    /// Inspections that no longer fit (a tunnel added by a reload needs their slot) end; other
    /// tunnels left without a slot are logged once and counted.
    pub fn apply_tunnels(&mut self) -> Result<(), WatchError> {
        self.watch_stale = true;
        let mut desired = self.desired();
        let capacity = self.watch.capacity() as usize;
        let over = desired.split_off(capacity.min(desired.len()));
        let mut unwatched = BTreeSet::new();
        for t in over {
            if t.source == TunnelSource::Inspect {
                self.adhoc.remove(&(t.port, t.proto));
                warn!(tunnel = %t, "inspection ended: a configured or discovered tunnel needs its slot");
            } else {
                unwatched.insert(t.name);
            }
        }
        let new: Vec<&String> = unwatched.difference(&self.unwatched).collect();
        if !new.is_empty() {
            Limit::Slots.hits(new.len() as u64);
            let first: Vec<&str> = new.iter().take(5).map(|n| n.as_str()).collect();
            warn!(
                tunnels = unwatched.len(),
                first = first.join(", "),
                "tunnels without a kernel slot (all {capacity} in use): not counted; raise `kernel.slots`"
            );
        }
        self.unwatched = unwatched;
        let errors = &mut self.errors;
        let changes = self.watch.apply(&mut self.kernel.maps, &desired, |ports| {
            sockets::seed_active(ports).unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the socket table; active connections start at 0");
                *errors.entry("sockets").or_default() += 1;
                HashMap::new()
            })
        })?;
        for t in &changes.added {
            info!(tunnel = %t, source = t.source.as_str(), "watching");
        }
        for t in &changes.removed {
            info!(tunnel = %t, "no longer watching");
        }
        for t in &changes.continued {
            info!(tunnel = %t, source = t.source.as_str(), "watching, continuing the previous agent's counters");
        }
        for t in &changes.renamed {
            info!(tunnel = %t, "tunnel renamed; counters kept");
        }
        self.watch_stale = false;
        Ok(())
    }

    /// Judges a tunnel, counts up → down transitions (one first seen down is not a failure) and
    /// remembers the latest reason it was down.
    fn judge(&mut self, key: HealthKey, signals: &Signals<'_>, now: SystemTime) -> TunnelMeta {
        let h = health::evaluate(signals);
        let entry = self.health.entry(key).or_insert(HealthState {
            up: h.up,
            failures: 0,
            last_error: None,
        });
        if entry.up && !h.up {
            entry.failures += 1;
        }
        entry.up = h.up;
        if !h.up {
            entry.last_error = Some(LastError {
                reason: h.reason.clone(),
                at: now,
            });
        }
        TunnelMeta {
            health: h,
            failures: entry.failures,
            last_error: entry.last_error.clone(),
            ..TunnelMeta::default()
        }
    }

    /// One collection; `rt` runs the FRP API calls (this is called off the async workers).
    pub fn collect(&mut self, rt: &tokio::runtime::Handle) -> Snapshot {
        let started = Instant::now();
        self.expire_inspections();
        let mut runs = Vec::new();
        if let Some(d) = &mut self.discovery {
            let t = Instant::now();
            let found = d.refresh(rt, &mut self.errors);
            // The watch table follows FRP's tunnels; it is left alone while they stay where
            // they were (a thousand tunnels compared, not rebuilt and applied, each interval).
            let moved = !same_ports(&found, &self.found);
            self.found = found;
            if (moved || self.watch_stale)
                && let Err(e) = self.apply_tunnels()
            {
                error!("cannot watch every discovered tunnel: {e}");
                *self.errors.entry("watch").or_default() += 1;
            }
            runs.push(CollectorRun {
                name: "frp",
                duration: t.elapsed(),
                ok: true,
            });
        }
        if self.watch.restoring() {
            // FRP's tunnels are known now: what the previous agent watched and nobody wants goes.
            self.watch.end_restore();
            if let Err(e) = self.apply_tunnels() {
                error!("cannot update the watch table: {e}");
                *self.errors.entry("watch").or_default() += 1;
            }
        }
        let t = Instant::now();
        let mut failures = 0;
        let mut tunnels = read_tunnels(&self.kernel.maps, &self.watch, &mut failures);
        if failures > 0 {
            *self.errors.entry("kernel").or_default() += failures;
        }
        runs.push(CollectorRun {
            name: "kernel",
            duration: t.elapsed(),
            ok: failures == 0,
        });

        let portless = self.judge_all(&mut tunnels, SystemTime::now());
        if self.export_peers > 0 {
            let mut top = self.kernel.maps.peers.top(self.export_peers);
            for t in &mut tunnels {
                t.peers = top
                    .remove(&(t.spec.port, t.spec.proto as u8))
                    .unwrap_or_default();
            }
        }

        let (system, host_runs) = self.host.collect(&mut self.errors);
        runs.extend(host_runs);
        let process = process::sample()
            .inspect_err(|e| {
                warn!(error = %e, "cannot read /proc/self");
                *self.errors.entry("process").or_default() += 1;
            })
            .ok();
        self.seq += 1;
        let snapshot = Snapshot {
            seq: self.seq,
            taken_at: SystemTime::now(),
            build_duration: started.elapsed(),
            tunnels,
            portless,
            probes: self.kernel.probes.clone(),
            process,
            system,
            agent: AgentSample {
                slots_capacity: self.watch.capacity(),
                slots_used: self.watch.len() as u32,
                unwatched: self.unwatched.len() as u32,
                config_ok: self.config_ok,
                restart_pending: !self.restart_pending.is_empty(),
                web_config_ok: crate::server::web_config::last_reload_successful(),
                limits: crate::untrusted::limit_hits(),
                errors: self.errors.clone(),
                collectors: runs,
                bpf: self.kernel.program_stats(),
                bpf_stats_on: self.kernel.stats_seconds_on(),
                maps: self.maps.clone(),
            },
        };
        // The statistics window opens after the snapshot has read the totals: the next snapshot
        // sees it closed.
        self.kernel.sample_stats();
        snapshot
    }

    /// Health of every watched tunnel (filled into its meta) and of the portless FRP ones.
    fn judge_all(
        &mut self,
        tunnels: &mut [crate::snapshot::TunnelSample],
        now: SystemTime,
    ) -> Vec<PortlessTunnel> {
        let listening = sockets::listening()
            .inspect_err(|e| {
                warn!(error = %e, "cannot read the socket table: tunnel health goes without listeners");
                *self.errors.entry("sockets").or_default() += 1;
            })
            .ok();
        let found: HashMap<(u16, Proto), Found> = self
            .found
            .iter()
            .filter_map(|f| f.port.map(|p| (p, f.clone())))
            .collect();
        for t in tunnels.iter_mut() {
            let key = (t.spec.port, t.spec.proto);
            let refused_now = t.tcp.as_ref().map_or(0, |c| c.counters.refused);
            let refused =
                refused_now.saturating_sub(self.refused.insert(key, refused_now).unwrap_or(0));
            let f = found.get(&key);
            let signals = Signals {
                frp_status: f.and_then(|f| f.status.as_deref()),
                frp_error: f.and_then(|f| f.error.as_deref()),
                frp_ok: f.and_then(Found::frp_ok),
                port: Some(key),
                listening: listening.as_ref().map(|l| l.contains(&key)),
                refused,
            };
            t.meta = TunnelMeta {
                kind: f.map(|f| f.kind.clone()).unwrap_or_default(),
                role: f.map(|f| f.role),
                frp_status: f.and_then(|f| f.status.clone()),
                api: f.and_then(|f| f.stats),
                ..self.judge((t.spec.name.clone(), Some(key)), &signals, now)
            };
        }
        let watched: HashSet<(u16, Proto)> = tunnels
            .iter()
            .map(|t| (t.spec.port, t.spec.proto))
            .collect();
        self.refused.retain(|k, _| watched.contains(k));
        let portless: Vec<Found> = self
            .found
            .iter()
            .filter(|f| f.port.is_none())
            .cloned()
            .collect();
        portless
            .into_iter()
            .map(|f| {
                let signals = Signals {
                    frp_status: f.status.as_deref(),
                    frp_error: f.error.as_deref(),
                    frp_ok: f.frp_ok(),
                    ..Signals::default()
                };
                PortlessTunnel {
                    name: f.name.clone(),
                    meta: TunnelMeta {
                        kind: f.kind.clone(),
                        role: Some(f.role),
                        frp_status: f.status.clone(),
                        api: f.stats,
                        ..self.judge((f.name.clone(), None), &signals, now)
                    },
                }
            })
            .collect()
    }

    /// Counts and logs (once per change) the outcome of a textfile write.
    pub fn textfile_result(&mut self, result: Result<(), crate::textfile::TextfileError>) {
        match result {
            Ok(()) => {
                if self.textfile_error.take().is_some() {
                    info!("textfile written again");
                }
            }
            Err(e) => {
                *self.errors.entry("textfile").or_default() += 1;
                let msg = e.to_string();
                if self.textfile_error.as_ref() != Some(&msg) {
                    error!("{msg}");
                    self.textfile_error = Some(msg);
                }
            }
        }
    }
}

/// Whether two discoveries ask for the same watch table: the same tunnels (name, port, origin)
/// in the same order. Their status and statistics do not matter here.
fn same_ports(a: &[Found], b: &[Found]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.port == y.port && x.origin == y.origin && x.name == y.name)
}
