//! The agent's life: check privileges, mount what is missing, load and attach, then every
//! interval read the kernel and /proc into a `Snapshot`; reload the config on SIGHUP or when the
//! file changes; detach everything on SIGINT/SIGTERM.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    alerts::Alerts,
    api::HistoryApi,
    cli::ConfigArgs,
    config::Config,
    cycle::Cycle,
    ebpf,
    history::writer::{self, Writer},
    metrics, privileges,
    server::{self, AppState},
    snapshot::Latest,
    sys,
};

/// Every interval encodes the snapshot (megabytes at 1,000 tunnels) and reads it back on other
/// threads. glibc's defaults keep such freed blocks in per-thread arenas and raise the mmap
/// threshold after the first one is freed, so RSS settles far above what is live (55 MiB at
/// 1,000 tunnels, 37 MiB with these settings; README, Performance).
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config, args: ConfigArgs) -> anyhow::Result<()> {
    tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .thread_name("moonfrp")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(config, args))
}

/// Raises RLIMIT_MEMLOCK for kernels before 5.11 (which charge BPF memory to it). Newer kernels
/// use memory cgroups instead; some sandboxes refuse the call, which is harmless there.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        info!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK (only needed on kernels before 5.11)");
    }
}

/// Identity of the config file's content, to notice edits between intervals.
fn file_stamp(path: Option<&Path>) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

async fn run_async(mut config: Config, args: ConfigArgs) -> anyhow::Result<()> {
    privileges::check()?;
    raise_memlock();

    let mounts = sys::current_mounts()?;
    let tracefs = sys::ensure_tracefs(&mounts).unwrap_or_else(|e| {
        warn!(error = %e, "tracepoint probes will not attach");
        PathBuf::from(sys::TRACEFS_PATH)
    });
    let cgroup = sys::cgroup2_root(&mounts)?;

    let textfile = config
        .textfile
        .as_deref()
        .map(crate::textfile::Writer::new)
        .transpose()?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!("cannot listen on {}; choose another address with --listen or `listen` in the config file", config.listen)
    })?;

    let kernel = tokio::task::block_in_place(|| ebpf::load(&config.kernel, &tracefs, &cgroup))?;
    // After loading: the kernel BTF parsed for it is freed by now, so the two peaks do not add.
    let (history, history_stats) = start_history(&config);
    let probes_ok = kernel.probes.iter().any(|p| p.attached);
    if !probes_ok {
        error!("no kernel probe attached: tunnel counters will stay at 0 (reasons above)");
    }
    let collector_peers = kernel.maps.peers.clone();
    let mut collector = Cycle::new(kernel, &config);
    collector
        .apply_tunnels()
        .context("cannot set up the watch table")?;
    let collector = Arc::new(Mutex::new(collector));

    let latest = Arc::new(Latest::default());
    let peers = (collector_peers, config.kernel.peers);
    let (alerts, state) = serve_state(
        &config,
        latest.clone(),
        history_stats,
        probes_ok,
        peers,
        collector.clone(),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, state.clone(), stop_rx));
    info!(listen = %config.listen, interval = ?config.interval, tunnels = config.tunnels.len(), "serving /metrics");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stamp = file_stamp(args.config.as_deref());
    let mut frp_events = config
        .frp
        .enabled
        .then(|| watch_frp_configs(&config.frp.options.configs))
        .flatten();

    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = file_stamp(args.config.as_deref());
                if now != stamp {
                    stamp = now;
                    reload(&args, &mut config, &collector, &mut ticker);
                }
                let c = collector.clone();
                let rt = tokio::runtime::Handle::current();
                let snap = tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).collect(&rt)).await?;
                let snap = Arc::new(snap);
                latest.publish_arc(snap.clone());
                consume(snap, history.as_ref(), alerts.as_ref()).await?;
                if let Some(w) = &textfile {
                    let text = metrics::openmetrics_to_text(&metrics::encode_openmetrics(&state.registry));
                    let result = tokio::task::block_in_place(|| w.write(&text));
                    collector.lock().unwrap_or_else(std::sync::PoisonError::into_inner).textfile_result(result);
                }
            }
            Some(()) = next_frp_event(&mut frp_events) => {
                // Let the editor finish its write-and-rename, then take every change at once.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                drain_frp_events(&mut frp_events);
                let c = collector.clone();
                let rt = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).refresh_tunnels(&rt)).await?;
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                stamp = file_stamp(args.config.as_deref());
                reload(&args, &mut config, &collector, &mut ticker);
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    // Lets the writer finish the snapshot it has.
    tokio::task::block_in_place(|| drop(history));
    // Dropping the collector drops the programs and their links: nothing stays attached.
    drop(collector);
    info!("kernel programs detached; bye");
    Ok(())
}

/// The alert engine (when on) and what the HTTP handlers read.
fn serve_state(
    config: &Config,
    latest: Arc<Latest>,
    history_stats: Option<Arc<writer::Stats>>,
    probes_ok: bool,
    peers: (Arc<ebpf::maps::PeerTable>, u32),
    collector: Arc<Mutex<Cycle>>,
) -> (Option<Arc<Mutex<Alerts>>>, Arc<AppState>) {
    let alerts = config.alerts.enabled.then(|| {
        info!(
            rules = config.alerts.rules.len(),
            channels = config.alerts.channels.len(),
            "evaluating alert rules"
        );
        Arc::new(Mutex::new(Alerts::start(
            &config.alerts,
            &config.listen.to_string(),
        )))
    });
    let alerts_shared = alerts.as_ref().map(|a| {
        a.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .shared()
    });
    let mut app = AppState::new(
        metrics::registry_with(
            latest.clone(),
            metrics::Extras {
                history: history_stats,
                alerts: alerts_shared.clone(),
            },
        ),
        latest,
        probes_ok,
        config.history.enabled.then(|| HistoryApi {
            db: config.history.db_path(),
            settings: config.history.settings.clone(),
        }),
    );
    app.alerts = alerts_shared;
    app.peers = Some(peers);
    app.collector = Some(collector);
    (alerts, Arc::new(app))
}

/// Hands a new snapshot to history and the alert rules, which read its series from its
/// exposition (encoded once, off the async workers).
async fn consume(
    snap: Arc<crate::snapshot::Snapshot>,
    history: Option<&Writer>,
    alerts: Option<&Arc<Mutex<Alerts>>>,
) -> anyhow::Result<()> {
    if history.is_none() && alerts.is_none() {
        return Ok(());
    }
    let ts = crate::history::unix_ms(snap.taken_at);
    let al = alerts.cloned();
    let (text, notes) = tokio::task::spawn_blocking(move || {
        let text = Arc::new(metrics::encode_snapshot(snap));
        let notes = al
            .map(|a| {
                a.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .evaluate(ts, &text)
            })
            .unwrap_or_default();
        (text, notes)
    })
    .await?;
    if let Some(h) = history {
        h.submit(ts, text);
        if !notes.is_empty() {
            h.record_alerts(ts, notes);
        }
    }
    Ok(())
}

/// Opens the history database and starts its writer. A database that cannot be opened costs
/// history only: the agent runs on and says so in the log and in `moonfrp_history_up`.
fn start_history(config: &Config) -> (Option<Writer>, Option<Arc<writer::Stats>>) {
    if !config.history.enabled {
        info!("history is disabled in the configuration");
        return (None, None);
    }
    match tokio::task::block_in_place(|| {
        Writer::start(&config.history, crate::history::unix_ms(SystemTime::now()))
    }) {
        Ok(w) => {
            let stats = w.stats();
            (Some(w), Some(stats))
        }
        Err(e) => {
            error!("history is off for this run: {e}");
            (None, Some(Arc::new(writer::Stats::default())))
        }
    }
}

type FrpEvents = inotify::EventStream<[u8; 4096]>;

/// Watches the directories of the frp config files, so that an edit is taken at once instead of
/// at the next interval. Without inotify (or the directories) the interval's check remains.
fn watch_frp_configs(patterns: &[String]) -> Option<FrpEvents> {
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()
        .inspect_err(
            |e| warn!(error = %e, "no inotify: frp config edits are seen at the next interval"),
        )
        .ok()?;
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE;
    let mut watching = 0;
    for dir in crate::frp::discovery::watch_dirs(patterns) {
        match inotify.watches().add(&dir, mask) {
            Ok(_) => watching += 1,
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "not watching for frp config changes");
            }
        }
    }
    if watching == 0 {
        return None;
    }
    inotify
        .into_event_stream([0u8; 4096])
        .inspect_err(|e| warn!(error = %e, "no inotify stream"))
        .ok()
}

async fn next_frp_event(events: &mut Option<FrpEvents>) -> Option<()> {
    use futures_util::StreamExt as _;
    let Some(stream) = events else {
        return std::future::pending().await;
    };
    if let Some(Ok(_)) = stream.next().await {
        return Some(());
    }
    // The stream broke: fall back to the interval's check.
    *events = None;
    None
}

/// Discards events already queued (one refresh covers them).
fn drain_frp_events(events: &mut Option<FrpEvents>) {
    use futures_util::FutureExt as _;
    while let Some(Some(())) = next_frp_event(events).now_or_never() {}
}

fn reload(
    args: &ConfigArgs,
    config: &mut Config,
    collector: &Mutex<Cycle>,
    ticker: &mut tokio::time::Interval,
) {
    let mut c = collector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let new = match args.load() {
        Ok(new) => new,
        Err(e) => {
            error!("configuration not reloaded, keeping the previous one: {e}");
            c.config_ok = false;
            *c.errors.entry("config").or_default() += 1;
            return;
        }
    };
    if new.listen != config.listen
        || new.kernel != config.kernel
        || new.log_level != config.log_level
        || new.textfile != config.textfile
        || new.history != config.history
        || new.alerts != config.alerts
    {
        warn!(
            "listen address, textfile, history, alerts, kernel settings and log level only change on restart"
        );
    }
    if let Err(e) = c.reconfigure(&new) {
        error!("configuration not fully applied: {e}");
        c.config_ok = false;
        *c.errors.entry("config").or_default() += 1;
        return;
    }
    c.config_ok = true;
    if new.interval != config.interval {
        info!(interval = ?new.interval, "collection interval changed");
        *ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + new.interval, new.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    *config = new;
}
