//! The history store's benchmark (run by `cargo xtask bench-history`): writes synthetic
//! snapshots of busy tunnels into a fresh database through the writer's own path (build the
//! series, write, roll up, prune) with a fake clock, then times queries. Prints one JSON report.
//! Built as an example of the library, so that none of it ships in the agent.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use clap::Parser;
use moonfrp_agent::{
    collect::{CollectOptions, Collectors},
    history::{
        Settings, Store,
        query::{self, Request},
        store::open_read_only,
    },
    synthetic::{self, Synthetic},
    time::unix_ms,
    watch::WatchTable,
};
use serde::Serialize;

#[derive(Clone, Debug, Parser)]
struct BenchArgs {
    /// Tunnels (one in ten UDP), named tunnel-<i> on ports base_port + i.
    #[arg(long, default_value_t = 100)]
    pub tunnels: u16,
    #[arg(long, default_value_t = 30_000)]
    pub base_port: u16,
    /// Intervals to write (1441 at 60 s = a day and one interval).
    #[arg(long, default_value_t = 1441)]
    pub intervals: u32,
    /// Simulated interval.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Where to create the database (must not hold one yet).
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tunnels: u16,
    pub intervals: u32,
    pub interval_seconds: f64,
    pub series: usize,
    /// Encode + parse + write + rollups + prune, per interval.
    pub write_ms: Percentiles,
    pub db_bytes: u64,
    /// Bytes for a day of history at this interval (the file at the end, or extrapolated when
    /// fewer than a day of intervals were written).
    pub bytes_per_day: u64,
    pub bytes_per_day_extrapolated: bool,
    /// One series over the last 24 h (raw), and its rate.
    pub query_24h_ms: f64,
    pub query_24h_rate_ms: f64,
    pub query_24h_points: usize,
    pub summary_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i]
    };
    Percentiles {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Median time of `f` over `n` runs, in ms.
fn timed(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[n / 2]
}

fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.intervals >= 2, "--intervals must be at least 2");
    let settings = Settings::default();
    let step = args.interval;
    let end = SystemTime::now();
    let start = end - step * (args.intervals - 1);
    let (mut store, _) = Store::open(&args.data_dir, settings.clone(), unix_ms(start))?;
    let mut watch = WatchTable::new(u32::from(args.tunnels).max(1));
    watch.apply(
        &mut Synthetic::default(),
        &synthetic::specs(args.tunnels, args.base_port),
        |_| HashMap::new(),
    )?;
    let mut host = Collectors::new(&CollectOptions::default());
    let mut times = Vec::with_capacity(args.intervals as usize);
    let mut series = 0;
    for i in 0..args.intervals {
        let taken_at = start + step * i;
        let (system, _) = host.collect(&mut BTreeMap::new());
        let source = Synthetic {
            round: u64::from(i),
        };
        let snap = synthetic::snapshot(&source, &watch, system, taken_at, u64::from(i) + 1);
        let t = Instant::now();
        let built = moonfrp_agent::metrics::series(
            Some(&snap),
            &moonfrp_agent::metrics::Extras::default(),
            &moonfrp_agent::metrics::Settings::default(),
        );
        store.write(unix_ms(taken_at), &built)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        series = built.points().count();
    }
    let db = store.path().to_owned();
    drop(store); // checkpoints the WAL into the file
    let db_bytes = std::fs::metadata(&db)?.len();
    let day = Duration::from_hours(24);
    let covered = step * (args.intervals - 1);
    let extrapolated = covered < day;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bytes_per_day = if extrapolated {
        (db_bytes as f64 * day.as_secs_f64() / covered.as_secs_f64()) as u64
    } else {
        db_bytes
    };

    let conn = open_read_only(&db)?;
    let now = unix_ms(end);
    let one = |rate: bool| Request {
        matchers: vec![("tunnel".into(), "tunnel-1".into())],
        ..Request::window(
            "moonfrp_tunnel_receive_bytes_total",
            now - 86_400_000,
            now,
            rate,
        )
    };
    let points = query::run(&conn, &settings, &one(false), now)?
        .series
        .first()
        .map_or(0, |s| s.samples.len());
    let query_24h_ms = timed(21, || {
        query::run(&conn, &settings, &one(false), now).expect("query");
    });
    let query_24h_rate_ms = timed(21, || {
        query::run(&conn, &settings, &one(true), now).expect("query");
    });
    let api = moonfrp_agent::api::HistoryApi::new(db.clone(), settings.clone());
    let summary_ms = timed(21, || {
        let a = moonfrp_agent::api::history::summary(Some(&api));
        assert_eq!(a.status, 200, "{}", a.body);
    });
    Ok(Report {
        tunnels: args.tunnels,
        intervals: args.intervals,
        interval_seconds: step.as_secs_f64(),
        series,
        write_ms: percentiles(times),
        db_bytes,
        bytes_per_day,
        bytes_per_day_extrapolated: extrapolated,
        query_24h_ms,
        query_24h_rate_ms,
        query_24h_points: points,
        summary_ms,
    })
}

fn main() -> std::process::ExitCode {
    match run(&BenchArgs::parse()) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("the report serializes")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_history: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
