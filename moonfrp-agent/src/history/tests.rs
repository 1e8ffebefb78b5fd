//! The store against a real SQLite file in a temp dir, with synthetic snapshots and a fake clock.
use std::{collections::BTreeMap, os::unix::fs::PermissionsExt as _, time::Duration};

use rusqlite::params;

use super::{
    Settings, Store,
    query::{self, Agg, Request},
    store::open_read_only,
};
use crate::series::{Builder, Series, Unit};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// 2026-09-22T00:30:00Z: not aligned to an hour, so the first bucket is partial.
const T0: i64 = 1_790_037_000_000;

/// The defaults: 24 h raw, 1 h buckets kept 7 d, 1 d buckets kept 90 d.
fn settings() -> Settings {
    Settings::default()
}

/// One synthetic interval: two counters (one reset at `reset_at`) and a gauge.
struct Gen {
    bytes_a: u64,
    bytes_b: u64,
}

impl Gen {
    fn series(&mut self, i: i64, reset: bool) -> Series {
        if reset {
            self.bytes_a = 0;
        }
        self.bytes_a += 1000 + u64::try_from(i % 7).unwrap() * 250;
        self.bytes_b += u64::try_from(i % 3).unwrap() * 10;
        let load = f64::from(u32::try_from(i % 11).unwrap()) / 4.0;
        let mut b = Builder::default();
        b.counters(
            "t",
            "Bytes.",
            Some(Unit::Bytes),
            [
                ([("tunnel", "a"), ("port", "6000")], self.bytes_a),
                ([("tunnel", "b"), ("port", "6001")], self.bytes_b),
            ],
        );
        b.gauge("t_load", "Load.", None, load);
        b.build()
    }
}

/// What the test wrote: per series (`name{a="x",…}`), (ts, value, run start).
type Written = BTreeMap<String, Vec<(i64, f64, i64)>>;

fn record(written: &mut Written, series: &Series, ts: i64, run_start: i64) {
    for (_, p) in series.points() {
        let labels: Vec<String> = p
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let key = if labels.is_empty() {
            p.name.to_owned()
        } else {
            format!("{}{{{}}}", p.name, labels.join(","))
        };
        written
            .entry(key)
            .or_default()
            .push((ts, p.value, run_start));
    }
}

/// The bucket statistics computed straight from the written values, independently of the
/// store's code: (samples, min, max, mean, last, increase).
fn expected(
    values: &[(i64, f64, i64)],
    start: i64,
    width: i64,
    counter: bool,
) -> (usize, f64, f64, f64, f64, f64) {
    let mut stats = Vec::new();
    let (mut samples, mut last, mut increase) = (0, 0.0, 0.0);
    for (i, &(ts, v, run_start)) in values.iter().enumerate() {
        if ts < start || ts >= start + width {
            continue;
        }
        samples += 1;
        last = v;
        if !counter {
            stats.push(v);
            continue;
        }
        let Some(&(pts, pv, prun)) = i.checked_sub(1).map(|j| &values[j]) else {
            continue;
        };
        // Across a restart the increase counts, but its time span is unknown: no rate.
        let (inc, since) = if v >= pv {
            (v - pv, Some(pts))
        } else if prun == run_start {
            (v, Some(pts))
        } else {
            (v, None)
        };
        increase += inc;
        if let Some(since) = since {
            stats.push(inc / ((ts - since) as f64 / 1000.0));
        }
    }
    let min = stats.iter().copied().fold(f64::INFINITY, f64::min);
    let max = stats.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = stats.iter().sum::<f64>() / stats.len() as f64;
    (samples, min, max, mean, last, increase)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Writes 24 h + 1 interval at 60 s. The agent restarts once (at interval 725, 30 s before its
/// first snapshot) and tunnel a's counter restarts from zero then; tunnel b's carries on.
fn write_day() -> (tempfile::TempDir, Written, i64) {
    write_day_with(true)
}

fn write_day_with(compaction: bool) -> (tempfile::TempDir, Written, i64) {
    let dir = tempfile::tempdir().unwrap();
    let intervals = 24 * 60 + 1;
    let mut run_start = T0 - 30_000;
    let (mut store, recovery) = Store::open(dir.path(), settings(), run_start).unwrap();
    assert!(recovery.is_none());
    if !compaction {
        store.without_compaction();
    }
    let mut generator = Gen {
        bytes_a: 0,
        bytes_b: 0,
    };
    let mut written = Written::new();
    for i in 0..intervals {
        let ts = T0 + i * MIN;
        if i == RESTART_AT {
            drop(store);
            run_start = ts - 30_000;
            store = Store::open(dir.path(), settings(), run_start).unwrap().0;
            if !compaction {
                store.without_compaction();
            }
        }
        let series = generator.series(i, i == RESTART_AT);
        store.write(ts, &series).unwrap();
        record(&mut written, &series, ts, run_start);
    }
    drop(store);
    (dir, written, T0 + (intervals - 1) * MIN)
}

/// After the hour bucket in progress began (interval 690) and after a window (ids 661..=720) was
/// compacted: the restart rebuilds the bucket from chunks and raw rows.
const RESTART_AT: i64 = 725;

fn connect(dir: &tempfile::TempDir) -> rusqlite::Connection {
    open_read_only(&dir.path().join(super::FILE_NAME)).unwrap()
}

/// Members of the blocks of `table` (rows that match `filter`): raw samples in the head,
/// chunks in `chunk_blocks`.
fn members_of(conn: &rusqlite::Connection, table: &str, filter: &str) -> i64 {
    let layout = if table == "head_blocks" {
        super::block::HEAD
    } else {
        super::block::CHUNKS
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT key & 1048575, data FROM {table} WHERE {filter}"
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap();
    rows.map(|r| {
        let (grp, data) = r.unwrap();
        layout.members(grp, &data).map(Result::unwrap).count() as i64
    })
    .sum()
}

fn head_count(conn: &rusqlite::Connection) -> i64 {
    members_of(conn, "head_blocks", "1")
}

fn chunk_count(conn: &rusqlite::Connection, filter: &str) -> i64 {
    members_of(conn, "chunk_blocks", filter)
}

#[test]
fn a_day_and_an_interval_keeps_exactly_24h_of_raw_samples() {
    let (dir, _, now) = write_day();
    let conn = connect(&dir);
    // Raw: exactly the last 24 h remain, every series in every snapshot.
    let (n, oldest): (i64, i64) = conn
        .query_row("SELECT COUNT(*), MIN(ts) FROM snapshots", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(oldest, now - 24 * HOUR);
    assert_eq!(n, 24 * 60 + 1);
    // Every series has a sample in every snapshot, from chunks or raw rows; all but the last
    // snapshot (not a whole window) are in chunks.
    for id in 1..=3 {
        let (before, points) = query::raw_series(&conn, id, 0, i64::MAX).unwrap();
        assert!(before.is_none());
        assert_eq!(points.len() as i64, n, "series {id}");
        assert!(
            points.windows(2).all(|w| w[1].ts - w[0].ts == MIN),
            "series {id}"
        );
    }
    let raw = head_count(&conn);
    let chunks = chunk_count(&conn, "1");
    assert_eq!(raw, 3, "raw samples");
    assert_eq!(chunks, 3 * 24, "chunks");
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM head_blocks WHERE key >> 20 NOT IN (SELECT id FROM snapshots)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

/// step, start, samples, min, max, mean, last, increase.
type RollupRow = (i64, i64, i64, f64, f64, f64, f64, Option<f64>);

#[test]
fn rollups_equal_the_statistics_of_the_raw_samples() {
    let (dir, written, _) = write_day();
    let conn = connect(&dir);

    // Rollups: every finished bucket equals the statistics of the raw values written.
    for (key, metric, labels, counter) in [
        (
            "t_bytes_total{tunnel=\"a\",port=\"6000\"}",
            "t_bytes_total",
            r#"{"port":"6000","tunnel":"a"}"#,
            true,
        ),
        (
            "t_bytes_total{tunnel=\"b\",port=\"6001\"}",
            "t_bytes_total",
            r#"{"port":"6001","tunnel":"b"}"#,
            true,
        ),
        ("t_load", "t_load", "{}", false),
    ] {
        let rows = rollup_rows(&conn, metric, labels);
        // 24 finished hours (00:30 → the partial first hour included) and one finished day.
        let hours = rows.iter().filter(|r| r.0 == 3600).count();
        assert_eq!(hours, 24, "{key}");
        assert_eq!(rows.iter().filter(|r| r.0 == 86_400).count(), 1, "{key}");
        check_rollups(&rows, &written[key], counter, key);
    }
}

/// Series `metric{labels}`'s rollup rows, as (step, start, samples, min, max, mean, last,
/// counter's increase).
fn rollup_rows(conn: &rusqlite::Connection, metric: &str, labels: &str) -> Vec<RollupRow> {
    let id: i64 = conn
        .query_row(
            "SELECT id FROM series WHERE metric = ?1 AND labels = ?2",
            params![metric, labels],
            |r| r.get(0),
        )
        .unwrap();
    super::buckets::all(conn)
        .unwrap()
        .into_iter()
        .filter(|r| r.2 == id)
        .map(|(step, start, _, b, c)| {
            (
                step,
                start,
                i64::from(b.samples),
                b.min,
                b.max,
                b.mean().unwrap_or(f64::NAN),
                b.last,
                c.then_some(b.increase),
            )
        })
        .collect()
}

/// Every row equals the statistics of the written values in its bucket.
fn check_rollups(rows: &[RollupRow], values: &[(i64, f64, i64)], counter: bool, key: &str) {
    for &(step, start, samples, min, max, mean, last, increase) in rows {
        let (e_samples, e_min, e_max, e_mean, e_last, e_inc) =
            expected(values, start, step * 1000, counter);
        let what = format!("{key} step {step} start {start}");
        assert_eq!(samples, i64::try_from(e_samples).unwrap(), "{what}");
        assert!(close(min, e_min), "{what}: min {min} vs {e_min}");
        assert!(close(max, e_max), "{what}: max {max} vs {e_max}");
        assert!(close(mean, e_mean), "{what}: mean {mean} vs {e_mean}");
        assert!(close(last, e_last), "{what}");
        if counter {
            assert!(close(increase.unwrap(), e_inc), "{what}: increase");
        } else {
            assert!(increase.is_none(), "{what}: a gauge's bucket");
        }
    }
}

#[test]
fn queries_return_exact_points_and_reset_aware_rates() {
    let (dir, written, now) = write_day();
    let conn = connect(&dir);
    // The last 6 h: exactly the points written in that range.
    let (req, _) = Request::from_query("metric=t_bytes_total&tunnel=a&from=now-6h", now).unwrap();
    let a = query::run(&conn, &settings(), &req, now).unwrap();
    assert_eq!(a.resolution, "raw");
    assert_eq!(a.series.len(), 1);
    let want: Vec<(f64, f64)> = written["t_bytes_total{tunnel=\"a\",port=\"6000\"}"]
        .iter()
        .filter(|(ts, ..)| *ts >= now - 6 * HOUR)
        .map(|(ts, v, _)| (*ts as f64 / 1000.0, *v))
        .collect();
    assert_eq!(want.len(), 361);
    assert_eq!(a.series[0].samples, want);

    // Rates over the whole day: never negative; the new run's first sample has no rate (when
    // its counters began is not known: a rate from the run's start would dip towards 0 at
    // every restart), the next one is the plain difference again.
    let (req, _) =
        Request::from_query("metric=t_bytes_total&tunnel=a&since=24h&rate=true", now).unwrap();
    let r = query::run(&conn, &settings(), &req, now).unwrap();
    let rates = &r.series[0].samples;
    assert!(rates.iter().all(|(_, v)| *v >= 0.0));
    let at_restart = (T0 + RESTART_AT * MIN) as f64 / 1000.0;
    assert!(!rates.iter().any(|(ts, _)| *ts == at_restart), "{rates:?}");
    // (A day of 1-minute points is more than max_points: they come in 8 s steps, one sample
    // each.)
    let after = rates.iter().find(|(ts, _)| *ts > at_restart).unwrap().1;
    let step = |i: i64| f64::from(u32::try_from(i % 7).unwrap()) * 250.0;
    assert!(
        close(after, (1000.0 + step(RESTART_AT + 1)) / 60.0),
        "{after}"
    );
    // A 7-day range falls back to the hourly rollups.
    let (req, _) = Request::from_query("metric=t_load&from=now-7d&agg=max", now).unwrap();
    let h = query::run(&conn, &settings(), &req, now).unwrap();
    assert_eq!(h.resolution, "1h");
    assert_eq!(h.series[0].samples.len(), 24);
    assert!(h.series[0].samples.iter().all(|(_, v)| *v == 2.5));
    // Stepped queries over raw use the same arithmetic as the rollups: hourly means from raw
    // equal the stored hourly rollups, and raw also has the hour in progress.
    let (req, _) = Request::from_query("metric=t_load&from=now-23h&step=1h", now).unwrap();
    let stepped = query::run(&conn, &settings(), &req, now).unwrap();
    assert_eq!(stepped.resolution, "raw");
    let (req, _) = Request::from_query("metric=t_load&from=now-7d", now).unwrap();
    let hourly = query::run(&conn, &settings(), &req, now).unwrap();
    let raw = &stepped.series[0].samples;
    assert_eq!(raw.len(), 24, "{raw:?}");
    // The first bucket is cut by `from` (01:30), the last is in progress.
    for (ts, v) in &raw[1..23] {
        let (_, r) = hourly.series[0]
            .samples
            .iter()
            .find(|(t, _)| t == ts)
            .unwrap();
        assert!(close(*v, *r), "{ts}: {v} from raw vs {r} from the rollup");
    }
    let (req, _) = Request::from_query("metric=t_load&tunel=a", now).unwrap();
    let e = query::run(&conn, &settings(), &req, now).unwrap_err();
    assert!(
        e.to_string().starts_with("parameter `tunel`: is neither"),
        "{e}"
    );
    // A 10-minute step over raw: gauges averaged per bucket.
    let (req, _) = Request::from_query("metric=t_load&from=now-1h&step=10m", now).unwrap();
    let stepped = query::run(&conn, &settings(), &req, now).unwrap();
    assert_eq!(stepped.resolution, "raw");
    let first = stepped.series[0].samples[0];
    let bucket: Vec<f64> = written["t_load"]
        .iter()
        .filter(|(ts, ..)| *ts >= now - HOUR && *ts < now - HOUR + 10 * MIN)
        .map(|(_, v, _)| *v)
        .collect();
    assert_eq!(first.0, (now - HOUR) as f64 / 1000.0);
    assert!(close(
        first.1,
        bucket.iter().sum::<f64>() / bucket.len() as f64
    ));
    assert_eq!(req.agg, Agg::Mean);
}

#[test]
fn bad_queries_say_which_parameter_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), settings(), T0).unwrap();
    let mut g = Gen {
        bytes_a: 0,
        bytes_b: 0,
    };
    store.write(T0, &g.series(0, false)).unwrap();
    let conn = open_read_only(store.path()).unwrap();
    let err = |q: &str| {
        Request::from_query(q, T0)
            .and_then(|(r, _)| query::run(&conn, &settings(), &r, T0))
            .unwrap_err()
    };
    let e = err("metric=nope");
    assert_eq!(e.status(), 404);
    assert!(e.to_string().contains("t_bytes_total, t_load"), "{e}");
    let e = err("metric=t_load&from=yesterday");
    assert_eq!(e.status(), 400);
    assert!(e.to_string().starts_with("parameter `from`"), "{e}");
    let e = err("metric=t_load&step=5x");
    assert!(e.to_string().starts_with("parameter `step`"), "{e}");
    let to = T0 / 1000 + 30 * 86_400;
    let e = err(&format!("metric=t_load&from=now-30d&to={to}&step=1s"));
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("the limit is 11000"), "{e}");
    let e = err("metric=t_load&rate=true");
    assert!(e.to_string().contains("is a gauge"), "{e}");
    let e = err("from=now-1h");
    assert!(e.to_string().starts_with("parameter `metric`"), "{e}");
}

#[test]
fn a_damaged_file_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::FILE_NAME);
    let garbage = vec![0x5au8; 64 * 1024];
    std::fs::write(&path, &garbage).unwrap();
    let (_store, recovery) = Store::open(dir.path(), settings(), T0).unwrap();
    let r = recovery.expect("the damaged file is reported");
    let name = r
        .moved_to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("history.db.corrupt-20260922T"), "{name}");
    assert_eq!(std::fs::read(&r.moved_to).unwrap(), garbage);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), settings(), T0).unwrap());
    let path = dir.path().join(super::FILE_NAME);
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let e = Store::open(dir.path(), settings(), T0).err().unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
}

#[test]
fn rollup_levels_are_validated() {
    let mut s = settings();
    assert!(s.validate().is_ok());
    s.levels[1].step = Duration::from_mins(90);
    assert!(
        s.validate()
            .unwrap_err()
            .contains("multiple of the previous")
    );
    s.levels[1].step = Duration::from_hours(24);
    s.levels[0].keep = Duration::from_mins(5);
    assert!(s.validate().unwrap_err().contains("rollups[0]: keep"));
}

/// A database written by the previous version (text exposition parsed back, schema 2) opens,
/// and the typed series of the same tunnels land on its series rows: the keys did not move.
#[test]
fn a_database_of_the_previous_version_goes_on_with_its_series() {
    use moonfrp_common::Proto;

    use crate::{
        metrics::{Extras, series},
        synthetic::{self, Synthetic},
        tunnel::{TunnelSource, TunnelSpec},
        watch::WatchTable,
    };

    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/history/written-by-a438f81.db");
    std::fs::copy(&fixture, dir.path().join(super::FILE_NAME)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let rows = |dir: &std::path::Path| -> (i64, i64) {
        let c = open_read_only(&dir.join(super::FILE_NAME)).unwrap();
        c.query_row(
            "SELECT (SELECT COUNT(*) FROM series), (SELECT MAX(ts) FROM snapshots)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let (series_before, last_before) = rows(dir.path());
    // The tunnels the fixture's agent watched.
    let specs: Vec<TunnelSpec> = [
        ("web", 31501, Proto::Tcp),
        ("ssh", 31502, Proto::Tcp),
        ("dns", 31503, Proto::Udp),
    ]
    .into_iter()
    .map(|(name, port, proto)| TunnelSpec {
        name: name.into(),
        port,
        proto,
        source: TunnelSource::Cli,
    })
    .collect();
    let mut watch = WatchTable::new(8);
    watch
        .apply(&mut Synthetic::default(), &specs, |_| {
            std::collections::HashMap::new()
        })
        .unwrap();
    let now = last_before + 60_000;
    let (mut store, recovery) = Store::open(dir.path(), settings(), now - 1000).unwrap();
    assert!(recovery.is_none(), "the old file is not treated as damaged");
    let snap = synthetic::snapshot(
        &Synthetic { round: 1 },
        &watch,
        crate::collect::SystemSample::default(),
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(now).unwrap()),
        1,
    );
    let built = series(
        Some(&snap),
        &Extras::default(),
        &crate::metrics::Settings::default(),
    );
    let written = store.write(now, &built).unwrap();
    drop(store);
    // Every per-tunnel counter and gauge found its old row; only series the old agent never
    // had (here: info labels with other values, families the old run had no sample of) are new.
    let conn = open_read_only(&dir.path().join(super::FILE_NAME)).unwrap();
    let mut checked = 0;
    for (_, p) in built.points() {
        let tunnel_series = p.name.starts_with("moonfrp_tunnel_")
            && p.name != "moonfrp_tunnel_info"
            && p.labels.iter().any(|(k, _)| *k == "tunnel");
        if !tunnel_series {
            continue;
        }
        let sorted: BTreeMap<&str, &str> = p.labels.iter().map(|(k, v)| (*k, &**v)).collect();
        let labels = serde_json::to_string(&sorted).unwrap();
        let (id, old_points): (i64, i64) = conn
            .query_row(
                "SELECT se.id, (SELECT COUNT(*) FROM snapshots sn JOIN samples sa
                   ON sa.key = (sn.id << 24) + se.id WHERE sn.ts < ?3)
                 FROM series se WHERE se.metric = ?1 AND se.labels = ?2",
                params![p.name, labels, now],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or_else(|e| panic!("{} {labels}: no row of the old version ({e})", p.name));
        assert!(id > 0 && old_points > 0, "{} {labels}", p.name);
        checked += 1;
    }
    assert!(checked >= 40, "{checked} tunnel series checked");
    let (series_after, last_after) = rows(dir.path());
    assert_eq!(last_after, now);
    assert!(
        usize::try_from(series_after - series_before).unwrap() < written.samples - checked,
        "{series_before} → {series_after} series rows for {} points",
        written.samples
    );
    // A query across both versions returns the old points and the new one.
    let (req, _) = Request::from_query(
        "metric=moonfrp_tunnel_receive_bytes_total&tunnel=web&from=0",
        now,
    )
    .unwrap();
    let a = query::run(&conn, &settings(), &req, now).unwrap();
    let points = &a.series[0].samples;
    assert!(points.len() >= 3, "{points:?}");
    assert_eq!(points.last().unwrap().0, rollup_s(now));
}

fn rollup_s(ms: i64) -> f64 {
    crate::time::ms_to_s(ms)
}

/// Per series id: its points as (time, value bits, run).
type AllPoints = Vec<(i64, Vec<(i64, u64, i64)>)>;

/// Every point of every series, as the queries read them.
fn all_points(conn: &rusqlite::Connection) -> AllPoints {
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM series ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    ids.into_iter()
        .map(|id| {
            let (_, points) = query::raw_series(conn, id, 0, i64::MAX).unwrap();
            let points = points
                .iter()
                .map(|o| (o.ts, o.value.to_bits(), o.run))
                .collect();
            (id, points)
        })
        .collect()
}

/// Compacting the whole day into chunks changes no answer: every point, rate, stepped and
/// rollup-backed query is the same before and after, and nothing raw is left.
#[test]
fn compaction_changes_no_answer() {
    let (dir, _, now) = write_day_with(false);
    let queries = [
        "metric=t_bytes_total&since=24h",
        "metric=t_bytes_total&tunnel=a&since=24h&rate=true",
        "metric=t_bytes_total&tunnel=b&from=now-13h&to=now-2h&rate=true&step=7m",
        "metric=t_load&since=24h&step=1h&agg=max",
        "metric=t_load&from=now-3h",
        "metric=t_load&from=now-7d",
    ];
    let answers = |conn: &rusqlite::Connection| -> Vec<String> {
        queries
            .iter()
            .map(|q| {
                let (req, _) = Request::from_query(q, now).unwrap();
                serde_json::to_string(&query::run(conn, &settings(), &req, now).unwrap()).unwrap()
            })
            .collect()
    };
    let before = {
        let conn = connect(&dir);
        (answers(&conn), all_points(&conn))
    };
    let mut rw = rusqlite::Connection::open(dir.path().join(super::FILE_NAME)).unwrap();
    let moved = super::compact::step(&mut rw, u64::MAX / 2).unwrap();
    assert!(moved > 0);
    let raw = head_count(&rw);
    // Only the last, partial window stays raw.
    assert!(raw < 3 * super::compact::WINDOW, "{raw} raw rows left");
    drop(rw);
    let conn = connect(&dir);
    let after = (answers(&conn), all_points(&conn));
    assert_eq!(before.1, after.1);
    for (q, (b, a)) in queries.iter().zip(before.0.iter().zip(&after.0)) {
        assert_eq!(b, a, "{q}");
    }
    // Three series of 1,441 samples in chunks (raw rows take about 17 bytes a sample): under
    // 3 bytes a sample, though every value here changes every minute.
    let bytes: i64 = conn
        .query_row("SELECT SUM(LENGTH(data)) FROM chunk_blocks", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(bytes < 3 * 1441 * 3, "{bytes} bytes of chunks");
}

/// A database written by the previous version (all raw, schema 2) is converted into chunks as
/// windows of it age: every old point comes back once, in order, before and after.
#[test]
fn a_database_of_the_previous_version_is_converted_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/history/written-by-a438f81.db");
    std::fs::copy(&fixture, dir.path().join(super::FILE_NAME)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let old = all_points(&open_read_only(&dir.path().join(super::FILE_NAME)).unwrap());
    let last: i64 = open_read_only(&dir.path().join(super::FILE_NAME))
        .unwrap()
        .query_row("SELECT MAX(ts) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    // A new run goes on for 3 hours: the old snapshots and the first new ones become a window.
    let (mut store, _) = Store::open(dir.path(), settings(), last + 1000).unwrap();
    let mut generator = Gen {
        bytes_a: 0,
        bytes_b: 0,
    };
    for i in 0..180 {
        store
            .write(last + (i + 1) * MIN, &generator.series(i, false))
            .unwrap();
    }
    drop(store);
    let conn = connect(&dir);
    let windows: i64 = conn
        .query_row("SELECT COUNT(*) FROM windows", [], |r| r.get(0))
        .unwrap();
    assert!(windows >= 1, "no window was compacted");
    let first_window_old = chunk_count(&conn, "key >> 20 = (SELECT MIN(first) FROM windows)");
    assert!(
        first_window_old > 100,
        "{first_window_old} chunks of old series"
    );
    let now = all_points(&conn);
    for (id, points) in &old {
        let (_, new) = now.iter().find(|(i, _)| i == id).unwrap();
        assert_eq!(&new[..points.len()], &points[..], "series {id}");
        assert!(
            new.windows(2).all(|w| w[0].0 < w[1].0),
            "series {id}: order or duplicate"
        );
    }
}

mod round_trip {
    use proptest::prelude::*;

    use super::*;

    /// Finite values as history gets them (NaN and ±Inf never reach it: `Family::points`
    /// leaves them out): counters up to 2^53 with resets, gauges with negatives, fractions and
    /// -0.0, long constant runs.
    fn gauge_values() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                (
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    1usize..90
                )
                    .prop_map(|(v, n)| vec![v; n]),
                prop::collection::vec(
                    prop_oneof![
                        any::<i32>().prop_map(f64::from),
                        (-1e9f64..1e9),
                        Just(-0.0),
                        any::<f64>().prop_filter("finite", |v| v.is_finite()),
                    ],
                    1..40,
                ),
            ],
            1..6,
        )
        .prop_map(|runs| runs.concat())
    }

    fn counter_values() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec((0u64..1 << 53, 0u64..1 << 20, 1usize..80), 1..5).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(start, rate, n)| {
                    (0..n as u64).map(move |i| (start + i * rate).min(1 << 53))
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// Written through the store, compacted into chunks, read back: bit for bit.
        #[test]
        fn series_come_back_bit_for_bit_through_chunks(gauge in gauge_values(), counter in counter_values()) {
            let dir = tempfile::tempdir().unwrap();
            let (mut store, _) = Store::open(dir.path(), settings(), T0 - 1000).unwrap();
            let n = gauge.len().max(counter.len()).max(2 * super::super::compact::WINDOW as usize);
            for i in 0..n {
                let mut b = Builder::default();
                b.gauge("g", "G.", None, gauge[i % gauge.len()]);
                b.counters("c", "C.", None, [([("k", "v")], counter[i % counter.len()])]);
                store.write(T0 + i as i64 * MIN, &b.build()).unwrap();
            }
            drop(store);
            let mut rw = rusqlite::Connection::open(dir.path().join(super::super::FILE_NAME)).unwrap();
            super::super::compact::step(&mut rw, u64::MAX / 2).unwrap();
            let chunks = chunk_count(&rw, "1");
            prop_assert!(chunks >= 2);
            drop(rw);
            let conn = connect(&dir);
            for (id, want) in [
                (1, (0..n).map(|i| gauge[i % gauge.len()].to_bits()).collect::<Vec<_>>()),
                (2, (0..n).map(|i| (counter[i % counter.len()] as f64).to_bits()).collect()),
            ] {
                let (_, points) = query::raw_series(&conn, id, 0, i64::MAX).unwrap();
                let got: Vec<u64> = points.iter().map(|o| o.value.to_bits()).collect();
                prop_assert_eq!(got, want, "series {}", id);
                prop_assert!(points.iter().enumerate().all(|(i, o)| o.ts == T0 + i as i64 * MIN));
            }
        }
    }
}

/// Many series over a range are read at once (a scan per snapshot of the head, each window's
/// chunks once); the answer is the one the per-series reads give, over chunks and raw rows, gaps
/// and a missing sample before `from` included.
#[test]
fn the_bulk_read_answers_like_the_per_series_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), settings(), T0 - 1000).unwrap();
    for i in 0..90i64 {
        let mut b = Builder::default();
        // Series k is absent from snapshots where (i + k) % 7 == 0 (tunnels come and go).
        let rows: Vec<([(&str, String); 1], u64)> = (0..20i64)
            .filter(|k| (i + k) % 7 != 0)
            .map(|k| {
                (
                    [("k", format!("s{k:02}"))],
                    u64::try_from(i * (k + 1) * 100).unwrap(),
                )
            })
            .collect();
        b.counters("c", "C.", None, rows);
        store.write(T0 + i * MIN, &b.build()).unwrap();
    }
    drop(store);
    let conn = connect(&dir);
    let windows: i64 = conn
        .query_row("SELECT COUNT(*) FROM windows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(windows, 1, "the first hour is in chunks, the rest raw");
    let now = T0 + 89 * MIN;
    for q in [
        "metric=c_total&from=now-1h&rate=true",
        "metric=c_total&from=now-30m",
        "metric=c_total&from=now-89m&to=now-40m&rate=true",
        "metric=c_total&from=now-45m&step=5m&rate=true",
    ] {
        let (req, _) = Request::from_query(q, now).unwrap();
        let bulk = query::run(&conn, &settings(), &req, now).unwrap();
        assert_eq!(bulk.series.len(), 20, "{q}");
        for s in &bulk.series {
            let id: i64 = conn
                .query_row(
                    "SELECT id FROM series WHERE metric = 'c_total' AND labels = ?1",
                    [serde_json::to_string(&s.labels).unwrap()],
                    |r| r.get(0),
                )
                .unwrap();
            let one = Request {
                matchers: vec![("k".into(), s.labels["k"].clone())],
                ..req.clone()
            };
            let single = query::run(&conn, &settings(), &one, now).unwrap();
            assert_eq!(single.series.len(), 1);
            assert_eq!(single.series[0].samples, s.samples, "{q} series {id}");
            assert!(!s.samples.is_empty(), "{q} series {id}");
        }
    }
}

/// Rollup buckets as earlier versions stored them (a row per series in `rollups`) are read in
/// place, then moved into blocks a bucket at a time while the agent writes: the rollup-backed
/// answers stay the same throughout (the old rows kept the mean, not the sum: within rounding),
/// and no bucket is lost or doubled.
#[test]
fn rollup_rows_of_the_previous_version_are_read_in_place_then_moved() {
    let (dir, _, now) = write_day();
    let path = dir.path().join(super::FILE_NAME);
    let queries = [
        "metric=t_bytes_total&from=now-7d&rate=true",
        "metric=t_bytes_total&from=now-7d&rate=true&agg=max",
        "metric=t_load&from=now-7d&agg=min",
        "metric=t_load&from=now-30d",
    ];
    let answers = |conn: &rusqlite::Connection| -> Vec<Vec<(f64, f64)>> {
        queries
            .iter()
            .flat_map(|q| {
                let (req, _) = Request::from_query(q, now).unwrap();
                let a = query::run(conn, &settings(), &req, now).unwrap();
                assert!(a.resolution != "raw", "{q}");
                a.series.into_iter().map(|s| s.samples)
            })
            .collect()
    };
    let same = |a: &[Vec<(f64, f64)>], b: &[Vec<(f64, f64)>], when: &str| {
        assert_eq!(a.len(), b.len(), "{when}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len(), "{when}");
            for (p, q) in x.iter().zip(y) {
                assert!(p.0 == q.0 && close(p.1, q.1), "{when}: {p:?} vs {q:?}");
            }
        }
    };
    let before = answers(&connect(&dir));
    assert!(before.iter().all(|s| !s.is_empty()));
    let buckets_before = super::buckets::all(&connect(&dir)).unwrap();
    assert_eq!(buckets_before.len(), 3 * (24 + 1));
    // Back to the old layout.
    {
        let rw = rusqlite::Connection::open(&path).unwrap();
        for (step, start, id, b, counter) in &buckets_before {
            let points = (b.n > 0).then_some(());
            rw.execute(
                "INSERT INTO rollups (step, start, series_id, samples, points, min, max, mean, last, increase, seconds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    step,
                    start,
                    id,
                    b.samples,
                    b.n,
                    points.map(|()| b.min),
                    points.map(|()| b.max),
                    b.mean(),
                    b.last,
                    counter.then_some(b.increase),
                    counter.then_some(b.seconds)
                ],
            )
            .unwrap();
        }
        rw.execute("DELETE FROM rollup_blocks", []).unwrap();
    }
    same(&answers(&connect(&dir)), &before, "read in place");
    // One bucket moved, the others still in place.
    let mut rw = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(super::buckets::convert(&mut rw, 1).unwrap(), 3);
    drop(rw);
    same(&answers(&connect(&dir)), &before, "half moved");
    // The agent's next writes move the rest.
    let (mut store, _) = Store::open(dir.path(), settings(), now + 1000).unwrap();
    let mut generator = Gen {
        bytes_a: 0,
        bytes_b: 0,
    };
    for i in 1..=2 {
        store
            .write(now + i * MIN, &generator.series(i, false))
            .unwrap();
    }
    drop(store);
    let conn = connect(&dir);
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM rollups", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "rows left in the old table");
    same(&answers(&conn), &before, "moved");
    let after = super::buckets::all(&conn).unwrap();
    assert_eq!(after.len(), buckets_before.len());
    for (a, b) in after.iter().zip(&buckets_before) {
        assert_eq!((a.0, a.1, a.2, a.4), (b.0, b.1, b.2, b.4));
        let (x, y) = (&a.3, &b.3);
        assert_eq!(
            (x.samples, x.n, x.min, x.max, x.last, x.increase, x.seconds),
            (y.samples, y.n, y.min, y.max, y.last, y.increase, y.seconds)
        );
        assert!(close(x.sum, y.sum), "{a:?} vs {b:?}");
    }
}

/// A database of version 3 (a chunk per row in `chunks`) has its chunks moved into blocks when
/// it is opened: every point comes back the same, and it goes on being written.
#[test]
fn chunks_of_version_3_are_moved_into_blocks() {
    let (dir, _, now) = write_day();
    let path = dir.path().join(super::FILE_NAME);
    let before = all_points(&connect(&dir));
    // Back to version 3's layout.
    {
        let rw = rusqlite::Connection::open(&path).unwrap();
        rw.execute_batch(
            "CREATE TABLE chunks (series_id INTEGER NOT NULL, window_id INTEGER NOT NULL,
               first INTEGER NOT NULL, count INTEGER NOT NULL, data BLOB NOT NULL,
               PRIMARY KEY (series_id, window_id)) WITHOUT ROWID;
             CREATE INDEX chunks_window ON chunks(window_id);",
        )
        .unwrap();
        let blocks: Vec<(i64, i64, Vec<u8>)> = rw
            .prepare("SELECT key >> 20, key & 1048575, data FROM chunk_blocks")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!blocks.is_empty());
        for (window, grp, data) in blocks {
            for (id, m) in super::block::CHUNKS.members(grp, &data).map(Result::unwrap) {
                let mut pos = 0;
                let offset = super::block::get_varint(m, &mut pos).unwrap();
                let count = super::block::get_varint(m, &mut pos).unwrap();
                rw.execute(
                    "INSERT INTO chunks VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        id,
                        window,
                        window + i64::try_from(offset).unwrap(),
                        i64::try_from(count).unwrap(),
                        &m[pos..]
                    ],
                )
                .unwrap();
            }
        }
        // Version 3's head: a row per sample.
        let heads: Vec<(i64, i64, Vec<u8>)> = rw
            .prepare("SELECT key >> 20, key & 1048575, data FROM head_blocks")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (snapshot, grp, data) in heads {
            for (id, _) in super::block::HEAD.members(grp, &data).map(Result::unwrap) {
                let value = super::head::Reader::new(&rw)
                    .unwrap()
                    .value(snapshot, id)
                    .unwrap()
                    .unwrap();
                rw.execute(
                    "INSERT INTO samples (key, value) VALUES (?1, ?2)",
                    params![super::store::sample_key(snapshot, id), value],
                )
                .unwrap();
            }
        }
        rw.execute_batch(
            "DROP TABLE chunk_blocks; DROP TABLE rollup_blocks; DROP TABLE head_blocks;
             CREATE VIEW history AS SELECT 1 AS ts;
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let (mut store, _) = Store::open(dir.path(), settings(), now + 1000).unwrap();
    let mut generator = Gen {
        bytes_a: 0,
        bytes_b: 0,
    };
    store.write(now + MIN, &generator.series(1, false)).unwrap();
    drop(store);
    let conn = connect(&dir);
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('chunks', 'chunks_window')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "version 3's table is gone");
    let after = all_points(&conn);
    for ((id, old), (id2, new)) in before.iter().zip(&after) {
        assert_eq!(id, id2);
        // The oldest point expired as the new one came.
        assert_eq!(new.len(), old.len(), "series {id}");
        let diff = old[1..].iter().zip(new).position(|(a, b)| a != b);
        assert_eq!(diff, None, "series {id}");
        assert!(new.last().unwrap().0 > old.last().unwrap().0, "series {id}");
    }
}

/// Series that come and go between writes — inserted in the middle, removed, the list shorter
/// and longer — each keep their own points: every write is compared position by position with
/// the one before, so each of these shapes takes another path through that comparison.
#[test]
fn series_that_come_and_go_keep_their_own_points() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), settings(), T0 - 1_000).unwrap();
    let shapes: [&[&'static str]; 7] = [
        &["a", "b", "c", "d"],
        &["a", "b", "c", "d"],
        &["a", "x", "b", "c", "d"],
        &["a", "b", "d"],
        &["a", "b"],
        &["a", "b", "c", "d", "e"],
        &["a", "b", "c", "d", "e"],
    ];
    let mut written = Written::new();
    for (i, tunnels) in shapes.iter().enumerate() {
        let ts = T0 + i as i64 * MIN;
        let mut b = Builder::default();
        b.gauges(
            "g",
            "A gauge.",
            None,
            tunnels.iter().map(|t| {
                // A value that says which write and which tunnel.
                let v = i as i64 * 100 + i64::from(t.as_bytes()[0]);
                ([("tunnel", *t)], v)
            }),
        );
        let series = b.build();
        store.write(ts, &series).unwrap();
        record(&mut written, &series, ts, T0 - 1_000);
    }
    drop(store);
    let conn = connect(&dir);
    let now = T0 + 6 * MIN;
    for t in ["a", "b", "c", "d", "e", "x"] {
        let (req, _) =
            Request::from_query(&format!("metric=g&tunnel={t}&from=now-1h"), now).unwrap();
        let got = query::run(&conn, &settings(), &req, now).unwrap();
        assert_eq!(got.series.len(), 1, "{t}");
        let want: Vec<(f64, f64)> = written[&format!("g{{tunnel=\"{t}\"}}")]
            .iter()
            .map(|(ts, v, _)| (*ts as f64 / 1000.0, *v))
            .collect();
        assert_eq!(got.series[0].samples, want, "{t}");
    }
}

/// Counters `n_total{tunnel=…}`, each growing by its own step per interval.
fn tunnels(i: i64, names: &[&'static str]) -> Series {
    let mut b = Builder::default();
    b.counters(
        "n",
        "N.",
        None,
        names.iter().map(|t| {
            let step = u64::from(t.as_bytes()[0]);
            ([("tunnel", *t)], u64::try_from(i).unwrap() * step)
        }),
    );
    b.build()
}

#[test]
fn a_series_gone_longer_than_retention_is_forgotten_and_the_others_keep_their_rollups() {
    // Raw samples 2 h; buckets of 1 h and 2 h. Every 10 minutes: tunnels a, b, c for an hour,
    // then a and c for four, then all three again for two.
    let settings = Settings {
        retention: Duration::from_hours(2),
        levels: vec![
            super::Level {
                step: Duration::from_hours(1),
                keep: Duration::from_hours(48),
            },
            super::Level {
                step: Duration::from_hours(2),
                keep: Duration::from_hours(48),
            },
        ],
        ..Settings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let run_start = T0 - 1_000;
    let (mut store, _) = Store::open(dir.path(), settings.clone(), run_start).unwrap();
    let mut written = Written::new();
    let step = 10 * MIN;
    let (back_at, end) = (T0 + 5 * HOUR, T0 + 7 * HOUR);
    let mut i = 0;
    while T0 + i * step <= end {
        let ts = T0 + i * step;
        let names: &[&str] = if ts < T0 + HOUR || ts >= back_at {
            &["a", "b", "c"]
        } else {
            &["a", "c"]
        };
        let series = tunnels(i, names);
        store.write(ts, &series).unwrap();
        record(&mut written, &series, ts, run_start);
        // b's last sample is at 01:20; the first hour's flush after 03:20 (04:00) forgets it,
        // its buckets being written by then. c moves to b's place.
        let forgotten = (T0 + 3 * HOUR + 30 * MIN..back_at).contains(&ts);
        assert_eq!(store.tracked(), if forgotten { 2 } else { 3 }, "at {ts}");
        i += 1;
    }
    drop(store);
    let conn = connect(&dir);
    for t in ["a", "b", "c"] {
        let key = format!("n_total{{tunnel=\"{t}\"}}");
        let rows = rollup_rows(&conn, "n_total", &format!(r#"{{"tunnel":"{t}"}}"#));
        // Hours 00:00 → 06:00 and the 2 h buckets from 00:00 and 02:00 and 04:00 (b has
        // none from 02:00, having no samples then).
        let hours = rows.iter().filter(|r| r.0 == 3600).count();
        assert_eq!(hours, if t == "b" { 4 } else { 7 }, "{key}");
        let values = &written[&key];
        // Back after the whole retention, b starts anew: its first sample then has no
        // increase (and no rate).
        let (before, after): (Vec<_>, Vec<_>) = values.iter().partition(|v| v.0 < back_at);
        for (row, vals) in [
            (
                rows.iter()
                    .filter(|r| r.1 + r.0 * 1000 <= back_at)
                    .copied()
                    .collect::<Vec<_>>(),
                if t == "b" { &before } else { values },
            ),
            (
                rows.iter()
                    .filter(|r| r.1 + r.0 * 1000 > back_at)
                    .copied()
                    .collect(),
                if t == "b" { &after } else { values },
            ),
        ] {
            check_rollups(&row, vals, true, &key);
        }
    }
}

#[test]
fn a_failed_write_leaves_no_series_behind() {
    let dir = tempfile::tempdir().unwrap();
    let run_start = T0 - 1_000;
    let (mut store, _) = Store::open(dir.path(), settings(), run_start).unwrap();
    let mut written = Written::new();
    let first = tunnels(0, &["a", "b"]);
    store.write(T0, &first).unwrap();
    record(&mut written, &first, T0, run_start);
    // The next new series takes the last id there is; the one after it cannot be stored.
    let last_id = super::store::MAX_SERIES;
    rusqlite::Connection::open(dir.path().join(super::FILE_NAME))
        .unwrap()
        .execute(
            "INSERT INTO series (id, metric, labels) VALUES (?1, 'n_total', '{}')",
            [last_id - 1],
        )
        .unwrap();
    let mut b = Builder::default();
    b.counters(
        "n",
        "N.",
        None,
        [([("tunnel", "a")], 1u64), ([("tunnel", "b")], 1)],
    );
    b.gauges(
        "g",
        "G.",
        None,
        [([("tunnel", "c")], 1u64), ([("tunnel", "d")], 1)],
    );
    let e = store.write(T0 + MIN, &b.build()).unwrap_err();
    assert!(e.to_string().contains("series were ever stored"), "{e}");
    assert_eq!(
        store.tracked(),
        2,
        "c's state went with its rolled-back row"
    );
    // e, a counter, now gets the id c had in the failed write: it must count as a counter.
    for i in 2..=40 {
        let ts = T0 + i * MIN;
        let series = tunnels(i, &["a", "b", "e"]);
        store.write(ts, &series).unwrap();
        record(&mut written, &series, ts, run_start);
    }
    drop(store);
    let conn = connect(&dir);
    let e_id: i64 = conn
        .query_row(
            "SELECT id FROM series WHERE labels = '{\"tunnel\":\"e\"}'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(e_id, last_id);
    for t in ["a", "b", "e"] {
        let key = format!("n_total{{tunnel=\"{t}\"}}");
        let rows = rollup_rows(&conn, "n_total", &format!(r#"{{"tunnel":"{t}"}}"#));
        assert_eq!(rows.len(), 1, "{key}: the hour 00:00 → 01:00");
        check_rollups(&rows, &written[&key], true, &key);
        // Every raw sample is the written one.
        let (req, _) = Request::from_query(
            &format!("metric=n_total&tunnel={t}&from=now-1h"),
            T0 + 40 * MIN,
        )
        .unwrap();
        let got = query::run(&conn, &settings(), &req, T0 + 40 * MIN).unwrap();
        let want: Vec<(f64, f64)> = written[&key]
            .iter()
            .map(|(ts, v, _)| (*ts as f64 / 1000.0, *v))
            .collect();
        assert_eq!(got.series[0].samples, want, "{key}");
    }
}
