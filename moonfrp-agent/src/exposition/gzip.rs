//! The gzip renderings. A rendering is made of runs where it can be: each family's samples in
//! runs of a fixed count, every run rendered and deflated on its own (a full flush after it:
//! nothing later refers back into it), so runs' compressed bytes can be laid one after another
//! and still be one deflate stream. A run whose family and samples are exactly those of the same
//! run in the previous rendering keeps its compressed bytes and its CRC: a big frps's idle
//! tunnels cost a comparison instead of a rendering and a compression. The checksum of the
//! whole text is combined from the runs' (`crc32fast`'s combine), never computed over it.
//!
//! Runs compress slower than one stream (each starts with an empty window, and each is a block
//! of its own): made from nothing they cost ≈ 1.6× the stream. So a rendering is made of runs
//! only when at least 2 in 5 of them ([`KEEP_RUNS`]) are the previous snapshot's; otherwise
//! (the first rendering, a busy host, tunnels added or removed in the middle) it is one stream,
//! 64 KiB of text at a time, and the next snapshot decides again against its series.
use std::{collections::HashMap, io::Write as _, ops::Range, sync::Arc};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::{Blocks, Format, metadata, sample};
use crate::series::{Family, Histogram, Kind, Labels, Sample, Series, Value};

/// Samples in one run of a plain family (a line each: ≈ 25 KiB of text).
const RUN: usize = 256;
/// Samples in one run of a histogram family (≈ 17 lines each).
const HISTOGRAM_RUN: usize = 32;
/// The share of runs (numerator, denominator) equal to the previous snapshot's from which a
/// rendering is made of runs.
const KEEP_RUNS: (usize, usize) = (2, 5);
/// A streamed rendering hands its text to the compressor in pieces of about this size, so the
/// whole text (2 MiB at 1,000 tunnels) is never held for it.
const PIECE: usize = 64 * 1024;

/// gzip's member header: deflate, no name or time, unknown OS (RFC 1952).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Samples `start..end` of family `family` (with its metadata when `start` is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    family: usize,
    start: usize,
    end: usize,
}

/// One run: a family's samples, or several small families whole, compressed into `at` of
/// the body.
#[derive(Debug)]
struct Run {
    segments: Vec<Segment>,
    /// CRC-32 and length of the run's text.
    crc: u32,
    len: u32,
    at: Range<usize>,
}

/// One gzip rendering of a set of series, with what it takes to reuse its runs.
#[derive(Debug)]
pub(super) struct Rendering {
    series: Arc<Series>,
    format: Format,
    /// Empty for a streamed rendering.
    runs: Vec<Run>,
    /// The whole gzip member: what a scrape is sent.
    pub(super) body: Bytes,
    /// Runs taken from the previous rendering, and runs made anew (both 0 when streamed).
    pub(super) reused: usize,
    pub(super) made: usize,
}

/// Equal, bit for bit where floats are concerned (`-0` and `0` print differently).
fn same_value(a: &Value, b: &Value) -> bool {
    let hist = |a: &Histogram, b: &Histogram| {
        a.sum.to_bits() == b.sum.to_bits()
            && a.count == b.count
            && a.buckets.len() == b.buckets.len()
            && a.buckets
                .iter()
                .zip(&b.buckets)
                .all(|(x, y)| x.0.to_bits() == y.0.to_bits() && x.1 == y.1)
    };
    match (a, b) {
        (Value::Uint(a), Value::Uint(b)) => a == b,
        (Value::Int(a), Value::Int(b)) => a == b,
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (Value::Histogram(a), Value::Histogram(b)) => hist(a, b),
        _ => false,
    }
}

/// Label sets known equal in this rendering, by sample index: a tunnel sits at the same index
/// in each of its families, so its set is compared once (by content: each snapshot makes its
/// own) and later families find the pair here.
#[derive(Default)]
struct SameLabels(Vec<(usize, usize)>);

impl SameLabels {
    fn check(&mut self, i: usize, new: &Labels, old: &Labels) -> bool {
        let pair = (
            Arc::as_ptr(new).cast::<()>() as usize,
            Arc::as_ptr(old).cast::<()>() as usize,
        );
        if self.0.get(i) == Some(&pair) || pair.0 == pair.1 {
            return true;
        }
        if **new != **old {
            return false;
        }
        if self.0.len() <= i {
            self.0.resize(i + 1, (0, 0));
        }
        self.0[i] = pair;
        true
    }
}

fn same_samples(new: &[Sample], old: &[Sample], start: usize, memo: &mut SameLabels) -> bool {
    new.len() == old.len()
        && new.iter().zip(old).enumerate().all(|(i, (n, o))| {
            same_value(&n.value, &o.value) && memo.check(start + i, &n.labels, &o.labels)
        })
}

fn same_metadata(a: &Family, b: &Family) -> bool {
    a.name == b.name && a.help == b.help && a.unit == b.unit && a.kind == b.kind
}

fn run_length(f: &Family) -> usize {
    if f.kind == Kind::Histogram {
        HISTOGRAM_RUN
    } else {
        RUN
    }
}

/// The runs of `series`: a family with half a run of samples or more is cut into runs of its
/// own at fixed places; smaller ones (host and agent families, a handful of samples each) are
/// gathered whole into runs of about the same size.
fn cut(series: &Series) -> Vec<Vec<Segment>> {
    let mut runs = Vec::new();
    let (mut gathered, mut weight) = (Vec::new(), 0);
    for (family, f) in series.families.iter().enumerate() {
        let per = run_length(f);
        let n = f.samples.len();
        if n * 2 >= per {
            if !gathered.is_empty() {
                runs.push(std::mem::take(&mut gathered));
                weight = 0;
            }
            for start in (0..n).step_by(per) {
                let end = (start + per).min(n);
                runs.push(vec![Segment { family, start, end }]);
            }
        } else {
            gathered.push(Segment {
                family,
                start: 0,
                end: n,
            });
            // A histogram's sample is as many lines as a run of it has samples fewer.
            weight += n.max(1) * (RUN / per);
            if weight >= RUN {
                runs.push(std::mem::take(&mut gathered));
                weight = 0;
            }
        }
    }
    if !gathered.is_empty() {
        runs.push(gathered);
    }
    runs
}

/// A run of the rendering to be made, and what the previous one has of it.
struct Planned<'a> {
    segments: Vec<Segment>,
    /// Its samples are the previous series' in a run cut the same way.
    same: bool,
    /// The previous rendering's run with those samples, when it was made of runs.
    kept: Option<&'a Run>,
}

/// The previous rendering's runs by where each starts (family name, first sample): their
/// segments, and their index when that rendering was made of runs.
type Before = HashMap<(String, usize), (Vec<Segment>, Option<usize>), foldhash::fast::RandomState>;

/// The runs of `series`, each compared with the run of `previous` that starts where it does
/// (the same family, the same first sample).
fn plan<'a>(series: &Series, previous: Option<&'a Rendering>) -> Vec<Planned<'a>> {
    let key = |s: &Series, seg: &Segment| (s.families[seg.family].name.clone(), seg.start);
    let mut before: Before = HashMap::default();
    if let Some(p) = previous {
        let runs: Vec<Vec<Segment>> = if p.runs.is_empty() {
            cut(&p.series)
        } else {
            p.runs.iter().map(|r| r.segments.clone()).collect()
        };
        for (i, segments) in runs.into_iter().enumerate() {
            let at = (!p.runs.is_empty()).then_some(i);
            before.insert(key(&p.series, &segments[0]), (segments, at));
        }
    }
    let mut memo = SameLabels::default();
    cut(series)
        .into_iter()
        .map(|segments| {
            let old = previous.zip(before.get(&key(series, &segments[0])));
            let same = old.is_some_and(|(p, (old_segments, _))| {
                old_segments.len() == segments.len()
                    && segments.iter().zip(old_segments).all(|(new, old)| {
                        let (f, of) =
                            (&series.families[new.family], &p.series.families[old.family]);
                        new.start == old.start
                            && new.end == old.end
                            && same_metadata(f, of)
                            && same_samples(
                                &f.samples[new.start..new.end],
                                &of.samples[old.start..old.end],
                                new.start,
                                &mut memo,
                            )
                    })
            });
            let kept = old
                .filter(|_| same)
                .and_then(|(p, (_, at))| p.runs.get((*at)?));
            Planned {
                segments,
                same,
                kept,
            }
        })
        .collect()
}

/// Deflates `input` onto `out` and flushes: `Full` ends it on a byte boundary with nothing
/// after it able to refer back into it (zlib's contract for a full flush: what follows
/// decompresses without what came before), so a run's bytes stand on their own; `Finish` ends
/// the stream.
fn deflate(c: &mut Compress, input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    let mut consumed = 0;
    loop {
        out.reserve(input.len() - consumed + 64);
        let before = c.total_in();
        let status = c
            .compress_vec(&input[consumed..], out, flush)
            .expect("deflating in memory cannot fail");
        consumed += usize::try_from(c.total_in() - before).expect("fits");
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // Flushed once the compressor stopped with room to spare.
            _ => consumed == input.len() && out.len() < out.capacity(),
        };
        if done {
            return;
        }
    }
}

fn tail(format: Format) -> &'static [u8] {
    if format == Format::OpenMetrics {
        b"# EOF\n"
    } else {
        b""
    }
}

/// Renders `series` in `format` as gzip, taking what it can from `previous`.
pub(super) fn render(
    series: &Arc<Series>,
    format: Format,
    previous: Option<&Rendering>,
) -> Rendering {
    let previous = previous.filter(|p| p.format == format);
    let planned = plan(series, previous);
    let same = planned.iter().filter(|p| p.same).count();
    if previous.is_none() || same * KEEP_RUNS.1 < planned.len() * KEEP_RUNS.0 {
        return streamed(series, format);
    }
    // Runs made anew are compressed into `fresh`; the body is then laid out at its exact size
    // (a body grown by doubling past 256 KiB would be mapped and unmapped at every snapshot).
    let mut fresh = Vec::new();
    let mut pieces: Vec<(bool, Range<usize>)> = Vec::with_capacity(planned.len() + 1);
    let mut crc = crc32fast::Hasher::new();
    let mut runs = Vec::with_capacity(planned.len());
    let (mut reused, mut made) = (0, 0);
    let mut c = Compress::new(Compression::fast(), false);
    let mut text = String::new();
    let mut blocks = Blocks::default();
    for p in planned {
        let (run_crc, len) = if let Some(r) = p.kept {
            pieces.push((true, r.at.clone()));
            reused += 1;
            (r.crc, r.len)
        } else {
            text.clear();
            for seg in &p.segments {
                let f = &series.families[seg.family];
                if seg.start == 0 {
                    metadata(&mut text, f, format);
                }
                for s in &f.samples[seg.start..seg.end] {
                    sample(&mut text, &mut blocks, f, s);
                }
            }
            let at = fresh.len();
            deflate(&mut c, text.as_bytes(), &mut fresh, FlushCompress::Full);
            pieces.push((false, at..fresh.len()));
            made += 1;
            (
                crc32fast::hash(text.as_bytes()),
                u32::try_from(text.len()).expect("a run is far below 4 GiB"),
            )
        };
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            run_crc,
            u64::from(len),
        ));
        runs.push(Run {
            segments: p.segments,
            crc: run_crc,
            len,
            at: 0..0,
        });
    }
    let tail = tail(format);
    let at = fresh.len();
    deflate(&mut c, tail, &mut fresh, FlushCompress::Finish);
    pieces.push((false, at..fresh.len()));
    crc.update(tail);
    let size = HEADER.len() + pieces.iter().map(|(_, r)| r.len()).sum::<usize>() + 8;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(&HEADER);
    let kept = previous.map_or(&[][..], |p| &p.body[..]);
    for (i, (taken, r)) in pieces.into_iter().enumerate() {
        let at = body.len();
        body.extend_from_slice(if taken { &kept[r] } else { &fresh[r] });
        if let Some(run) = runs.get_mut(i) {
            run.at = at..body.len();
        }
    }
    let total = crc.total_len();
    body.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE: the text's length modulo 2^32.
    body.extend_from_slice(&(total as u32).to_le_bytes());
    debug_assert_eq!(body.len(), size);
    Rendering {
        series: series.clone(),
        format,
        runs,
        body: Bytes::from(body),
        reused,
        made,
    }
}

/// The whole rendering as one gzip stream, written 64 KiB of text at a time.
fn streamed(series: &Arc<Series>, format: Format) -> Rendering {
    // Exposition compresses about twelvefold: 9 bytes a sample is most of it.
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(series.len() * 9 + 64),
        Compression::fast(),
    );
    let mut piece = String::with_capacity(PIECE + 4096);
    let mut blocks = Blocks::default();
    let mut spill = |piece: &mut String| {
        gz.write_all(piece.as_bytes())
            .expect("writing to memory cannot fail");
        piece.clear();
    };
    for f in &series.families {
        metadata(&mut piece, f, format);
        for s in &f.samples {
            sample(&mut piece, &mut blocks, f, s);
            if piece.len() >= PIECE {
                spill(&mut piece);
            }
        }
    }
    piece.push_str(std::str::from_utf8(tail(format)).expect("ASCII"));
    spill(&mut piece);
    Rendering {
        series: series.clone(),
        format,
        runs: Vec::new(),
        body: Bytes::from(gz.finish().expect("writing to memory cannot fail")),
        reused: 0,
        made: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{Builder, Text};

    #[test]
    fn runs_cover_every_sample_once_in_order_and_gather_small_families() {
        let mut b = Builder::default();
        b.counters(
            "big",
            "B.",
            None,
            (0..1_000u64).map(|i| ([("tunnel", Text::from(format!("t{i}")))], i)),
        );
        for i in 0..300 {
            b.gauge(&format!("small_{i}"), "S.", None, 1i64);
        }
        b.gauges(
            "empty",
            "E.",
            None,
            std::iter::empty::<([(&str, Text); 0], i64)>(),
        );
        b.histograms(
            "h",
            "H.",
            None,
            (0..3u64).map(|i| {
                let buckets = vec![(1.0, i), (f64::INFINITY, i)];
                (
                    [("tunnel", Text::from(format!("t{i}")))],
                    Histogram {
                        sum: 0.0,
                        count: i,
                        buckets,
                    },
                )
            }),
        );
        let s = b.build();
        let runs = cut(&s);
        let flat: Vec<Segment> = runs.iter().flatten().copied().collect();
        let whole: Vec<Segment> = s
            .families
            .iter()
            .enumerate()
            .flat_map(|(family, f)| {
                let n = f.samples.len();
                let per = run_length(f);
                if n * 2 >= per {
                    (0..n)
                        .step_by(per)
                        .map(|start| Segment {
                            family,
                            start,
                            end: (start + per).min(n),
                        })
                        .collect::<Vec<_>>()
                } else {
                    vec![Segment {
                        family,
                        start: 0,
                        end: n,
                    }]
                }
            })
            .collect();
        assert_eq!(flat, whole);
        // The big family in 4 runs of its own; 300 one-sample families, an empty one and a
        // small histogram (3 samples of 8 lines' weight) in 2.
        assert_eq!(runs.len(), 4 + 2, "{runs:?}");
        assert!(runs[..4].iter().all(|r| r.len() == 1 && r[0].family == 0));
    }
}
