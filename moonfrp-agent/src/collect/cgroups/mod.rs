//! What each service and container costs, from cgroups: CPU, memory (current, peak, pressure),
//! IO, pids and OOM kills per systemd unit matching `[collectors] units` and per container. The
//! tree is walked once per interval from the hierarchies in mountinfo (pure cgroup v2, or the
//! hybrid layout where memory, blkio and pids are v1), bounded in directories and depth;
//! containers beyond `max_containers` are left out, the busiest (by CPU) kept. A cgroup that
//! disappears between two reads simply has no series; it is not an error.
pub mod containers;
pub mod stats;

use std::{
    collections::{HashSet, VecDeque},
    path::PathBuf,
};

use tracing::{info, warn};

use self::{
    containers::{Container, Names},
    stats::{Layout, Stats},
};
use super::CollectError;
use crate::untrusted::Limit;

/// Most cgroup directories looked at per interval, and how deep.
pub const MAX_DIRS: usize = 20_000;
pub const MAX_DEPTH: usize = 8;
/// Most units exported (patterns that match a whole fleet of scopes are cut here).
pub const MAX_UNITS: usize = 500;

/// A unit or a container and what it used.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The unit's name (`frps.service`) or the container's.
    pub name: String,
    /// Containers: the short id; units: empty.
    pub id: String,
    pub stats: Stats,
}

/// One interval's cgroup view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupSample {
    /// Sorted by name.
    pub units: Vec<Group>,
    /// The exported containers, sorted by name.
    pub containers: Vec<Group>,
    /// Containers found, exported or not.
    pub containers_found: usize,
}

/// A cgroup directory found by the walk.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Unit { name: String, rel: PathBuf },
    Container { container: Container, rel: PathBuf },
}

/// Walks the hierarchies breadth first: units (names matching `patterns`) and containers, not
/// below either. The flag says the walk was cut at [`MAX_DIRS`].
fn walk(layout: &Layout, patterns: &[glob::Pattern], containers: bool) -> (Vec<Found>, bool) {
    let mut found = Vec::new();
    let mut units = HashSet::new();
    let mut visited = 0usize;
    let roots = layout.roots();
    for (i, root) in roots.iter().enumerate() {
        let mut queue = VecDeque::from([(PathBuf::new(), 0usize)]);
        while let Some((rel, depth)) = queue.pop_front() {
            let Ok(entries) = std::fs::read_dir(root.join(&rel)) else {
                continue;
            };
            let parent = rel
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            for e in entries.filter_map(Result::ok) {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                visited += 1;
                if visited > MAX_DIRS {
                    return (found, true);
                }
                let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let child = rel.join(&name);
                // A later hierarchy adds only what the first lacks (a cgroupfs driver's
                // containers in v1 `memory`); the rest was walked there already.
                if i > 0 && roots[0].join(&child).is_dir() {
                    continue;
                }
                if let Some(c) = containers::container_of(&parent, &name) {
                    if containers {
                        found.push(Found::Container {
                            container: c,
                            rel: child,
                        });
                    }
                    continue;
                }
                if is_unit(&name) && patterns.iter().any(|p| p.matches(&name)) {
                    // The shallowest of same-named units (a user's session has its own).
                    if units.insert(name.clone()) {
                        found.push(Found::Unit { name, rel: child });
                    }
                    continue;
                }
                if depth + 1 < MAX_DEPTH {
                    queue.push_back((child, depth + 1));
                }
            }
        }
    }
    (found, false)
}

/// A systemd unit's cgroup name.
fn is_unit(name: &str) -> bool {
    [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// `[collectors]` settings of this collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupOptions {
    pub units: Vec<String>,
    pub max_containers: usize,
    pub docker_root: PathBuf,
    pub podman_root: PathBuf,
}

/// The collector: the layout (found once), names of live containers, what was said.
#[derive(Debug)]
pub struct Cgroups {
    layout: Option<Layout>,
    patterns: Vec<glob::Pattern>,
    max_containers: usize,
    names: Names,
    /// Whether the last interval left containers out / cut the walk (said once per change).
    capped: bool,
    cut: bool,
}

impl Cgroups {
    pub fn new(opts: &CgroupOptions) -> Self {
        let mut c = Self {
            layout: None,
            patterns: Vec::new(),
            max_containers: 0,
            names: Names::new(opts.docker_root.clone(), opts.podman_root.clone()),
            capped: false,
            cut: false,
        };
        c.set_options(opts);
        c
    }

    pub fn set_options(&mut self, opts: &CgroupOptions) {
        // Patterns were checked when the config was read.
        self.patterns = opts
            .units
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        self.max_containers = opts.max_containers;
        self.names = Names::new(opts.docker_root.clone(), opts.podman_root.clone());
    }

    /// Uses these hierarchies instead of the ones in mountinfo (tests).
    #[must_use]
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = Some(layout);
        self
    }

    fn layout(&mut self) -> Result<&Layout, CollectError> {
        if self.layout.is_none() {
            let m = crate::sys::current_mounts()
                .map_err(|e| CollectError::parse("/proc/self/mountinfo", e))?;
            let l = Layout::from_mounts(&m);
            if l.v2.is_none() && l.v1.is_empty() {
                return Err(CollectError::parse(
                    "/proc/self/mountinfo",
                    "no cgroup filesystem is mounted",
                ));
            }
            info!(v2 = ?l.v2, v1 = l.v1.len(), "reading service and container resources from cgroups");
            self.layout = Some(l);
        }
        Ok(self.layout.as_ref().expect("set above"))
    }

    pub fn read(&mut self) -> Result<CgroupSample, CollectError> {
        let layout = self.layout()?.clone();
        let (found, cut) = walk(&layout, &self.patterns, self.max_containers > 0);
        if cut != self.cut {
            if cut {
                warn!(
                    max = MAX_DIRS,
                    "the cgroup tree has more directories than are looked at; some services or containers may be missing"
                );
            }
            self.cut = cut;
        }
        if cut {
            Limit::CgroupDirs.hit();
        }
        let mut sample = CgroupSample::default();
        let mut boxes = Vec::new();
        for f in found {
            match f {
                Found::Unit { name, rel } => {
                    if sample.units.len() >= MAX_UNITS {
                        continue;
                    }
                    if let Some(stats) = stats::read_stats(&layout, &rel) {
                        sample.units.push(Group {
                            name,
                            id: String::new(),
                            stats,
                        });
                    }
                }
                Found::Container { container, rel } => boxes.push((rel, container)),
            }
        }
        sample.units.sort_by(|a, b| a.name.cmp(&b.name));
        self.containers(&layout, boxes, &mut sample);
        Ok(sample)
    }

    /// Reads the containers, keeps the busiest `max_containers`, names them.
    fn containers(
        &mut self,
        layout: &Layout,
        boxes: Vec<(PathBuf, Container)>,
        sample: &mut CgroupSample,
    ) {
        // Ranking needs only CPU: that is read once for every container, the rest only for
        // those exported.
        let mut ranked: Vec<(stats::Cpu, PathBuf, Container)> = boxes
            .into_iter()
            .map(|(rel, c)| (stats::read_cpu(layout, &rel), rel, c))
            .collect();
        sample.containers_found = ranked.len();
        ranked.sort_by(|a, b| {
            b.0.seconds()
                .total_cmp(&a.0.seconds())
                .then_with(|| a.2.id.cmp(&b.2.id))
        });
        let capped = ranked.len() > self.max_containers;
        if capped {
            Limit::Containers.hit();
        }
        if capped != self.capped {
            if capped {
                warn!(
                    found = ranked.len(),
                    max = self.max_containers,
                    "more containers than collectors.max_containers: the busiest are exported, the rest left out"
                );
            }
            self.capped = capped;
        }
        ranked.truncate(self.max_containers);
        let live: HashSet<&str> = ranked.iter().map(|(_, _, c)| c.id.as_str()).collect();
        let mut kept = Vec::new();
        for (cpu, rel, c) in &ranked {
            if let Some(stats) = stats::read_rest(layout, rel, *cpu) {
                kept.push(Group {
                    name: self.names.name(c),
                    id: c.short_id().to_owned(),
                    stats,
                });
            }
        }
        self.names.retain(&live);
        kept.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        sample.containers = kept;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn cgroup(root: &Path, rel: &str, cpu_usec: u64) {
        let d = root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("cpu.stat"),
            format!("usage_usec {cpu_usec}\nuser_usec {cpu_usec}\nsystem_usec 0\n"),
        )
        .unwrap();
        std::fs::write(d.join("memory.current"), "4096\n").unwrap();
    }

    fn collector(root: &Path, max_containers: usize) -> Cgroups {
        Cgroups::new(&CgroupOptions {
            units: vec!["frps*".into(), "frpc*".into()],
            max_containers,
            docker_root: root.join("no-docker"),
            podman_root: root.join("no-podman"),
        })
        .with_layout(Layout {
            v2: Some(root.to_owned()),
            v1: std::collections::BTreeMap::default(),
            v2_has: ["memory"].map(str::to_owned).into(),
        })
    }

    #[test]
    fn finds_matching_units_and_containers_and_keeps_the_busiest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        cgroup(root, "system.slice/frps.service", 1_000_000);
        cgroup(root, "system.slice/frps.service/child", 5);
        cgroup(
            root,
            "system.slice/system-frpc.slice/frpc@office.service",
            2,
        );
        cgroup(root, "system.slice/sshd.service", 3);
        cgroup(
            root,
            "user.slice/user-0.slice/user@0.service/app.slice/frps.service",
            4,
        );
        for i in 0..30u64 {
            let id = format!("{:064x}", i + 1);
            cgroup(root, &format!("system.slice/docker-{id}.scope"), i);
            cgroup(root, &format!("system.slice/docker-{id}.scope/inner"), 0);
        }
        let mut c = collector(root, 5);
        let s = c.read().unwrap();
        let units: Vec<&str> = s.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(units, ["frpc@office.service", "frps.service"]);
        assert_eq!(s.units[1].stats.cpu_user_seconds, Some(1.0));
        assert_eq!(s.containers_found, 30);
        let kept: Vec<&str> = s.containers.iter().map(|c| c.id.as_str()).collect();
        // The five busiest (ids 26..=30), by name (their short ids).
        assert_eq!(kept.len(), 5);
        assert!(
            kept.iter().all(|id| id.starts_with("0000000000")),
            "{kept:?}"
        );
        let mut cpus: Vec<f64> = s
            .containers
            .iter()
            .map(|c| {
                c.stats.cpu_user_seconds.unwrap_or(0.0) + c.stats.cpu_system_seconds.unwrap_or(0.0)
            })
            .collect();
        cpus.sort_by(f64::total_cmp);
        assert_eq!(cpus, [25e-6, 26e-6, 27e-6, 28e-6, 29e-6]);
        assert!(c.capped);

        // Off: no containers at all.
        let s = collector(root, 0).read().unwrap();
        assert_eq!((s.containers_found, s.containers.len()), (0, 0));
    }

    #[test]
    fn the_walk_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = String::from("a");
        for _ in 0..12 {
            deep.push_str("/a");
        }
        cgroup(dir.path(), &format!("{deep}/frps.service"), 1);
        let s = collector(dir.path(), 10).read().unwrap();
        assert!(s.units.is_empty(), "found below MAX_DEPTH: {:?}", s.units);
    }
}
