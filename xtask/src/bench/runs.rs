//! The measurements themselves: the agent CPU matrix, the datapath A/B pairs, the scrape.
use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use moonfrp_tests::{Agent, AgentCmd, free_port, http_get};

use super::{
    AbResult, AgentCpu, FloorCpu, KernelCost, Kind, Opts, Scrape, ScrapeCpu, load, measure, median,
    report,
};

fn parse_interval(s: &str) -> anyhow::Result<Duration> {
    let secs = s
        .strip_suffix('s')
        .unwrap_or(s)
        .parse::<u64>()
        .with_context(|| format!("interval `{s}`: use e.g. 60s"))?;
    ensure!((1..=60).contains(&secs), "interval `{s}` must be 1s..=60s");
    Ok(Duration::from_secs(secs))
}

/// A config file with `n` tunnels on consecutive ports from `base`.
fn tunnels_config(dir: &std::path::Path, n: u32, base: u16) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(
            text,
            "[[tunnels]]\nname = \"t{i}\"\nport = {}",
            u32::from(base) + i
        );
    }
    let path = dir.join(format!("tunnels-{n}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The first of `n` consecutive ports from `want` if they lie outside the kernel's ephemeral
/// range, else the first such block after or before it. Every outgoing connection (the loads,
/// the scrapes) takes its local port from that range, so a fixed port inside it may be taken at
/// any moment and a listener there fails at random (`Address already in use`).
fn port_block(want: u16, n: u32) -> anyhow::Result<u16> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut it = text.split_whitespace().map(str::parse::<u32>);
    let (Some(Ok(low)), Some(Ok(high))) = (it.next(), it.next()) else {
        anyhow::bail!("{path}: expected two port numbers, found `{}`", text.trim());
    };
    let clear =
        |first: u32| first >= 1024 && first + n <= 65_536 && (first + n <= low || first > high);
    [u32::from(want), high + 1, low.saturating_sub(n)]
        .into_iter()
        .find(|&first| clear(first))
        .and_then(|first| u16::try_from(first).ok())
        .with_context(|| {
            format!("no {n} consecutive ports outside the ephemeral range {low}-{high} ({path})")
        })
}

/// Listeners on `n` ports from `base`, except `skip` (the load's own servers bind those): each
/// tunnel is up, as on a working frps, so the agent does the work of a healthy server (a
/// thousand tunnels down would be a thousand alerts firing).
fn listeners(base: u16, n: u32, skip: &[u16]) -> anyhow::Result<Vec<std::net::TcpListener>> {
    raise_nofile(u64::from(n) + 1024)?;
    (0..n)
        .map(|i| base + i as u16)
        .filter(|p| !skip.contains(p))
        .map(|port| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).with_context(|| {
                format!(
                    "cannot listen on 127.0.0.1:{port} for tunnel t{}",
                    port - base
                )
            })
        })
        .collect()
}

/// Raises this process's open-file limit to at least `want` (within the hard limit).
fn raise_nofile(want: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0,
            "getrlimit failed"
        );
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            ensure!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) == 0,
                "cannot raise the open-file limit to {want}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Background load for the CPU table, at fixed rates, until `stop`.
fn background_load(
    base: u16,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    let rates = [
        (Kind::TcpBulk, 25e6),
        (Kind::UdpSmall, 2_000.0),
        (Kind::TcpChurn, 100.0),
    ];
    rates
        .into_iter()
        .enumerate()
        .map(|(i, (kind, rate))| {
            let stop = stop.clone();
            let port = base + i as u16;
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ports = load::Ports {
                        server: port,
                        client: None,
                    };
                    let one_second = Duration::from_secs(1);
                    if let Err(e) = load::run(
                        load::Generator::Builtin,
                        kind,
                        ports,
                        one_second,
                        Some(rate),
                    ) {
                        eprintln!("bench: background {}: {e:#}", kind.name());
                        thread::sleep(Duration::from_millis(200));
                    }
                }
            })
        })
        .collect()
}

/// A floor process (see [`super::floor`]), killed when dropped.
struct Floor {
    child: std::process::Child,
    interval: Duration,
}

impl Floor {
    fn start(interval: Duration) -> anyhow::Result<Self> {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "bench-floor",
                "--interval-ms",
                &interval.as_millis().to_string(),
            ])
            .spawn()
            .context("cannot start the floor process")?;
        Ok(Self { child, interval })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn agent_cpu(
    opts: &Opts,
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<(Vec<AgentCpu>, Vec<FloorCpu>)> {
    let intervals: Vec<Duration> = opts
        .interval
        .iter()
        .map(|s| parse_interval(s))
        .collect::<Result<_, _>>()?;
    let tunnels_max = opts.tunnels.iter().copied().max().unwrap_or(0);
    let base = port_block(20_000, tunnels_max.max(3))?;
    let _up = listeners(base, tunnels_max, &[base, base + 2])?;
    // Every agent (one per tunnel count and interval) runs at once: each one's CPU is its own.
    let mut agents = Vec::new();
    for &n in &opts.tunnels {
        let config = tunnels_config(dir, n, base)?;
        for &iv in &intervals {
            let cmd = AgentCmd::new(&["--config", config.to_str().context("utf-8 path")?])
                .bin(bin)
                .interval(&format!("{}s", iv.as_secs()))
                .log_level("warn");
            agents.push((n, iv, cmd.start()));
        }
    }
    let floors: Vec<Floor> = intervals
        .iter()
        .map(|&iv| Floor::start(iv))
        .collect::<anyhow::Result<_>>()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = background_load(base, &stop);
    let longest = intervals
        .iter()
        .max()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    let window = if opts.quick {
        Duration::from_secs(8)
    } else {
        longest * 2 + Duration::from_secs(5)
    };
    eprintln!(
        "bench: agent CPU: {} agents, window {window:?} under background load",
        agents.len()
    );

    // Scrape before reading the CPU (and after reading it at the end): the scrapes that count
    // snapshots must not land inside the window.
    let before: Vec<(measure::Cpu, u64)> = agents
        .iter()
        .map(|(_, _, a)| {
            let s = snapshots(a);
            Ok((measure::cpu(a.pid())?, s))
        })
        .collect::<anyhow::Result<_>>()?;
    let floor_before: Vec<measure::Cpu> = floors
        .iter()
        .map(|f| measure::cpu(f.child.id()))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    thread::sleep(window);
    let wall = started.elapsed().as_secs_f64();
    let floor = floors
        .iter()
        .zip(&floor_before)
        .map(|(f, b)| {
            let after = measure::cpu(f.child.id())?;
            Ok(FloorCpu {
                interval_s: f.interval.as_secs_f64(),
                cpu_pct_ns: after.ns.saturating_sub(b.ns) as f64 / 1e9 / wall * 100.0,
                passes_in_window: wall / f.interval.as_secs_f64(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(floors);
    let mut rows = Vec::new();
    for ((n, iv, a), (b, s0)) in agents.iter().zip(&before) {
        let after = measure::cpu(a.pid())?;
        // Memory as Prometheus leaves the agent (it keeps the gzip rendering of the snapshot),
        // then with the plain text rendering kept too (what a scrape without gzip adds).
        get(a.addr, PROMETHEUS_HEADERS)?;
        let rss_bytes = measure::rss(a.pid())?;
        let rss_file_bytes = measure::status_bytes(a.pid(), "RssFile:")?;
        // Reads the agent's counter with a scrape without gzip.
        let collections = snapshots(a).saturating_sub(*s0);
        rows.push(AgentCpu {
            tunnels: *n,
            interval_s: iv.as_secs_f64(),
            cpu_pct_stat: after.ticks.saturating_sub(b.ticks) as f64
                / measure::ticks_per_second()
                / wall
                * 100.0,
            cpu_pct_ns: after.ns.saturating_sub(b.ns) as f64 / 1e9 / wall * 100.0,
            rss_bytes,
            rss_file_bytes,
            rss_plain_bytes: measure::rss(a.pid())?,
            window_s: wall,
            collections_in_window: collections,
            method: "measured",
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in load {
        let _ = h.join();
    }
    drop(agents);
    if opts.quick {
        report::estimate_long_intervals(&mut rows);
    }
    Ok((rows, floor))
}

fn snapshots(a: &Agent) -> u64 {
    a.metrics()
        .get("moonfrp_agent_snapshots_total", &[])
        .unwrap_or(0.0) as u64
}

/// What is attached to the hooks during one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// No program.
    Nothing,
    /// The empty programs (see [`moonfrp_tests::bpf`]): the floor.
    Empty,
    /// The agent, watching both ends of the load (the server's port, and the client's where it
    /// is fixed).
    Watched,
    /// As `Watched`, with peer counting off (`[kernel] peers = 0`): what the peer table costs.
    WatchedNoPeers,
    /// The agent, watching a port the load does not use: every packet is unwatched.
    Unwatched,
}

impl Side {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nothing => "none",
            Self::Empty => "empty",
            Self::Watched => "watched",
            Self::WatchedNoPeers => "no peers",
            Self::Unwatched => "unwatched",
        }
    }
}

/// What holds the programs of a run.
enum Holder {
    None,
    Empty(moonfrp_tests::bpf::EmptyPrograms),
    Agent(Agent),
}

impl Holder {
    fn stats(&self) -> anyhow::Result<std::collections::BTreeMap<String, measure::ProgStats>> {
        match self {
            Self::None => Ok(std::collections::BTreeMap::new()),
            Self::Empty(e) => Ok(e.stats()),
            Self::Agent(a) => measure::prog_stats(a.pid()),
        }
    }
}

/// Runs `kind` once with `side` attached; with `costs`, the programs' costs over the run (from
/// BPF statistics, which the caller keeps on) are added to it.
fn one_run(
    generator: load::Generator,
    kind: Kind,
    side: Side,
    dur: Duration,
    bin: &std::path::Path,
    costs: Option<&mut Vec<KernelCost>>,
) -> anyhow::Result<f64> {
    let server = free_port();
    let client = (kind != Kind::TcpChurn)
        .then(|| std::iter::repeat_with(free_port).find(|&p| p != server))
        .flatten();
    let ports = load::Ports { server, client };
    // The agent's own sampled statistics stay off: the datapath pairs run without any, and the
    // cost runs keep them on for the whole run themselves.
    let kernel = tempfile::NamedTempFile::new()?;
    let peers = if side == Side::WatchedNoPeers {
        "peers = 0\n"
    } else {
        ""
    };
    std::fs::write(
        kernel.path(),
        format!("[kernel]\nbpf_stats = \"off\"\n{peers}"),
    )?;
    let kernel_path = kernel.path().to_str().context("utf-8 temp path")?;
    let agent = |tunnels: &[String]| {
        let mut args = vec!["--config", kernel_path];
        for t in tunnels {
            args.extend(["-t", t.as_str()]);
        }
        AgentCmd::new(&args)
            .bin(bin)
            .interval("60s")
            .log_level("warn")
            .start()
    };
    let holder = match side {
        Side::Nothing => Holder::None,
        Side::Empty => Holder::Empty(moonfrp_tests::bpf::EmptyPrograms::attach()?),
        Side::Watched | Side::WatchedNoPeers => {
            let mut t = vec![kind.tunnel_flag("load", server)];
            t.extend(client.map(|c| kind.tunnel_flag("client", c)));
            Holder::Agent(agent(&t))
        }
        Side::Unwatched => {
            let other = std::iter::repeat_with(free_port)
                .find(|&p| p != server && Some(p) != client)
                .unwrap_or(1);
            Holder::Agent(agent(&[kind.tunnel_flag("elsewhere", other)]))
        }
    };
    let before = holder.stats()?;
    let started = Instant::now();
    let value = load::run(generator, kind, ports, dur, None)?;
    let wall = started.elapsed().as_secs_f64();
    let Some(costs) = costs else {
        return Ok(value);
    };
    for (program, after) in holder.stats()? {
        let b = before.get(&program).copied().unwrap_or_default();
        costs.push(KernelCost {
            generator,
            load: kind,
            side,
            program,
            runs: after.run_count.saturating_sub(b.run_count),
            run_ns: after.run_time.saturating_sub(b.run_time).as_nanos() as f64,
            wall_s: wall,
            runs_per_s: 0.0,
            ns_per_run: 0.0,
            cpu_pct: 0.0,
        });
    }
    Ok(value)
}

/// Interleaved pairs of A (nothing attached) and B (`b`); A first in even pairs, B first in odd
/// ones, so drift cancels out. `b` = [`Side::Nothing`] is the A/A control. BPF statistics are
/// off (as outside the agent's sampling windows).
pub(super) fn ab(
    generator: load::Generator,
    kind: Kind,
    b: Side,
    pairs: usize,
    dur: Duration,
    bin: &std::path::Path,
) -> anyhow::Result<AbResult> {
    let mut values = Vec::new();
    for i in 0..pairs {
        let run = |side| one_run(generator, kind, side, dur, bin, None);
        let (a, bv) = if i % 2 == 0 {
            let a = run(Side::Nothing)?;
            (a, run(b)?)
        } else {
            let bv = run(b)?;
            (run(Side::Nothing)?, bv)
        };
        values.push((a, bv));
    }
    let mut ratios: Vec<f64> = values.iter().map(|(a, b)| b / a).collect();
    let (mut av, mut bv): (Vec<f64>, Vec<f64>) = values.iter().copied().unzip();
    Ok(AbResult {
        generator,
        load: kind,
        unit: kind.unit(),
        kind: match b {
            Side::Nothing => "A/A",
            Side::Empty => "A/E",
            Side::Watched | Side::WatchedNoPeers | Side::Unwatched => "A/B",
        },
        a_median: median(&mut av),
        b_median: median(&mut bv),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ratio_median: median(&mut ratios),
        pairs: values,
    })
}

/// `runs` runs with `side` attached and BPF statistics on, for the kernel costs only (no pairs).
pub(super) fn costs(
    generator: load::Generator,
    kind: Kind,
    side: Side,
    runs: usize,
    dur: Duration,
    bin: &std::path::Path,
    costs: &mut Vec<KernelCost>,
) -> anyhow::Result<()> {
    // The kernel turns them off again when this fd closes.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot enable BPF run-time statistics")?;
    for _ in 0..runs {
        one_run(generator, kind, side, dur, bin, Some(&mut *costs))?;
    }
    Ok(())
}

pub(super) fn scrape(
    bin: &std::path::Path,
    dir: &std::path::Path,
    n: u32,
    quick: bool,
) -> anyhow::Result<Scrape> {
    let base = port_block(22_000, n)?;
    let config = tunnels_config(dir, n, base)?;
    let up = listeners(base, n, &[])?;
    // 2 s: new snapshots often enough to measure the first scrape of each a few times, far
    // enough apart for a burst of scrapes to see one snapshot only.
    let agent = AgentCmd::new(&["--config", config.to_str().context("utf-8 path")?])
        .bin(bin)
        .interval("2s")
        .log_level("warn")
        .start();
    let rounds = if quick { 10 } else { 50 };
    let mut snaps = Vec::new();
    for _ in 0..if quick { 2 } else { 5 } {
        let m = agent.wait_snapshots(1);
        snaps.push(
            m.get("moonfrp_agent_snapshot_duration_seconds", &[])
                .unwrap_or(f64::NAN)
                * 1e3,
        );
    }
    let time = |accept: Option<&str>| -> anyhow::Result<(f64, usize)> {
        let mut ms = Vec::new();
        let mut size = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let (status, _, body) = http_get(agent.addr, "/metrics", accept)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(status == 200, "scrape failed with {status}");
            size = body.len();
        }
        Ok((median(&mut ms), size))
    };
    let (text_ms, text_bytes) = time(None)?;
    let (om_ms, om_bytes) = time(Some("application/openmetrics-text"))?;
    let (samples, burst) = if quick { (3, 10) } else { (10, 40) };
    let prometheus = scrape_cpu(&agent, PROMETHEUS_HEADERS, samples, burst)?;
    let plain = scrape_cpu(&agent, &[], samples, burst)?;
    // Then with a connection to every tunnel between two snapshots: no tunnel's series are
    // the previous snapshot's, so none of the previous rendering can be taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let touch = touch_every_tunnel(up, std::sync::Arc::clone(&stop))?;
    let prometheus_busy = scrape_cpu(&agent, PROMETHEUS_HEADERS, samples, burst);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let touched = touch.join().expect("the touching thread does not panic")?;
    let prometheus_busy = prometheus_busy?;
    ensure!(touched > 0, "no tunnel was touched");
    drop(agent);
    let (node_exporter_cpu_ms, node_exporter_bytes) =
        node_exporter_cpu(if quick { 10 } else { 40 })?;
    Ok(Scrape {
        tunnels: n,
        text_ms_median: text_ms,
        text_bytes,
        openmetrics_ms_median: om_ms,
        openmetrics_bytes: om_bytes,
        snapshot_ms_median: median(&mut snaps),
        prometheus,
        prometheus_busy,
        plain,
        node_exporter_cpu_ms,
        node_exporter_bytes,
    })
}

/// Opens, writes to and closes a connection to every listener in turn, accepting on each, a
/// round every 0.5 s until `stop`: every tunnel's counters move between two snapshots (2 s).
/// Returns the rounds made.
fn touch_every_tunnel(
    listeners: Vec<std::net::TcpListener>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
    for l in &listeners {
        l.set_nonblocking(true)?;
    }
    Ok(thread::spawn(move || {
        let mut rounds = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for l in &listeners {
                let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
                std::io::Write::write_all(&mut c, b"moonfrp bench\n")?;
                drop(c);
                while l.accept().is_ok() {}
            }
            rounds += 1;
            thread::sleep(Duration::from_millis(500));
        }
        Ok(rounds)
    }))
}

/// What Prometheus sends (its default scrape protocols and gzip).
const PROMETHEUS_HEADERS: &[&str] = &[
    "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "Accept-Encoding: gzip",
];

/// Time of the agent's latest snapshot, from `/api/v1/status` (which renders no exposition).
fn snapshot_time(agent: &Agent) -> anyhow::Result<f64> {
    let (status, _, body) = http_get(agent.addr, "/api/v1/status", None)?;
    ensure!(status == 200, "/api/v1/status answered {status}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["data"]["time"]
        .as_f64()
        .context("no data.time in /api/v1/status")
}

fn get(addr: std::net::SocketAddr, headers: &[&str]) -> anyhow::Result<usize> {
    let (head, body) = moonfrp_tests::http_get_raw(addr, "/metrics", headers)?;
    ensure!(
        head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200"),
        "scrape failed: {head}"
    );
    Ok(body.len())
}

/// CPU of the agent's serving threads per scrape with `headers`: the first scrape after each of
/// `samples` new snapshots (it renders), and a burst of `burst` scrapes after it (copies).
/// Scrapes are served on the runtime's threads (named `moonfrp`); collection, alerts and history
/// run on threads of their own and are not counted.
fn scrape_cpu(
    agent: &Agent,
    headers: &[&str],
    samples: usize,
    burst: usize,
) -> anyhow::Result<ScrapeCpu> {
    let pid = agent.pid();
    let workers = || measure::threads_ns(pid, "moonfrp");
    let (mut first, mut cached, mut bytes) = (Vec::new(), Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(60 + 6 * samples as u64);
    // Two snapshots' scrapes before measuring: a gzip rendering is made from the previous one
    // where it can, and the first two (one stream, then the runs the next ones take) are not
    // what a scraper sees after them.
    for _ in 0..2 {
        let seen = snapshot_time(agent)?;
        while snapshot_time(agent)? == seen {
            thread::sleep(Duration::from_millis(20));
        }
        get(agent.addr, headers)?;
    }
    while first.len() < samples {
        ensure!(
            Instant::now() < deadline,
            "too few quiet snapshots to measure the scrape CPU"
        );
        let seen = snapshot_time(agent)?;
        while snapshot_time(agent)? == seen {
            thread::sleep(Duration::from_millis(20));
        }
        let now = snapshot_time(agent)?;
        let t0 = workers()?;
        bytes = get(agent.addr, headers)?;
        let t1 = workers()?;
        for _ in 0..burst {
            get(agent.addr, headers)?;
        }
        let t2 = workers()?;
        // A snapshot inside the burst would make one of its scrapes a first one: drop the round.
        if snapshot_time(agent)? == now {
            first.push((t1 - t0) as f64 / 1e6);
            cached.push((t2 - t1) as f64 / 1e6 / burst as f64);
        }
    }
    Ok(ScrapeCpu {
        first_ms: median(&mut first),
        cached_ms: median(&mut cached),
        bytes,
    })
}

/// node_exporter with its default collectors on this machine: CPU per scrape (gzip, as
/// Prometheus asks), the whole process, less its idle rate.
fn node_exporter_cpu(scrapes: usize) -> anyhow::Result<(f64, usize)> {
    crate::setup::debian_packages(&["prometheus-node-exporter"])?;
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, free_port()));
    let ne = moonfrp_tests::Daemon::start(
        "prometheus-node-exporter",
        &[&format!("--web.listen-address={addr}")],
    );
    let headers = PROMETHEUS_HEADERS;
    let started = Instant::now();
    let bytes = loop {
        match get(addr, headers) {
            Ok(b) => break b,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                anyhow::bail!("node_exporter did not answer: {e:#}\n{}", ne.log())
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    };
    for _ in 0..3 {
        get(addr, headers)?;
    }
    let cpu_ns = || measure::cpu(ne.pid()).map(|c| c.ns);
    let (c0, t0) = (cpu_ns()?, Instant::now());
    thread::sleep(Duration::from_secs(1));
    let idle_per_s = (cpu_ns()? - c0) as f64 / t0.elapsed().as_secs_f64();
    let (c1, t1) = (cpu_ns()?, Instant::now());
    for _ in 0..scrapes {
        get(addr, headers)?;
    }
    let used = (cpu_ns()? - c1) as f64 - idle_per_s * t1.elapsed().as_secs_f64();
    Ok((used / 1e6 / scrapes as f64, bytes))
}
