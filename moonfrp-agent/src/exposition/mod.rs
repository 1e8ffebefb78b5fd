//! The text renderings of a snapshot's series: OpenMetrics 1.0 (what Prometheus asks for) and
//! the Prometheus text format 0.0.4 (everything else, and node_exporter's textfile collector).
//! Both are written straight from the typed series; numbers are formatted as the Prometheus
//! client libraries do (integers as integers, floats shortest-exact).
mod gzip;

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    sync::{Arc, Mutex, OnceLock, PoisonError, RwLock},
};

use bytes::Bytes;

use crate::series::{Family, Histogram, Kind, Labels, Sample, Series, Value};

/// The two formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text004,
}

/// Writes `s` as an escaped label value (`\`, `"` and line feeds).
fn label_value(out: &mut String, s: &str) {
    if !s.contains(['\\', '"', '\n']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes a HELP text: backslash and line feed escaped (and `"` in OpenMetrics).
fn help(out: &mut String, s: &str, format: Format) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// `a="x",b="y"`: a label set without its braces.
fn label_pairs(out: &mut String, labels: &Labels) {
    let mut sep = "";
    for (k, v) in labels.iter() {
        out.push_str(sep);
        out.push_str(k);
        out.push_str("=\"");
        label_value(out, v);
        out.push('"');
        sep = ",";
    }
}

/// The label sets one rendering has written already. A tunnel's series share one [`Labels`]
/// (one `Arc`, made per snapshot), so its set is escaped and written once and copied for each
/// of its ≈ 20 lines; the key is the `Arc`'s address, which stays the set's own while the
/// series are borrowed for the rendering. A set held once (a host series) is written in place.
#[derive(Default)]
struct Blocks {
    text: String,
    at: HashMap<usize, (u32, u32), foldhash::fast::RandomState>,
    /// The `le` values of the last histogram's bounds, by bucket index.
    les: Vec<(f64, String)>,
}

impl Blocks {
    /// `{a="x",b="y"}`, or nothing without labels.
    fn write(&mut self, out: &mut String, labels: &Labels) {
        if !labels.is_empty() {
            out.push('{');
            self.pairs(out, labels);
            out.push('}');
        }
    }

    /// `{le="…",a="x"}` for bucket `i` of a histogram, bounded above by `upper`.
    fn write_bucket(&mut self, out: &mut String, i: usize, upper: f64, labels: &Labels) {
        if self
            .les
            .get(i)
            .is_none_or(|(u, _)| u.to_bits() != upper.to_bits())
        {
            let le = crate::series::le_label(upper, &mut dtoa::Buffer::new()).to_owned();
            self.les.truncate(i);
            self.les.push((upper, le));
        }
        out.push_str("{le=\"");
        out.push_str(&self.les[i].1);
        out.push('"');
        if !labels.is_empty() {
            out.push(',');
            self.pairs(out, labels);
        }
        out.push('}');
    }

    fn pairs(&mut self, out: &mut String, labels: &Labels) {
        if Arc::strong_count(labels) == 1 {
            return label_pairs(out, labels);
        }
        let key = Arc::as_ptr(labels).cast::<()>() as usize;
        let text = &mut self.text;
        let (start, end) = *self.at.entry(key).or_insert_with(|| {
            let start = text.len();
            label_pairs(text, labels);
            (start as u32, text.len() as u32)
        });
        out.push_str(&self.text[start as usize..end as usize]);
    }
}

fn float(out: &mut String, v: f64) {
    if v.is_finite() {
        out.push_str(dtoa::Buffer::new().format(v));
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v > 0.0 {
        out.push_str("+Inf");
    } else {
        out.push_str("-Inf");
    }
}

fn value(out: &mut String, v: &Value) {
    match v {
        Value::Uint(n) => out.push_str(itoa::Buffer::new().format(*n)),
        Value::Int(n) => out.push_str(itoa::Buffer::new().format(*n)),
        Value::Float(x) => float(out, *x),
        Value::Histogram(_) => unreachable!("histograms are written bucket by bucket"),
    }
}

fn line(out: &mut String, blocks: &mut Blocks, name: &str, suffix: &str, l: &Labels, v: &Value) {
    out.push_str(name);
    out.push_str(suffix);
    blocks.write(out, l);
    out.push(' ');
    value(out, v);
    out.push('\n');
}

fn histogram(out: &mut String, blocks: &mut Blocks, name: &str, l: &Labels, h: &Histogram) {
    line(out, blocks, name, "_sum", l, &Value::Float(h.sum));
    line(out, blocks, name, "_count", l, &Value::Uint(h.count));
    for (i, (upper, cumulative)) in h.buckets.iter().enumerate() {
        out.push_str(name);
        out.push_str("_bucket");
        blocks.write_bucket(out, i, *upper, l);
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(*cumulative));
        out.push('\n');
    }
}

/// One sample of `f`: a line, or a histogram's lines.
fn sample(out: &mut String, blocks: &mut Blocks, f: &Family, s: &Sample) {
    let suffix = match f.kind {
        Kind::Counter => "_total",
        Kind::Info => "_info",
        Kind::Gauge | Kind::Histogram => "",
    };
    match &s.value {
        Value::Histogram(h) => histogram(out, blocks, &f.name, &s.labels, h),
        v => line(out, blocks, &f.name, suffix, &s.labels, v),
    }
}

/// The family's metadata lines. In 0.0.4 counters and infos are described under their sample
/// names (`…_total`, `…_info`, the latter as a gauge) and there is no `# UNIT`.
fn metadata(out: &mut String, f: &Family, format: Format) {
    let (suffix, ty) = match (format, f.kind) {
        (Format::OpenMetrics, Kind::Counter) => ("", "counter"),
        (Format::OpenMetrics, Kind::Info) => ("", "info"),
        (Format::Text004, Kind::Counter) => ("_total", "counter"),
        (Format::Text004, Kind::Info) => ("_info", "gauge"),
        (_, Kind::Gauge) => ("", "gauge"),
        (_, Kind::Histogram) => ("", "histogram"),
    };
    let _ = write!(out, "# HELP {}{suffix} ", f.name);
    help(out, f.help, format);
    let _ = writeln!(out, "\n# TYPE {}{suffix} {ty}", f.name);
    if let (Format::OpenMetrics, Some(unit)) = (format, f.unit) {
        let _ = writeln!(out, "# UNIT {} {}", f.name, unit.as_str());
    }
}

/// The series in `format`.
pub fn render(series: &Series, format: Format) -> String {
    let mut out = String::with_capacity(series.len() * 96 + 64);
    let mut blocks = Blocks::default();
    for f in &series.families {
        metadata(&mut out, f, format);
        for s in &f.samples {
            sample(&mut out, &mut blocks, f, s);
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// The latest gzip rendering in each format, shared by the snapshots of one agent: the next
/// snapshot's takes from it what did not change.
#[derive(Debug, Default)]
pub struct Reuse([Mutex<Option<gzip::Rendering>>; 2]);

/// One snapshot's series with their renderings, each made the first time it is asked for and
/// kept: every scrape of one snapshot gets the same bytes, and a snapshot nobody scrapes is
/// never rendered. A gzip rendering (what Prometheus always asks for) is made from the previous
/// snapshot's where that one's runs still hold ([`gzip`]), never from the plain text.
#[derive(Debug, Default)]
pub struct Published {
    pub series: Arc<Series>,
    rendered: [OnceLock<Bytes>; 4],
    reuse: Arc<Reuse>,
}

impl Published {
    /// A snapshot's series rendered on their own (nothing to take from a previous one).
    pub fn new(series: Arc<Series>) -> Self {
        Self::with_reuse(series, Arc::default())
    }

    fn with_reuse(series: Arc<Series>, reuse: Arc<Reuse>) -> Self {
        Self {
            series,
            rendered: Default::default(),
            reuse,
        }
    }

    /// The exposition in `format`, gzip-compressed if asked.
    pub fn bytes(&self, format: Format, gzip: bool) -> Bytes {
        let slot = usize::from(format == Format::Text004) * 2 + usize::from(gzip);
        self.rendered[slot]
            .get_or_init(|| {
                if gzip {
                    self.gzip(format)
                } else {
                    Bytes::from(render(&self.series, format))
                }
            })
            .clone()
    }

    fn gzip(&self, format: Format) -> Bytes {
        // One gzip rendering at a time per format: the lock is held while it is made.
        let mut latest = self.reuse.0[usize::from(format == Format::Text004)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = std::time::Instant::now();
        let r = gzip::render(&self.series, format, latest.as_ref());
        tracing::debug!(
            ?format,
            runs_taken = r.reused,
            runs_made = r.made,
            bytes = r.body.len(),
            took = ?started.elapsed(),
            "gzip rendering"
        );
        let body = r.body.clone();
        *latest = Some(r);
        body
    }
}

/// gzip at the fastest level: a few milliseconds for megabytes of exposition, which compresses
/// about tenfold anyway.
pub fn compress(raw: &[u8]) -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 8),
        flate2::Compression::fast(),
    );
    gz.write_all(raw)
        .and_then(|()| gz.finish())
        .map(Bytes::from)
        .expect("writing to memory cannot fail")
}

/// The latest snapshot's [`Published`], for `/metrics` and the textfile.
#[derive(Debug, Default)]
pub struct Current {
    latest: RwLock<Arc<Published>>,
    reuse: Arc<Reuse>,
}

impl Current {
    /// Starts with the series there are before the first snapshot.
    pub fn new(series: Series) -> Self {
        let reuse = Arc::<Reuse>::default();
        let first = Published::with_reuse(Arc::new(series), reuse.clone());
        Self {
            latest: RwLock::new(Arc::new(first)),
            reuse,
        }
    }

    /// Makes `series` the latest, and returns them as published.
    pub fn publish(&self, series: Arc<Series>) -> Arc<Published> {
        let p = Arc::new(Published::with_reuse(series, self.reuse.clone()));
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = p.clone();
        p
    }

    pub fn get(&self) -> Arc<Published> {
        self.latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::series::{Builder, Text, Unit};

    #[test]
    fn escapes_and_formats_as_the_client_libraries_do() {
        let mut b = Builder::default();
        b.counters(
            "c",
            "A \"help\" with \\ and\nbreak.",
            Some(Unit::Bytes),
            [([("tunnel", Text::of("a\"b\\c\nd"))], 3u64)],
        );
        b.gauge("g", "G.", None, 0.5);
        b.gauge("n", "N.", None, f64::NAN);
        b.info("i", "I.", [[("version", "1")]]);
        let s = b.build();
        assert_eq!(
            render(&s, Format::OpenMetrics),
            "# HELP c_bytes A \\\"help\\\" with \\\\ and\\nbreak.\n# TYPE c_bytes counter\n# UNIT c_bytes bytes\n\
             c_bytes_total{tunnel=\"a\\\"b\\\\c\\nd\"} 3\n# HELP g G.\n# TYPE g gauge\ng 0.5\n\
             # HELP n N.\n# TYPE n gauge\nn NaN\n# HELP i I.\n# TYPE i info\ni_info{version=\"1\"} 1\n# EOF\n"
        );
        assert_eq!(
            render(&s, Format::Text004),
            "# HELP c_bytes_total A \"help\" with \\\\ and\\nbreak.\n# TYPE c_bytes_total counter\n\
             c_bytes_total{tunnel=\"a\\\"b\\\\c\\nd\"} 3\n# HELP g G.\n# TYPE g gauge\ng 0.5\n\
             # HELP n N.\n# TYPE n gauge\nn NaN\n# HELP i_info I.\n# TYPE i_info gauge\ni_info{version=\"1\"} 1\n"
        );
    }

    #[test]
    fn a_label_set_shared_by_many_series_renders_as_one_made_for_each() {
        // One `Arc` per tunnel shared by every family (as the metrics builder makes them), with
        // values that need escaping, against the same sets made afresh for every series.
        let names = ["a", "b\"q", "c\\d\ne"];
        let set = |n: &str| -> Labels {
            Labels::from([
                ("tunnel", Text::from(n.to_owned())),
                ("proto", Text::Static("tcp")),
            ])
        };
        let build = |labels: &dyn Fn(usize) -> Labels| {
            let mut b = Builder::default();
            b.counters("c", "C.", None, (0..3).map(|i| (labels(i), i as u64)));
            b.gauges("g", "G.", None, (0..3).map(|i| (labels(i), 0.5)));
            b.histograms(
                "h",
                "H.",
                None,
                (0..3).map(|i| {
                    let buckets = vec![(0.25, i as u64), (4.0, 2), (f64::INFINITY, 3)];
                    (
                        labels(i),
                        Histogram {
                            sum: 1.5,
                            count: 3,
                            buckets,
                        },
                    )
                }),
            );
            b.build()
        };
        let shared: Vec<Labels> = names.iter().map(|n| set(n)).collect();
        let once = build(&|i| shared[i].clone());
        let afresh = build(&|i| set(names[i]));
        for format in [Format::OpenMetrics, Format::Text004] {
            let text = render(&once, format);
            assert_eq!(text, render(&afresh, format), "{format:?}");
            assert!(
                text.contains("h_bucket{le=\"0.25\",tunnel=\"b\\\"q\",proto=\"tcp\"} 1\n"),
                "{text}"
            );
            assert!(
                text.contains("c_total{tunnel=\"c\\\\d\\ne\",proto=\"tcp\"} 2\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn renderings_are_made_once_and_gzip_decodes_to_the_text() {
        // Many runs' worth of text, and a family without samples (its metadata only).
        let build = || {
            let mut b = Builder::default();
            b.counters(
                "c",
                "C.",
                None,
                (0..5_000u64).map(|i| ([("tunnel", Text::from(format!("t{i}")))], i * 7)),
            );
            b.gauges(
                "none",
                "No samples.",
                None,
                std::iter::empty::<([(&str, Text); 0], i64)>(),
            );
            b.gauge("g", "G.", None, 1i64);
            Arc::new(b.build())
        };
        for format in [Format::OpenMetrics, Format::Text004] {
            // gzip asked for first: the text is never kept.
            let streamed = Published::new(build());
            let gz = streamed.bytes(format, true);
            assert_eq!(gz.as_ptr(), streamed.bytes(format, true).as_ptr(), "cached");
            assert!(
                streamed.rendered[usize::from(format == Format::Text004) * 2]
                    .get()
                    .is_none()
            );
            let p = Published::new(build());
            let text = p.bytes(format, false);
            assert!(text.len() > 100_000, "{}", text.len());
            assert_eq!(text.as_ptr(), p.bytes(format, false).as_ptr(), "cached");
            assert_eq!(gunzip(&p.bytes(format, true)), text);
            assert_eq!(gunzip(&gz), text, "{format:?}");
            assert_eq!(streamed.bytes(format, false), text);
            assert!(String::from_utf8_lossy(&text).contains("# TYPE none gauge\n"));
        }
        assert!(
            Published::new(build())
                .bytes(Format::OpenMetrics, false)
                .ends_with(b"# EOF\n")
        );
    }

    /// gzip, checked as a client checks it: flate2's decoder compares the trailer's CRC-32 and
    /// length with what it decoded.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut back)
            .expect("a whole gzip member with a matching trailer");
        back
    }

    /// Tunnels `0..n` with a counter and a histogram each, and a gauge.
    fn tunnels(n: u64, bytes: impl Fn(u64) -> u64, sum: f64, zero: f64) -> Arc<Series> {
        let labels: Vec<Labels> = (0..n)
            .map(|i| {
                Labels::from([
                    ("tunnel", Text::from(format!("t\"{i}"))),
                    ("proto", Text::Static("tcp")),
                ])
            })
            .collect();
        let mut b = Builder::default();
        b.counters(
            "bytes",
            "B.",
            Some(Unit::Bytes),
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), bytes(i as u64))),
        );
        b.histograms(
            "d",
            "D.",
            Some(Unit::Seconds),
            labels.iter().enumerate().map(|(i, l)| {
                let i = i as u64;
                let buckets = vec![(0.5, i % 3), (2.0, i % 3 + 1), (f64::INFINITY, i % 3 + 2)];
                (
                    l.clone(),
                    Histogram {
                        sum,
                        count: i % 3 + 2,
                        buckets,
                    },
                )
            }),
        );
        b.gauge("zero", "Z.", None, zero);
        Arc::new(b.build())
    }

    #[test]
    fn a_snapshot_rendered_after_another_takes_its_unchanged_runs_and_decodes_to_its_text() {
        let base = |i: u64| i * 1_000;
        for format in [Format::OpenMetrics, Format::Text004] {
            let slot = usize::from(format == Format::Text004);
            let current = Current::default();
            // Taken and made runs of the latest gzip rendering; both 0 when it was streamed.
            let counts = |c: &Current| {
                let r = c.reuse.0[slot].lock().unwrap();
                let r = r.as_ref().unwrap();
                (r.reused, r.made)
            };
            let check = |p: &Published| {
                let text = p.bytes(format, false);
                assert_eq!(gunzip(&p.bytes(format, true)), text, "{format:?}");
                text
            };
            // The first rendering has nothing before it: one stream.
            check(&current.publish(tunnels(1_000, base, 1.25, 0.0)));
            assert_eq!(counts(&current), (0, 0));
            // The same values (other allocations): made of runs, so the next can take them;
            // 4 runs of counters, 32 of histograms, the gauge's.
            let seeded = current.publish(tunnels(1_000, base, 1.25, 0.0));
            check(&seeded);
            assert_eq!(counts(&current), (0, 37), "{format:?}");
            // Once more: every run is taken, and the bytes are the same.
            let same = current.publish(tunnels(1_000, base, 1.25, 0.0));
            assert_eq!(same.bytes(format, true), seeded.bytes(format, true));
            assert_eq!(counts(&current), (37, 0));

            // One tunnel's bytes moved, and the gauge went from 0 to -0 (which prints
            // differently though the two compare equal): their runs only are made anew.
            let moved = |i| base(i) + u64::from(i == 700);
            let next = current.publish(tunnels(1_000, moved, 1.25, -0.0));
            let text = check(&next);
            assert!(
                String::from_utf8_lossy(&text).contains("zero -0"),
                "{format:?}"
            );
            assert_eq!(counts(&current), (35, 2), "{format:?}");

            // A tunnel more, and tunnel 700 back: the counters' last run and the run with
            // tunnel 700 are made anew, and the histograms' last run.
            check(&current.publish(tunnels(1_001, base, 1.25, -0.0)));
            assert_eq!(counts(&current), (34, 3), "{format:?}");

            // Every tunnel moved: fewer than 2 runs in 5 are the previous ones, one stream.
            check(&current.publish(tunnels(1_001, |i| base(i) + 5, 2.5, -0.0)));
            assert_eq!(counts(&current), (0, 0), "{format:?}");
            // And with the host quiet again, runs are made for the next snapshot to take.
            check(&current.publish(tunnels(1_001, |i| base(i) + 5, 2.5, -0.0)));
            assert_eq!(counts(&current), (0, 37), "{format:?}");
        }
    }
}
