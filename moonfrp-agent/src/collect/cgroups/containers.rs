//! Containers among the cgroups: told apart by their cgroup names (Docker, Podman, containerd,
//! CRI-O, with the systemd or the cgroupfs driver) and named from the runtimes' own files where
//! they can be read without the runtimes' APIs (Docker's `config.v2.json`, Podman's
//! `containers.json`); else by their short id.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// A container found in the cgroup tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    /// The 64 hex digits.
    pub id: String,
    pub runtime: Runtime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
    /// A bare id under a parent that does not say (containerd's cgroupfs driver, others).
    Unknown,
}

impl Container {
    /// The first 12 digits, as `docker ps` shows them.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container a cgroup directory `name` (under `parent`) stands for, if any.
pub fn container_of(parent: &str, name: &str) -> Option<Container> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
    ] {
        if let Some(id) = stem.strip_prefix(prefix) {
            // `libpod-conmon-<id>` and `crio-conmon-<id>` are the monitors, not the containers.
            return is_id(id).then(|| Container {
                id: id.to_owned(),
                runtime,
            });
        }
    }
    is_id(name).then(|| Container {
        id: name.to_owned(),
        runtime: match parent {
            "docker" => Runtime::Docker,
            "libpod_parent" => Runtime::Podman,
            _ => Runtime::Unknown,
        },
    })
}

/// Largest runtime file read for a name.
const MAX_DOCKER_CONFIG: u64 = 4 << 20;
const MAX_PODMAN_LIST: u64 = 32 << 20;

/// Container names, read from the runtimes' files and kept while the containers live.
#[derive(Debug)]
pub struct Names {
    docker_root: PathBuf,
    podman_root: PathBuf,
    known: HashMap<String, String>,
    /// Podman's list and the modification time it was read at.
    podman: Option<(SystemTime, HashMap<String, String>)>,
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(serde::Deserialize)]
struct PodmanContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

impl Names {
    pub fn new(docker_root: PathBuf, podman_root: PathBuf) -> Self {
        Self {
            docker_root,
            podman_root,
            known: HashMap::new(),
            podman: None,
        }
    }

    /// The container's name (escaped and bounded like every name from outside), or its short id.
    pub fn name(&mut self, c: &Container) -> String {
        if let Some(n) = self.known.get(&c.id) {
            return n.clone();
        }
        let raw = match c.runtime {
            Runtime::Docker => self.docker(&c.id),
            Runtime::Podman => self.podman(&c.id),
            Runtime::Unknown => self.docker(&c.id).or_else(|| self.podman(&c.id)),
            Runtime::Containerd | Runtime::CriO => None,
        };
        let Some(raw) = raw.filter(|n| !n.is_empty()) else {
            return c.short_id().to_owned();
        };
        let (name, changed) = crate::untrusted::name(&raw);
        if changed {
            crate::untrusted::Limit::Name.hit();
        }
        self.known.insert(c.id.clone(), name.clone());
        name
    }

    /// Forgets the names of containers that are gone.
    pub fn retain(&mut self, live: &HashSet<&str>) {
        self.known.retain(|id, _| live.contains(id.as_str()));
    }

    fn docker(&self, id: &str) -> Option<String> {
        let path = self
            .docker_root
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let text = crate::untrusted::read_text(&path, MAX_DOCKER_CONFIG).ok()?;
        let c: DockerConfig = serde_json::from_str(&text).ok()?;
        Some(c.name.trim_start_matches('/').to_owned())
    }

    fn podman(&mut self, id: &str) -> Option<String> {
        let path = self.podman_root.join("overlay-containers/containers.json");
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        if self.podman.as_ref().is_none_or(|(t, _)| *t != mtime) {
            let list: Vec<PodmanContainer> = crate::untrusted::read_text(&path, MAX_PODMAN_LIST)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let names = list
                .into_iter()
                .filter_map(|c| Some((c.id, c.names.into_iter().next()?)))
                .collect();
            self.podman = Some((mtime, names));
        }
        self.podman.as_ref()?.1.get(id).cloned()
    }
}

/// Where Docker and Podman keep their state by default.
pub fn default_docker_root() -> PathBuf {
    Path::new("/var/lib/docker").to_owned()
}

pub fn default_podman_root() -> PathBuf {
    Path::new("/var/lib/containers/storage").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3e2d1c0b0a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn tells_containers_by_their_cgroup_names() {
        let c = |parent: &str, name: &str| container_of(parent, name).map(|c| (c.runtime, c.id));
        let id = ID.to_owned();
        assert_eq!(
            c("system.slice", &format!("docker-{ID}.scope")),
            Some((Runtime::Docker, id.clone()))
        );
        assert_eq!(c("docker", ID), Some((Runtime::Docker, id.clone())));
        assert_eq!(
            c("machine.slice", &format!("libpod-{ID}.scope")),
            Some((Runtime::Podman, id.clone()))
        );
        assert_eq!(
            c("machine.slice", &format!("libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            c(
                "kubepods-besteffort.slice",
                &format!("cri-containerd-{ID}.scope")
            ),
            Some((Runtime::Containerd, id.clone()))
        );
        assert_eq!(
            c("kubepods.slice", &format!("crio-{ID}.scope")),
            Some((Runtime::CriO, id.clone()))
        );
        assert_eq!(c("default", ID), Some((Runtime::Unknown, id)));
        assert_eq!(c("system.slice", "frps.service"), None);
        assert_eq!(c("system.slice", "docker-1234.scope"), None);
        assert_eq!(c("docker", &ID.to_uppercase()), None);
    }

    #[test]
    fn names_come_from_the_runtimes_files_else_the_short_id() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        let podman = dir.path().join("podman");
        std::fs::create_dir_all(docker.join("containers").join(ID)).unwrap();
        std::fs::write(
            docker.join("containers").join(ID).join("config.v2.json"),
            r#"{"ID":"x","Name":"/web\u001b[31m","Config":{"Env":["A=1"]}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(podman.join("overlay-containers")).unwrap();
        let pid = ID.replace('4', "5");
        std::fs::write(
            podman.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"{pid}","names":["db"],"image":"x"}}]"#),
        )
        .unwrap();
        let mut names = Names::new(docker, podman);
        let d = Container {
            id: ID.into(),
            runtime: Runtime::Docker,
        };
        assert_eq!(names.name(&d), "web\\u{1b}[31m");
        let p = Container {
            id: pid.clone(),
            runtime: Runtime::Podman,
        };
        assert_eq!(names.name(&p), "db");
        let k = Container {
            id: ID.replace('4', "6"),
            runtime: Runtime::Containerd,
        };
        assert_eq!(names.name(&k), &ID.replace('4', "6")[..12]);
        names.retain(&HashSet::from([pid.as_str()]));
        assert_eq!(names.known.len(), 1);
    }
}
