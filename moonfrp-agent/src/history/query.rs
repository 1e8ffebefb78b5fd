//! Range queries over the history database, shared by the HTTP API and the `history` client.
//!
//! The resolution is picked from the range: raw samples while they cover `from`, else the finest
//! rollup level that does. Without `step` every stored point comes back; with `step` the points
//! are grouped into step-wide buckets aligned to the Unix epoch, with the same arithmetic as the
//! rollups (see [`super::rollup`]).
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

use super::{
    Kind, Level, Settings,
    rollup::{self, Bucket, Obs},
};

/// How a bucket of several points becomes one value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Agg {
    /// Gauges: mean of the values; counters with `rate`: increase over the time covered.
    #[default]
    Mean,
    Min,
    Max,
    Last,
}

impl Agg {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mean" | "avg" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "last" => Self::Last,
            _ => return None,
        })
    }
}

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub metric: String,
    /// Label equality matchers (`tunnel=ssh`, `device=eth0`).
    pub matchers: Vec<(String, String)>,
    /// Unix ms, inclusive.
    pub from: i64,
    pub to: i64,
    /// Bucket width in ms; `None`: every stored point.
    pub step: Option<i64>,
    /// Per-second rates of a counter instead of its value.
    pub rate: bool,
    pub agg: Agg,
}

/// Output format of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("parameter `{param}`: {problem}")]
    BadParam { param: String, problem: String },
    #[error("unknown metric `{metric}`; known metrics: {}", known.join(", "))]
    UnknownMetric { metric: String, known: Vec<String> },
    #[error(
        "range too large: {points} points per series at this step, the limit is {limit}; ask for step={suggestion}s or a shorter range"
    )]
    TooLarge {
        points: u64,
        limit: usize,
        suggestion: u64,
    },
    #[error("the history database cannot be read: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("no history database at {0} (history is disabled, or the agent has not run yet)")]
    NoDatabase(String),
}

impl QueryError {
    /// The HTTP status for this error.
    pub const fn status(&self) -> u16 {
        match self {
            Self::BadParam { .. } | Self::TooLarge { .. } => 400,
            Self::UnknownMetric { .. } => 404,
            Self::NoDatabase(_) => 503,
            Self::Db(_) => 500,
        }
    }
}

pub(crate) fn bad(param: &str, problem: impl Into<String>) -> QueryError {
    QueryError::BadParam {
        param: param.to_owned(),
        problem: problem.into(),
    }
}

/// `since=6h`: `now_ms` minus the duration.
pub(crate) fn parse_since(v: &str, now_ms: i64) -> Result<i64, QueryError> {
    let d = humantime::parse_duration(v).map_err(|e| {
        bad(
            "since",
            format!(
                "`{}` is not a duration ({e}); use e.g. 6h",
                crate::untrusted::shown(v)
            ),
        )
    })?;
    Ok(now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
}

/// `now`, `now-6h`, `-6h`, an RFC 3339 time, or Unix seconds.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        let d = humantime::parse_duration(ago)
            .map_err(|e| format!("`{s}`: `{ago}` is not a duration ({e})"))?;
        return Ok(now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    }
    if let Ok(secs) = s.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        #[allow(clippy::cast_possible_truncation)]
        return Ok((secs * 1000.0).round() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(crate::time::unix_ms)
        .map_err(|_| {
            format!("`{s}` is not a time; use RFC 3339 (2026-11-22T10:00:00Z), Unix seconds, now or now-6h")
        })
}

/// A duration (`5m`) or a number of seconds (`300`).
pub fn parse_step(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. 5m or 300"))?,
    };
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}` is shorter than 1s"));
    }
    Ok(d)
}

impl Request {
    /// Every stored point of every series of `metric` from `from` to `to` (Unix ms).
    pub fn window(metric: &str, from: i64, to: i64, rate: bool) -> Self {
        Self {
            metric: metric.to_owned(),
            matchers: Vec::new(),
            from,
            to,
            step: None,
            rate,
            agg: Agg::Mean,
        }
    }

    /// Reads the API's query string: `metric`, `from`, `to`, `since`, `step`, `rate`, `agg`,
    /// `format`; any other parameter is a label matcher.
    pub fn from_query(query: &str, now_ms: i64) -> Result<(Self, Format), QueryError> {
        let mut metric = None;
        let (mut from, mut to, mut step) = (None, None, None);
        let (mut rate, mut agg, mut format) = (false, Agg::Mean, Format::Json);
        let mut matchers = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "metric" => metric = Some(v.into_owned()),
                "from" => from = Some(parse_time(&v, now_ms).map_err(|p| bad("from", p))?),
                "since" => from = Some(parse_since(&v, now_ms)?),
                "to" => to = Some(parse_time(&v, now_ms).map_err(|p| bad("to", p))?),
                "step" => {
                    let d = parse_step(&v).map_err(|p| bad("step", p))?;
                    step = Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                }
                "rate" => {
                    rate = match v.as_ref() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        other => return Err(bad("rate", format!("`{other}`: use true or false"))),
                    };
                }
                "agg" => {
                    agg = Agg::parse(&v)
                        .ok_or_else(|| bad("agg", format!("`{v}`: use mean, min, max or last")))?;
                }
                "format" => {
                    format = match v.as_ref() {
                        "json" => Format::Json,
                        "csv" => Format::Csv,
                        other => return Err(bad("format", format!("`{other}`: use json or csv"))),
                    };
                }
                _ => matchers.push((k.into_owned(), v.into_owned())),
            }
        }
        let metric = metric.filter(|m| !m.is_empty()).ok_or_else(|| {
            bad(
                "metric",
                "missing; e.g. metric=moonfrp_tunnel_receive_bytes_total",
            )
        })?;
        let to = to.unwrap_or(now_ms);
        let from = from.unwrap_or(to - 3_600_000);
        if from > to {
            return Err(bad("from", "is after `to`"));
        }
        Ok((
            Self {
                metric,
                matchers,
                from,
                to,
                step,
                rate,
                agg,
            },
            format,
        ))
    }
}

/// One series of an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesOut {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub unit: String,
    /// `[unix seconds, value]`.
    pub samples: Vec<(f64, f64)>,
}

/// A query's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// `raw`, or the rollup step (`1h`, `1d`).
    pub resolution: String,
    /// Bucket width in seconds, or null for every raw point.
    pub step: Option<f64>,
    pub from: f64,
    pub to: f64,
    /// Values are per-second rates.
    pub rate: bool,
    pub series: Vec<SeriesOut>,
}

struct SeriesRow {
    id: i64,
    labels: BTreeMap<String, String>,
}

/// Known metric names.
pub fn known_metrics(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT name FROM metrics ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect()
}

/// Where the data for a range lives.
#[derive(Clone, Copy)]
enum Source<'a> {
    Raw,
    Rollup(&'a Level),
}

/// Runs a query against the database.
pub fn run(
    conn: &Connection,
    settings: &Settings,
    req: &Request,
    now_ms: i64,
) -> Result<Answer, QueryError> {
    let meta: Option<(String, String)> = conn
        .query_row(
            "SELECT type, unit FROM metrics WHERE name = ?1",
            [&req.metric],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((kind, unit)) = meta else {
        return Err(QueryError::UnknownMetric {
            metric: req.metric.clone(),
            known: known_metrics(conn)?,
        });
    };
    let counter = Kind::parse(&kind) == Kind::Counter;
    if req.rate && !counter {
        return Err(bad(
            "rate",
            format!("`{}` is a gauge; rates apply to counters", req.metric),
        ));
    }
    let asked_from = req.from;
    let req = &start_at_the_data(conn, settings, req)?;
    let span = req.to - req.from;
    let (source, step) = pick(settings, req, now_ms, span)?;
    let mut out = Answer {
        resolution: match source {
            Source::Raw => "raw".to_owned(),
            Source::Rollup(l) => l.name(),
        },
        step: step.map(crate::time::ms_to_s),
        from: crate::time::ms_to_s(asked_from),
        to: crate::time::ms_to_s(req.to),
        rate: req.rate,
        series: Vec::new(),
    };
    let matching = matching_series(conn, req)?;
    // Raw points are read a batch of series at a time, in id order (neighbours share blocks):
    // what is held while reading is a batch's samples, not every series' over the whole range.
    let mut raw: Vec<Option<Vec<(f64, f64)>>> = vec![None; matching.len()];
    if matches!(source, Source::Raw) {
        let mut order: Vec<usize> = (0..matching.len()).collect();
        order.sort_unstable_by_key(|&i| matching[i].id);
        // Cut between blocks of the head, so that no block is read twice.
        let block = |n: usize| super::block::HEAD.group(matching[order[n]].id);
        let mut cuts = vec![0];
        for n in 1..order.len() {
            if n - cuts[cuts.len() - 1] >= BULK_BATCH && block(n) != block(n - 1) {
                cuts.push(n);
            }
        }
        cuts.push(order.len());
        let range = Range::read(conn, req.from, req.to)?;
        for batch in cuts.windows(2).map(|w| &order[w[0]..w[1]]) {
            let ids: Vec<i64> = batch.iter().map(|&i| matching[i].id).collect();
            let mut read = bulk(conn, &range, &ids, req.rate)?;
            for &i in batch {
                let id = matching[i].id;
                let points = match read.as_mut().and_then(|b| b.remove(&id)) {
                    Some(points) => points,
                    None => raw_series(conn, id, req.from, req.to)?,
                };
                raw[i] = Some(raw_points(points, req, counter, step));
            }
        }
    }
    for (s, points) in matching.into_iter().zip(raw) {
        let buckets_or_points = match (source, points) {
            (Source::Rollup(level), _) => rollup_points(conn, s.id, level, req, counter, step)?,
            (Source::Raw, points) => points.unwrap_or_default(),
        };
        out.series.push(SeriesOut {
            metric: req.metric.clone(),
            labels: s.labels,
            kind: kind.clone(),
            unit: unit.clone(),
            samples: buckets_or_points,
        });
    }
    Ok(out)
}

/// Series read at once by a query over raw samples.
const BULK_BATCH: usize = 512;

/// The request with `from` moved up to the oldest stored snapshot when nothing older exists
/// in any rollup level (a database younger than the range asked for, e.g. `since=25h` or
/// `from=0` after 25 minutes): the range is then answered from raw samples, which hold
/// everything there is, instead of from rollup levels that have no bucket yet.
fn start_at_the_data(
    conn: &Connection,
    settings: &Settings,
    req: &Request,
) -> rusqlite::Result<Request> {
    let oldest: Option<i64> = conn.query_row("SELECT min(ts) FROM snapshots", [], |r| r.get(0))?;
    let Some(oldest) = oldest.filter(|o| req.from < *o) else {
        return Ok(req.clone());
    };
    for level in &settings.levels {
        if super::buckets::any_before(conn, level.step_s(), oldest)? {
            return Ok(req.clone());
        }
    }
    Ok(Request {
        from: oldest.min(req.to),
        ..req.clone()
    })
}

/// Chooses raw or a rollup level, and the output step (None: native points).
fn pick<'a>(
    settings: &'a Settings,
    req: &Request,
    now_ms: i64,
    span: i64,
) -> Result<(Source<'a>, Option<i64>), QueryError> {
    let limit = settings.max_points;
    let covers = |keep_ms: i64| req.from >= now_ms - keep_ms;
    let too_large = |step_ms: i64| {
        let points = u64::try_from(span / step_ms.max(1)).unwrap_or(0) + 1;
        (points > limit as u64).then(|| QueryError::TooLarge {
            points,
            limit,
            suggestion: u64::try_from(span / 1000 / (limit as i64 - 1).max(1)).unwrap_or(0) + 1,
        })
    };
    if let Some(step) = req.step {
        if let Some(e) = too_large(step) {
            return Err(e);
        }
        // Raw while it covers `from` (it also has the bucket in progress); else the coarsest
        // level no coarser than the step that covers it, else the finest that does.
        if covers(settings.retention_ms()) {
            return Ok((Source::Raw, Some(step)));
        }
        let level = settings
            .levels
            .iter()
            .rev()
            .find(|l| l.step_ms() <= step && covers(l.keep_ms()))
            .or_else(|| settings.levels.iter().find(|l| covers(l.keep_ms())))
            .or(settings.levels.last());
        return Ok((level.map_or(Source::Raw, Source::Rollup), Some(step)));
    }
    if covers(settings.retention_ms()) || settings.levels.is_empty() {
        // Every raw point, unless that is more than the limit (1 s intervals over a day).
        let auto = (span / 1000 >= limit as i64).then(|| (span / (limit as i64 - 1)).max(1000));
        return Ok((Source::Raw, auto.map(|ms| ceil_to(ms, 1000))));
    }
    let level = settings
        .levels
        .iter()
        .find(|l| covers(l.keep_ms()))
        .or(settings.levels.last())
        .expect("levels is not empty");
    if too_large(level.step_ms()).is_some() {
        let step = ceil_to(span / (limit as i64 - 1), level.step_ms());
        return Ok((Source::Rollup(level), Some(step)));
    }
    Ok((Source::Rollup(level), None))
}

/// `x` rounded up to a multiple of `m` (both positive).
const fn ceil_to(x: i64, m: i64) -> i64 {
    (x + m - 1) / m * m
}

fn matching_series(conn: &Connection, req: &Request) -> Result<Vec<SeriesRow>, QueryError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, labels FROM series WHERE metric = ?1 ORDER BY labels")?;
    let rows = stmt.query_map([&req.metric], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for row in rows {
        let (id, labels) = row?;
        let labels: BTreeMap<String, String> = serde_json::from_str(&labels).unwrap_or_default();
        names.extend(labels.keys().cloned());
        if req
            .matchers
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        {
            out.push(SeriesRow { id, labels });
        }
    }
    // A parameter that is no label of the metric is most likely a typo: say so.
    if let Some((k, _)) = req.matchers.iter().find(|(k, _)| !names.contains(k)) {
        return Err(bad(
            k,
            format!(
                "is neither a query parameter (metric, from, to, since, step, rate, agg, format) nor a label of `{}` (its labels: {})",
                req.metric,
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(out)
}

/// Stored samples of one series in `[from, to]`, plus the one just before `from` (for rates):
/// from compressed chunks and raw rows (a sample is in one of them), merged in time order.
pub fn raw_series(
    conn: &Connection,
    id: i64,
    from: i64,
    to: i64,
) -> rusqlite::Result<(Option<Obs>, Vec<Obs>)> {
    // The head: only its snapshots can hold raw samples.
    let head_from = super::compact::head_from(conn)?;
    let head = super::head::Reader::new(conn)?;
    let snapshot = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, Obs)> {
        Ok((
            r.get(0)?,
            Obs {
                ts: r.get(1)?,
                run: r.get(2)?,
                run_start: r.get(3)?,
                value: 0.0,
            },
        ))
    };
    let mut before = None;
    {
        let mut older = conn.prepare_cached(
            "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
             JOIN runs r ON r.id = sn.run_id
             WHERE sn.ts < ?1 AND sn.id >= ?2 ORDER BY sn.ts DESC, sn.id DESC",
        )?;
        let mut rows = older.query(params![from, head_from])?;
        while let Some(r) = rows.next()? {
            let (sn, obs) = snapshot(r)?;
            if let Some(value) = head.value(sn, id)? {
                before = Some(Obs { value, ..obs });
                break;
            }
        }
    }
    let mut raw = Vec::new();
    {
        let mut inside = conn.prepare_cached(
            "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
             JOIN runs r ON r.id = sn.run_id
             WHERE sn.ts BETWEEN ?1 AND ?2 AND sn.id >= ?3 ORDER BY sn.ts, sn.id",
        )?;
        let mut rows = inside.query(params![from, to, head_from])?;
        while let Some(r) = rows.next()? {
            let (sn, obs) = snapshot(r)?;
            if let Some(value) = head.value(sn, id)? {
                raw.push(Obs { value, ..obs });
            }
        }
    }
    let (chunk_before, mut points) = super::compact::series(conn, id, from, to, before.is_none())?;
    let before = match (before, chunk_before) {
        (Some(a), Some(b)) => Some(if a.ts >= b.ts { a } else { b }),
        (a, b) => a.or(b),
    };
    if points.is_empty() {
        return Ok((before, raw));
    }
    points.extend(raw);
    points.sort_by_key(|o| o.ts);
    Ok((before, points))
}

/// A series' stored samples in a range, and the one before it (for rates).
type Raw = (Option<Obs>, Vec<Obs>);

/// Per series id (integers: a fast hash).
type ById = std::collections::HashMap<i64, Raw, foldhash::fast::RandomState>;

/// The stored samples of many series over a range at once: one range scan per snapshot of the
/// raw head over the series' span of ids, and the chunks of each window the range touches read
/// once, instead of lookups per series and snapshot. `None` for a few series (the per-series
/// path is as good). The sample before `from` (wanted with `need_before`, for rates) comes from
/// the snapshot before it; a series missing there gets it the per-series way. Answers are the
/// per-series path's (tested).
fn bulk(
    conn: &Connection,
    range: &Range,
    ids: &[i64],
    need_before: bool,
) -> rusqlite::Result<Option<ById>> {
    if ids.len() < 8 {
        return Ok(None);
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    let Range {
        from,
        to,
        previous,
        ref inside,
        head_from,
    } = *range;
    // Per series (in `sorted` order): the sample before `from`, and those inside.
    let mut out: Vec<Raw> = sorted
        .iter()
        .map(|_| (None, Vec::with_capacity(inside.len())))
        .collect();
    // Compressed windows first (older than any raw row of a series); the window before `from`
    // only for a sample before it that is not in the head.
    let since = match previous {
        Some(p) if need_before && p.0 < head_from => p.1,
        _ => from,
    };
    let mut at = Cursor::default();
    super::compact::chunks_of(
        conn,
        since,
        to,
        |id| sorted.binary_search(&id).is_ok(),
        (lo, hi),
        since,
        |series, obs| {
            if let Some(i) = at.find(&sorted, series) {
                if obs.ts < from {
                    out[i].0 = Some(obs);
                } else if obs.ts <= to {
                    out[i].1.push(obs);
                }
            }
        },
    )?;
    let head = super::head::Reader::new(conn)?;
    for (n, (sn, ts, run, run_start)) in previous.iter().chain(inside).enumerate() {
        if *sn < head_from {
            continue;
        }
        let is_before = previous.is_some() && n == 0;
        let mut at = Cursor::default();
        head.read(*sn, lo, hi, |series, value| {
            let Some(i) = at.find(&sorted, series) else {
                return;
            };
            let obs = Obs {
                ts: *ts,
                value,
                run: *run,
                run_start: *run_start,
            };
            if is_before {
                out[i].0 = Some(obs);
            } else {
                out[i].1.push(obs);
            }
        })?;
    }
    let mut by_id = ById::default();
    for (id, mut entry) in sorted.into_iter().zip(out) {
        entry.1.sort_by_key(|o| o.ts);
        if need_before && entry.0.is_none() {
            entry.0 = raw_series(conn, id, from, from - 1)?.0;
        }
        by_id.insert(id, entry);
    }
    Ok(Some(by_id))
}

/// A snapshot: id, time, run, run start.
type Snap = (i64, i64, i64, i64);

/// The snapshots of a query's range, read once for all its batches of series: the one before
/// it, those inside, and the first that may have raw samples.
struct Range {
    from: i64,
    to: i64,
    previous: Option<Snap>,
    inside: Vec<Snap>,
    head_from: i64,
}

impl Range {
    fn read(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Self> {
        let snapshot = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Snap> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        };
        let previous = conn
            .prepare_cached(
                "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
                 JOIN runs r ON r.id = sn.run_id WHERE sn.ts < ?1 ORDER BY sn.ts DESC LIMIT 1",
            )?
            .query_row([from], snapshot)
            .optional()?;
        let inside = conn
            .prepare_cached(
                "SELECT sn.id, sn.ts, sn.run_id, r.started_at FROM snapshots sn
                 JOIN runs r ON r.id = sn.run_id WHERE sn.ts BETWEEN ?1 AND ?2
                 ORDER BY sn.ts, sn.id",
            )?
            .query_map(params![from, to], snapshot)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Self {
            from,
            to,
            previous,
            inside,
            head_from: super::compact::head_from(conn)?,
        })
    }
}

/// Finds ids in a sorted list when they mostly come in increasing order (a block's members,
/// one snapshot after another): a step forward from the last one found, else a binary search.
#[derive(Default)]
struct Cursor(usize);

impl Cursor {
    fn find(&mut self, sorted: &[i64], id: i64) -> Option<usize> {
        match sorted.get(self.0) {
            Some(&x) if x == id => {}
            Some(&x) if x < id && sorted.get(self.0 + 1).is_some_and(|&y| y >= id) => {
                self.0 += 1;
            }
            _ => self.0 = sorted.partition_point(|&x| x < id),
        }
        (sorted.get(self.0) == Some(&id)).then_some(self.0)
    }
}

fn raw_points(raw: Raw, req: &Request, counter: bool, step: Option<i64>) -> Vec<(f64, f64)> {
    let (before, points) = raw;
    let mut prev = if req.rate { before } else { None };
    let Some(step) = step else {
        let mut out = Vec::with_capacity(points.len());
        for p in points {
            let value = if req.rate {
                let rate = prev
                    .as_ref()
                    .and_then(|q| rollup::counter_step(q, &p))
                    .filter(|(_, secs)| *secs > 0.0)
                    .map(|(inc, secs)| inc / secs);
                prev = Some(p);
                match rate {
                    Some(r) => r,
                    None => continue,
                }
            } else {
                p.value
            };
            out.push((crate::time::ms_to_s(p.ts), value));
        }
        return out;
    };
    let mut slots: BTreeMap<i64, Bucket> = BTreeMap::new();
    for p in points {
        let slot = slots.entry(rollup::bucket_start(p.ts, step)).or_default();
        rollup::feed(slot, counter, prev.as_ref(), &p);
        prev = Some(p);
    }
    values(slots, req, counter)
}

fn rollup_points(
    conn: &Connection,
    id: i64,
    level: &Level,
    req: &Request,
    counter: bool,
    step: Option<i64>,
) -> rusqlite::Result<Vec<(f64, f64)>> {
    let width = step.unwrap_or(level.step_ms()).max(level.step_ms());
    let mut slots: BTreeMap<i64, Bucket> = BTreeMap::new();
    // One lookup per bucket start in the range (the caller bounded their number): the blocks
    // are keyed by start first, so that a bucket's flush appends.
    let mut start = rollup::bucket_start(req.from, level.step_ms());
    while start <= req.to {
        if let Some(b) = super::buckets::read(conn, level.step_s(), start, id)? {
            slots
                .entry(rollup::bucket_start(start, width))
                .or_default()
                .merge(&b);
        }
        start += level.step_ms();
    }
    Ok(values(slots, req, counter))
}

/// One value per bucket, by the aggregation asked for.
fn values(slots: BTreeMap<i64, Bucket>, req: &Request, counter: bool) -> Vec<(f64, f64)> {
    slots
        .into_iter()
        .filter_map(|(start, b)| {
            let v = match (counter, req.rate, req.agg) {
                (true, true, Agg::Min) => (b.n > 0).then_some(b.min)?,
                (true, true, Agg::Max) => (b.n > 0).then_some(b.max)?,
                (true, true, _) => (b.seconds > 0.0).then(|| b.increase / b.seconds)?,
                (true, false, _) | (false, _, Agg::Last) => b.last,
                (false, _, Agg::Min) => b.min,
                (false, _, Agg::Max) => b.max,
                (false, _, Agg::Mean) => b.mean()?,
            };
            (b.samples > 0).then_some((crate::time::ms_to_s(start), v))
        })
        .collect()
}

/// The answer as CSV: `timestamp,time,metric,<label columns…>,value`, one row per point.
pub fn to_csv(a: &Answer) -> String {
    let mut label_names: Vec<&str> = a
        .series
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    label_names.sort_unstable();
    label_names.dedup();
    let mut out = String::from("timestamp,time,metric");
    for l in &label_names {
        out.push(',');
        out.push_str(&csv_field(l));
    }
    out.push_str(",value\n");
    for s in &a.series {
        for (ts, v) in &s.samples {
            let _ = write!(
                out,
                "{ts},{},{}",
                crate::time::rfc3339(*ts),
                csv_field(&s.metric)
            );
            for l in &label_names {
                out.push(',');
                out.push_str(&csv_field(s.labels.get(*l).map_or("", String::as_str)));
            }
            let _ = writeln!(out, ",{v}");
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
