//! Per-service and per-container resources from real cgroups on this machine's layout (hybrid:
//! CPU from cgroup v2, memory and pids from v1; the pure v2 layout is read by the same code and
//! tested on a tree of files in the agent's unit tests). A unit's cgroup with a CPU-burning
//! process and, in a child cgroup, a memory-allocating one: CPU seconds and memory within 10 %
//! of what they used, in `/metrics`, `status`, `top` and the page. 500 container cgroups: the cap
//! holds, the busiest is kept and named; cgroups that come and go cost nothing but their series.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use moonfrp_tests::{Agent, AgentCmd, Metrics, agent_bin, tmux::Tmux, workspace};

/// The cgroup v2 root and the v1 hierarchies a process must join on a hybrid layout.
struct Hierarchies {
    v2: PathBuf,
    v1: Vec<PathBuf>,
}

fn hierarchies() -> Hierarchies {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for l in text.lines() {
        let (left, right) = l.split_once(" - ").unwrap();
        let mount = PathBuf::from(left.split_whitespace().nth(4).unwrap());
        let mut r = right.split_whitespace();
        let (fstype, options) = (r.next().unwrap(), r.nth(1).unwrap_or_default());
        if fstype == "cgroup2" && v2.is_none() {
            v2 = Some(mount);
        } else if fstype == "cgroup"
            && options
                .split(',')
                .any(|o| ["memory", "pids", "cpuacct", "blkio"].contains(&o))
        {
            v1.push(mount);
        }
    }
    Hierarchies {
        v2: v2.expect("a cgroup2 mount"),
        v1,
    }
}

/// The Python interpreter itself, not a launcher in front of it (pyenv's shim runs a few
/// processes of its own, whose CPU time the cgroup counts and the interpreter does not).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 (the test setup installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Test cgroups in every hierarchy and the processes in them; all gone when dropped.
struct Tree {
    h: Hierarchies,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Tree {
    fn new() -> Self {
        Self {
            h: hierarchies(),
            dirs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Creates `rel` in v2 and, when `v1`, in the v1 hierarchies.
    fn mkdir(&mut self, rel: &str, v1: bool) {
        let roots: Vec<PathBuf> = std::iter::once(self.h.v2.clone())
            .chain(self.h.v1.iter().filter(|_| v1).cloned())
            .collect();
        for root in roots {
            let d = root.join(rel);
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            self.dirs.push(d);
        }
    }

    fn rmdir(&mut self, rel: &str) {
        let gone: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter(|d| d.ends_with(rel))
            .cloned()
            .collect();
        for d in gone {
            remove(&d);
            self.dirs.retain(|x| *x != d);
        }
    }

    /// Starts `python3 -c code` inside `rel` (every hierarchy it was made in); returns the
    /// first line it prints.
    fn spawn(&mut self, rel: &str, code: &str) -> String {
        let procs: Vec<String> = self
            .dirs
            .iter()
            .filter(|d| d.ends_with(rel))
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "for f in {}; do echo $$ > \"$f\" || exit 9; done; exec {} -c \"$1\"",
                    procs.join(" "),
                    python()
                ),
                "sh",
                code,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(!line.is_empty(), "the process in {rel} printed nothing");
        let pid = child.id();
        self.children.push(child);
        format!("{pid} {}", line.trim())
    }

    fn kill(&mut self, pid: u32) {
        for c in self.children.iter_mut().filter(|c| c.id() == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// rmdir of a cgroup, retried while its last processes are still leaving it.
fn remove(d: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.exists() && std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            remove(d);
        }
    }
}

/// Burns `seconds` of CPU, prints the CPU time it used, then sleeps.
fn burner(seconds: f64) -> String {
    format!(
        "import os, time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\nt = os.times()\nprint(t.user + t.system, flush=True)\ntime.sleep(600)"
    )
}

/// Allocates and touches `mib` MiB, prints the CPU time it used, then sleeps.
fn allocator(mib: u64) -> String {
    format!(
        "import os, time\nb = bytearray({mib} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nt = os.times()\nprint(t.user + t.system, flush=True)\ntime.sleep(600)"
    )
}

/// `RssAnon` of a process, bytes.
fn rss_anon(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024.0
}

fn within(got: f64, want: f64, share: f64) -> bool {
    (got - want).abs() <= want * share
}

fn unit_cpu(m: &Metrics, unit: &str) -> f64 {
    ["user", "system"]
        .iter()
        .map(|mode| {
            m.get(
                "moonfrp_service_cpu_seconds_total",
                &[("unit", unit), ("mode", mode)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// A container's CPU seconds, user and system: how the kernel splits a short burst between them
/// is sampled, their sum is not.
fn container_cpu(m: &Metrics, container: &str, id: &str) -> Option<f64> {
    let mode = |mode| {
        m.get(
            "moonfrp_container_cpu_seconds_total",
            &[("container", container), ("id", id), ("mode", mode)],
        )
    };
    Some(mode("user")? + mode("system")?)
}

fn no_cgroup_errors(m: &Metrics) {
    assert_eq!(
        m.get(
            "moonfrp_agent_collector_success",
            &[("collector", "cgroups")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "moonfrp_agent_collection_errors_total",
            &[("source", "cgroups")]
        ),
        None,
        "{}",
        m.text
    );
}

#[test]
fn a_units_cpu_and_memory_are_what_its_processes_used() {
    const UNIT: &str = "frps-cgtest.service";
    let mut tree = Tree::new();
    let slice = format!("moonfrp-test-{}.slice", std::process::id());
    let unit = format!("{slice}/{UNIT}");
    let worker = format!("{unit}/worker");
    for rel in [&slice, &unit, &worker] {
        tree.mkdir(rel, true);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(&config, "[collectors]\nunits = [\"frps-cgtest*\"]\n").unwrap();
    let agent = AgentCmd::new(&["--config", config.to_str().unwrap()]).start();

    let burnt = tree.spawn(&unit, &burner(1.5));
    let made = tree.spawn(&worker, &allocator(192));
    let (burner_pid, burner_cpu) = burnt.split_once(' ').unwrap();
    let (alloc_pid, alloc_cpu) = made.split_once(' ').unwrap();
    let want_cpu: f64 = burner_cpu.parse::<f64>().unwrap() + alloc_cpu.parse::<f64>().unwrap();
    let want_memory = rss_anon(burner_pid) + rss_anon(alloc_pid);
    assert!(want_memory >= f64::from(192 << 20));

    // The unit's totals include its child's; both processes now sleep.
    agent.wait_snapshots(2);
    let m = agent.wait_for("the unit's CPU and memory", |m| {
        unit_cpu(m, UNIT) >= want_cpu * 0.9
            && m.get("moonfrp_service_memory_bytes", &[("unit", UNIT)])
                .is_some_and(|b| b >= want_memory * 0.9)
    });
    let cpu = unit_cpu(&m, UNIT);
    let memory = m
        .get("moonfrp_service_memory_bytes", &[("unit", UNIT)])
        .unwrap();
    eprintln!(
        "cpu {cpu:.3} s (processes say {want_cpu:.3}), memory {memory} (anonymous RSS {want_memory})"
    );
    assert!(
        within(cpu, want_cpu, 0.1),
        "cpu {cpu} s, the processes used {want_cpu} s"
    );
    assert!(
        within(memory, want_memory, 0.1),
        "memory {memory}, the processes hold {want_memory}"
    );
    assert_eq!(m.get("moonfrp_service_pids", &[("unit", UNIT)]), Some(2.0));
    assert!(
        m.get("moonfrp_service_memory_peak_bytes", &[("unit", UNIT)])
            .unwrap()
            >= memory
    );
    assert!(
        m.get(
            "moonfrp_service_memory_pressure_waiting_seconds_total",
            &[("unit", UNIT)]
        )
        .is_some()
    );
    assert_eq!(
        m.get("moonfrp_service_oom_kills_total", &[("unit", UNIT)]),
        Some(0.0)
    );
    // The child is not a unit of its own.
    assert!(m.with_label("unit", "worker").is_empty());
    no_cgroup_errors(&m);

    shown_in_status_top_and_the_page(&agent, UNIT);

    // The worker's cgroup goes: the unit loses its memory, nothing fails.
    tree.kill(alloc_pid.parse().unwrap());
    tree.rmdir(&worker);
    let m = agent.wait_for("the unit without the worker's memory", |m| {
        m.get("moonfrp_service_memory_bytes", &[("unit", UNIT)])
            .is_some_and(|b| b < f64::from(64 << 20))
    });
    assert_eq!(m.get("moonfrp_service_pids", &[("unit", UNIT)]), Some(1.0));
    no_cgroup_errors(&m);
    // The whole unit goes: its series go with it.
    tree.kill(burner_pid.parse().unwrap());
    tree.rmdir(&unit);
    let m = agent.wait_for("the unit's series to go", |m| {
        m.with_label("unit", UNIT).is_empty()
    });
    no_cgroup_errors(&m);
}

/// The unit's row in `status`, in `top` (tmux) and on the page (Chromium).
fn shown_in_status_top_and_the_page(agent: &Agent, unit: &str) {
    let out = Command::new(agent_bin())
        .args(["status", "--listen", &agent.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains(unit))
        .unwrap_or_else(|| panic!("no {unit} row:\n{text}"));
    assert!(row.contains("MiB") && row.contains("pids     2"), "{row}");

    let tmux = Tmux::new(&format!("moonfrp-services-{}", std::process::id()));
    tmux.start(
        &format!(
            "{} top --listen {} --refresh 1s; sleep 60",
            agent_bin().display(),
            agent.addr
        ),
        120,
        40,
    );
    let screen = tmux.wait("the unit in top", |s| {
        s.contains(unit) && s.contains("services (1)")
    });
    let line = screen.lines().find(|l| l.contains(unit)).unwrap();
    assert!(line.contains("service") && line.contains("MiB"), "{screen}");
    tmux.run(&["send-keys", "-t", "top", "q"]);

    let out = Command::new("node")
        .arg(workspace().join("tests/ui/services.mjs"))
        .arg(format!("http://{}/", agent.addr))
        .arg(unit)
        .current_dir(workspace().join("tests/ui"))
        .output()
        .expect("node (the test setup installs playwright-core in tests/ui)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let cells: Vec<&str> = rows[unit]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    // Name, kind, state, CPU, memory, peak, PIDs, OOM kills.
    assert_eq!(
        (cells[0], cells[1], cells[6], cells[7]),
        (unit, "service", "2", "0"),
        "{cells:?}"
    );
    assert!(cells[4].ends_with("MB"), "{cells:?}");
}

#[test]
fn five_hundred_containers_are_capped_and_vanishing_ones_cost_nothing() {
    let mut tree = Tree::new();
    let slice = format!("moonfrp-test-{}-docker.slice", std::process::id());
    tree.mkdir(&slice, false);
    let id = |i: u32| {
        format!(
            "{:012x}{}",
            0xc0ff_ee00_0000_u64 + u64::from(i),
            "0".repeat(52)
        )
    };
    for i in 0..500 {
        tree.mkdir(&format!("{slice}/docker-{}.scope", id(i)), false);
    }
    // The busiest is the last by id, and Docker's files name it.
    let docker = tempfile::tempdir().unwrap();
    let busy = id(499);
    std::fs::create_dir_all(docker.path().join("containers").join(&busy)).unwrap();
    std::fs::write(
        docker
            .path()
            .join("containers")
            .join(&busy)
            .join("config.v2.json"),
        r#"{"ID":"x","Name":"/frps-in-docker","State":{"Running":true}}"#,
    )
    .unwrap();
    let burnt = tree.spawn(&format!("{slice}/docker-{busy}.scope"), &burner(0.3));
    let burnt: f64 = burnt.split_once(' ').unwrap().1.parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("moonfrp.toml");
    std::fs::write(
        &config,
        format!(
            "[collectors]\nunits = []\nmax_containers = 25\ndocker_root = \"{}\"\n",
            docker.path().display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]);
    let m = agent.wait_for("500 containers", |m| {
        m.get("moonfrp_containers", &[]) == Some(500.0)
    });
    assert_eq!(m.get("moonfrp_containers_exported", &[]), Some(25.0));
    let exported: std::collections::BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|s| s.name == "moonfrp_container_cpu_seconds_total")
        .flat_map(|s| {
            s.labels
                .iter()
                .filter(|(k, _)| k == "id")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(exported.len(), 25, "{exported:?}");
    // Its CPU is what its process used.
    let cpu = container_cpu(&m, "frps-in-docker", &busy[..12])
        .unwrap_or_else(|| panic!("the busy container is not exported:\n{}", m.text));
    assert!(
        within(cpu, burnt, 0.2),
        "{cpu} s, its process says {burnt} s"
    );
    assert!(m.limit("containers") >= 1.0);
    no_cgroup_errors(&m);

    // Cgroups come and go while the agent reads: nothing fails, the count follows.
    let churn_dir = format!("{slice}/churn");
    let churn_root = tree.h.v2.join(&churn_dir);
    std::fs::create_dir(&churn_root).unwrap();
    let snapshots = m.get("moonfrp_agent_snapshots_total", &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut n = 0u32;
    while Instant::now() < deadline {
        let d = churn_root.join(format!("docker-{}.scope", id(1000 + n % 20)));
        if std::fs::create_dir(&d).is_ok() {
            std::thread::sleep(Duration::from_millis(2));
            remove(&d);
        }
        n += 1;
    }
    remove(&churn_root);
    for i in 0..100 {
        tree.rmdir(&format!("docker-{}.scope", id(i)));
    }
    let m = agent.wait_for("400 containers", |m| {
        m.get("moonfrp_containers", &[]) == Some(400.0)
    });
    assert!(m.get("moonfrp_agent_snapshots_total", &[]).unwrap() >= snapshots + 3.0);
    assert_eq!(m.get("moonfrp_containers_exported", &[]), Some(25.0));
    assert!(m.with_label("id", &id(0)[..12]).is_empty());
    no_cgroup_errors(&m);
    let log = agent.log();
    assert_eq!(
        log.matches("more containers than collectors.max_containers")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("collector failed"), "{log}");
    eprintln!("{n} cgroups made and removed while the agent read");
}
