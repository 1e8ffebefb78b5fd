//! `cargo xtask link-order`: which functions a running agent executes, hottest first, written to
//! `moonfrp-agent/link-order.txt` for the release link (see `moonfrp-agent/build.rs`).
//!
//! Every function of a copy of the release binary gets a uprobe (tracefs; the kernel counts each
//! probe's hits), then the copy runs what an agent runs in production: 1,000 tunnels, most of
//! them up and some down (alerts fire), collections, history writes, scrapes in both formats
//! with and without gzip, every API resource, an inspection, the page, and a clean shutdown.
//! The functions that were hit, most hits first, are the order. A function the workload missed
//! is not lost, only placed among the cold ones (and costs its page when it runs).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use moonfrp_tests::{AgentCmd, http_get, http_get_raw, http_request, poll};

use crate::{run, setup};

#[derive(clap::Args)]
pub struct Opts {
    /// How long the probed agent runs its workload.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Where to write the order [default: moonfrp-agent/link-order.txt].
    #[arg(long)]
    out: Option<PathBuf>,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const GROUP: &str = "moonfrp_link_order";

/// The functions of an ELF file: each address's file offset and the symbol names there.
fn functions(bin: &Path) -> anyhow::Result<Vec<(u64, Vec<String>)>> {
    // nm and readelf.
    setup::debian_packages(&["binutils"])?;
    let out = tool("readelf", &["-lW"], bin)?;
    // The executable LOAD segment: file offset, virtual address, file size.
    let (offset, vaddr, size) = out
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|f| f.first() == Some(&"LOAD") && f.get(6) == Some(&"R") && f.get(7) == Some(&"E"))
        .and_then(|f| Some((hex(f[1])?, hex(f[2])?, hex(f[4])?)))
        .context("readelf: no executable LOAD segment")?;
    let mut by_addr: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in tool("nm", &["-S", "--defined-only"], bin)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, len, kind, name] = f[..] else {
            continue;
        };
        let (Some(addr), Some(len)) = (hex(addr), hex(len)) else {
            continue;
        };
        if len > 0 && "tTwW".contains(kind) && (vaddr..vaddr + size).contains(&addr) {
            by_addr.entry(addr).or_default().push(name.to_owned());
        }
    }
    ensure!(
        !by_addr.is_empty(),
        "nm: no function symbols in {} (stripped?)",
        bin.display()
    );
    Ok(by_addr
        .into_iter()
        .map(|(addr, names)| (addr - vaddr + offset, names))
        .collect())
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn tool(name: &str, args: &[&str], bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(name)
        .args(args)
        .arg(bin)
        .output()
        .with_context(|| format!("cannot run {name} (binutils)"))?;
    ensure!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The probes of one run; removed when dropped.
struct Probes {
    count: usize,
}

impl Probes {
    fn register(bin: &Path, funcs: &[(u64, Vec<String>)]) -> anyhow::Result<Self> {
        ensure!(
            Path::new(TRACEFS).join("uprobe_events").exists(),
            "{TRACEFS}/uprobe_events is missing: this kernel has no uprobes (CONFIG_UPROBE_EVENTS) or tracefs is not mounted"
        );
        // Left over from an interrupted run.
        if Path::new(TRACEFS).join("events").join(GROUP).exists() {
            Self { count: usize::MAX }.remove();
        }
        let mut events = fs::OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))?;
        let probes = Self { count: funcs.len() };
        for (i, (offset, _)) in funcs.iter().enumerate() {
            // One write per probe: tracefs parses a write, not a stream.
            events
                .write_all(format!("p:{GROUP}/f{i} {}:{offset:#x}\n", bin.display()).as_bytes())
                .with_context(|| format!("registering the uprobe at {offset:#x}"))?;
        }
        fs::write(
            Path::new(TRACEFS).join("events").join(GROUP).join("enable"),
            "1",
        )
        .context("enabling the probes")?;
        Ok(probes)
    }

    /// Hits per probe index.
    fn hits(&self) -> anyhow::Result<Vec<(usize, u64)>> {
        let profile = fs::read_to_string(Path::new(TRACEFS).join("uprobe_profile"))?;
        Ok(profile
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().skip(1);
                let i = f.next()?.strip_prefix('f')?.parse().ok()?;
                let hits = f.next()?.parse().ok()?;
                (hits > 0 && i < self.count).then_some((i, hits))
            })
            .collect())
    }

    fn remove(&self) {
        let group = Path::new(TRACEFS).join("events").join(GROUP);
        let _ = fs::write(group.join("enable"), "0");
        let Ok(mut events) = fs::OpenOptions::new()
            .append(true)
            .open(Path::new(TRACEFS).join("uprobe_events"))
        else {
            return;
        };
        let names: Vec<String> = fs::read_dir(&group)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for name in names.iter().take(self.count) {
            let _ = events.write_all(format!("-:{GROUP}/{name}\n").as_bytes());
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What an agent does in production, on the probed binary.
fn workload(bin: &Path, dir: &Path, seconds: u64) -> anyhow::Result<()> {
    const TUNNELS: u16 = 1000;
    const DOWN: u16 = 20;
    let base = 23_000;
    let mut config = String::new();
    for i in 0..TUNNELS {
        let _ = writeln!(config, "[[tunnels]]\nname = \"t{i}\"\nport = {}", base + i);
    }
    let config_path = dir.join("tunnels.toml");
    fs::write(&config_path, config)?;
    let _up: Vec<std::net::TcpListener> = (DOWN..TUNNELS)
        .filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok())
        .collect();
    let agent = AgentCmd::new(&["--config", config_path.to_str().context("utf-8 path")?])
        .bin(bin)
        .interval("1s")
        .log_level("info")
        .spawn();
    // Every function traps while probed: the agent runs several times slower than usual.
    poll(
        "the probed agent's first snapshot",
        Duration::from_mins(5),
        || {
            http_get(agent.addr, "/api/v1/status", None)
                .ok()
                .filter(|(status, _, _)| *status == 200)
        },
    );
    let metric = "moonfrp_tunnel_receive_bytes_total";
    let paths = [
        "/api/v1/status".to_owned(),
        "/api/v1/summary".into(),
        "/api/v1/tunnels".into(),
        "/api/v1/tunnels/t30/peers".into(),
        format!("/api/v1/peers?port={}&proto=tcp", base + 31),
        "/api/v1/alerts".into(),
        "/api/v1/alerts/history".into(),
        "/api/v1/logs?limit=20".into(),
        format!("/api/v1/history?metric={metric}&tunnel=t30&since=1h&rate=true"),
        format!("/api/v1/history?metric={metric}&since=7d&step=1h&agg=max"),
        "/api/v1/history?metric=moonfrp_tunnel_up&since=1h&step=1m&format=csv".into(),
        "/".into(),
        "/ui/app.js".into(),
        "/ui/chart.js".into(),
        "/ui/style.css".into(),
        "/healthz".into(),
    ];
    let _ = http_request(
        agent.addr,
        "POST",
        &format!(
            "/api/v1/inspect?port={}&proto=tcp&ttl=20s",
            base + TUNNELS + 1
        ),
        None,
    );
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for headers in [
            &[][..],
            &["Accept-Encoding: gzip"],
            &[
                "Accept: application/openmetrics-text;version=1.0.0",
                "Accept-Encoding: gzip",
            ],
        ] {
            http_get_raw(agent.addr, "/metrics", headers).context("scraping the probed agent")?;
        }
        for path in &paths {
            let _ = http_get(agent.addr, path, None);
        }
        thread::sleep(Duration::from_secs(3));
    }
    // Its last history write runs trapped too: it can take minutes.
    let status = agent.stop_within(Duration::from_mins(10));
    ensure!(status.success(), "the probed agent exited with {status}");
    Ok(())
}

pub fn run(opts: &Opts) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("link-order needs root (uprobes and the agent's kernel programs)");
    }
    setup::toolchain()?;
    let built = run::build_release()?;
    let dir = tempfile::tempdir()?;
    // Probes belong to a file: a copy keeps them off the binary everyone else runs.
    let bin = dir.path().join("moonfrp-agent");
    fs::copy(&built, &bin)?;
    let funcs = functions(&bin)?;
    eprintln!("xtask: link-order: probing {} functions", funcs.len());
    let hits = {
        let probes = Probes::register(&bin, &funcs)?;
        workload(&bin, dir.path(), opts.seconds)?;
        probes.hits()?
    };
    let mut hit: Vec<(u64, &[String])> = hits
        .iter()
        .filter_map(|&(i, n)| Some((n, funcs.get(i)?.1.as_slice())))
        .collect();
    hit.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut text = String::new();
    for (_, names) in &hit {
        for name in *names {
            text.push_str(name);
            text.push('\n');
        }
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| run::root().join("moonfrp-agent/link-order.txt"));
    fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "xtask: link-order: {} of {} functions ran; wrote {} (rebuild the release agent to use it)",
        hit.len(),
        funcs.len(),
        out.display()
    );
    Ok(())
}

/// Whether `bin` was linked with the order: how many of the functions the order names it has,
/// and whether they open its code (every function below the last of them is named, give or take
/// the few that share a section with one). Fails when the order names functions and the binary
/// does not place most of them first: the build did not apply it, or it is stale (regenerate it
/// with `cargo xtask link-order`).
pub fn check(bin: &Path) -> anyhow::Result<String> {
    let path = run::root().join("moonfrp-agent/link-order.txt");
    let order = fs::read_to_string(&path).unwrap_or_default();
    let named: std::collections::HashSet<&str> = order.lines().collect();
    if named.is_empty() {
        return Ok("no link order".into());
    }
    let funcs = functions(bin)?;
    let is_named = |names: &[String]| names.iter().any(|n| named.contains(n.as_str()));
    let found = funcs.iter().filter(|(_, n)| is_named(n)).count();
    let last = funcs
        .iter()
        .rposition(|(_, n)| is_named(n))
        .map_or(0, |i| i + 1);
    let among = funcs[..last].iter().filter(|(_, n)| !is_named(n)).count();
    let summary = format!(
        "link order: the {} names in {} are {found} of the binary's {} functions, its first {last} ({among} unnamed among those)",
        named.len(),
        path.display(),
        funcs.len()
    );
    ensure!(
        found * 2 >= named.len() && among * 10 <= last,
        "{summary}: the release link did not place them first, or the order is stale; run `cargo xtask link-order`"
    );
    Ok(summary)
}
