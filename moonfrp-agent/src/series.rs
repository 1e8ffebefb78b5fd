//! The typed series of one snapshot: families (name, help, unit, type) with samples (label sets
//! and values; histograms as typed buckets). Built once per interval by [`crate::metrics`] from
//! the snapshot; history, the alert rules, the textfile and `/metrics` all read this. Text is
//! only ever an output ([`crate::exposition`]): nothing in the agent parses it back.
use std::{fmt, ops::Deref, sync::Arc};

/// A label value: a static word or a shared string (a tunnel's name and port are made once per
/// snapshot and shared by all its series). Compared and hashed by its text, whichever the
/// variant: label sets key alert instances and history series across snapshots.
#[derive(Clone, Debug)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl Text {
    /// A copy of a string that lives shorter than the series.
    pub fn of(s: &str) -> Self {
        Self::Shared(Arc::from(s))
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self::Shared(Arc::from(s))
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Self::Shared(s)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// Label names and values, in the order they are exposed; shared (a tunnel's `tunnel`, `port`
/// and `proto` are one allocation for all its series).
pub type Labels = Arc<[(&'static str, Text)]>;

/// What a family measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cumulative; exposed as `<name>_total`.
    Counter,
    Gauge,
    /// Always 1, the labels are the information; exposed as `<name>_info`.
    Info,
    /// Exposed as `<name>_sum`, `<name>_count` and `<name>_bucket{le}`.
    Histogram,
}

/// Base units, appended to the family name (`…_seconds`, `…_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
}

impl Unit {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Seconds => "seconds",
            Self::Bytes => "bytes",
        }
    }
}

/// A histogram's state: upper bounds with the count of observations up to each (cumulative;
/// the last bound is +Inf), their sum and count.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

/// A bucket's `le` label value, as every output writes it: `+Inf` for the last bound.
pub fn le_label(upper: f64, buf: &mut dtoa::Buffer) -> &str {
    if upper.is_infinite() {
        "+Inf"
    } else {
        buf.format(upper)
    }
}

/// A sample's value, typed as it is exposed (integers print without a decimal point).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Histogram(Box<Histogram>),
}

impl Value {
    /// The number history and the alert rules see (a histogram has none: its `_sum` and
    /// `_count` are read through [`Family::points`]).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Uint(v) => Some(*v as f64),
            Self::Int(v) => Some(*v as f64),
            Self::Float(v) => Some(*v),
            Self::Histogram(_) => None,
        }
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Uint(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

/// One label set and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: Value,
}

/// A metric family.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The name with its unit (`moonfrp_tunnel_receive_bytes`), without the type's suffix.
    pub name: String,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

/// A number history and the alert rules see: one sample name (`…_total`, `…_info`, `…_sum`,
/// `…_count` or the family's own name), its labels, and whether it is cumulative.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub counter: bool,
    pub value: f64,
}

impl Family {
    /// The sample name of a counter (`_total`), an info (`_info`) or a gauge.
    pub fn sample_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Info => format!("{}_info", self.name),
            Kind::Gauge | Kind::Histogram => self.name.clone(),
        }
    }

    /// Every number of the family as a point: one per sample, and a histogram's `_sum` and
    /// `_count` (its buckets are exposition only). Non-finite values are left out. `names`
    /// holds the sample names (`sample_name()`, or `_sum` and `_count` for a histogram).
    pub fn points<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = Point<'a>> + 'a {
        self.samples.iter().flat_map(move |s| {
            let pairs: [Option<(&str, f64)>; 2] = match &s.value {
                Value::Histogram(h) => [
                    Some((names[0].as_str(), h.sum)),
                    Some((names[1].as_str(), h.count as f64)),
                ],
                v => [v.as_f64().map(|x| (names[0].as_str(), x)), None],
            };
            let counter = matches!(self.kind, Kind::Counter | Kind::Histogram);
            pairs
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.is_finite())
                .map(move |(name, value)| Point {
                    name,
                    labels: &s.labels,
                    counter,
                    value,
                })
        })
    }

    /// The sample names [`Self::points`] uses.
    pub fn point_names(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => vec![format!("{}_sum", self.name), format!("{}_count", self.name)],
            _ => vec![self.sample_name()],
        }
    }
}

/// All families of one snapshot, in exposition order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub families: Vec<Family>,
    /// Per family, the sample names of its points (computed once).
    names: Vec<Vec<String>>,
}

impl Series {
    pub fn new(families: Vec<Family>) -> Self {
        let names = families.iter().map(Family::point_names).collect();
        Self { families, names }
    }

    /// Every point of every family, with its family (for help and unit).
    pub fn points(&self) -> impl Iterator<Item = (&Family, Point<'_>)> {
        self.families
            .iter()
            .zip(&self.names)
            .flat_map(|(f, names)| f.points(names).map(move |p| (f, p)))
    }

    /// The points whose sample name `wanted` accepts; families with no such name are skipped
    /// whole.
    pub fn points_where<'a>(
        &'a self,
        wanted: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = Point<'a>> + 'a {
        self.families
            .iter()
            .zip(&self.names)
            .filter(move |(_, names)| names.iter().any(|n| wanted(n)))
            .flat_map(|(f, names)| f.points(names))
    }

    /// Number of samples (a histogram counts as one).
    pub fn len(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects families; the helpers take rows of (labels, value).
#[derive(Debug, Default)]
pub struct Builder {
    families: Vec<Family>,
}

/// Anything that gives a label set.
pub trait IntoLabels {
    fn into_labels(self) -> Labels;
}

impl<T: Into<Text>, const N: usize> IntoLabels for [(&'static str, T); N] {
    fn into_labels(self) -> Labels {
        self.into_iter().map(|(k, v)| (k, v.into())).collect()
    }
}

impl IntoLabels for Labels {
    fn into_labels(self) -> Labels {
        self
    }
}

impl IntoLabels for Vec<(&'static str, Text)> {
    fn into_labels(self) -> Labels {
        self.into()
    }
}

/// `base` with more labels after it.
pub fn extend(base: &Labels, more: impl IntoIterator<Item = (&'static str, Text)>) -> Labels {
    base.iter().cloned().chain(more).collect()
}

/// A family name with its unit appended (unless it ends with it already).
fn with_unit(name: &str, unit: Option<Unit>) -> String {
    match unit {
        Some(u) if !name.ends_with(u.as_str()) => format!("{name}_{}", u.as_str()),
        _ => name.to_owned(),
    }
}

impl Builder {
    /// A family of `kind`, one sample per row.
    pub fn family<L: IntoLabels, V: Into<Value>>(
        &mut self,
        kind: Kind,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (L, V)>,
    ) {
        self.families.push(Family {
            name: with_unit(name, unit),
            help,
            unit,
            kind,
            samples: rows
                .into_iter()
                .map(|(l, v)| Sample {
                    labels: l.into_labels(),
                    value: v.into(),
                })
                .collect(),
        });
    }

    /// Counters, one per label set.
    pub fn counters<L: IntoLabels, V: Into<Value>>(
        &mut self,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(Kind::Counter, name, help, unit, rows);
    }

    /// Gauges, one per label set.
    pub fn gauges<L: IntoLabels, V: Into<Value>>(
        &mut self,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(Kind::Gauge, name, help, unit, rows);
    }

    /// One counter without labels.
    pub fn counter(
        &mut self,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        v: impl Into<Value>,
    ) {
        self.counters(name, help, unit, [(Labels::from([]), v)]);
    }

    /// One gauge without labels.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        v: impl Into<Value>,
    ) {
        self.gauges(name, help, unit, [(Labels::from([]), v)]);
    }

    /// An info family: one sample of value 1 per label set.
    pub fn info<L: IntoLabels>(
        &mut self,
        name: &str,
        help: &'static str,
        rows: impl IntoIterator<Item = L>,
    ) {
        self.family(
            Kind::Info,
            name,
            help,
            None,
            rows.into_iter().map(|l| (l, Value::Uint(1))),
        );
    }

    /// A histogram family, one per label set.
    pub fn histograms<L: IntoLabels>(
        &mut self,
        name: &str,
        help: &'static str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (L, Histogram)>,
    ) {
        self.family(
            Kind::Histogram,
            name,
            help,
            unit,
            rows.into_iter()
                .map(|(l, h)| (l, Value::Histogram(Box::new(h)))),
        );
    }

    pub fn build(self) -> Series {
        Series::new(self.families)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_name_samples_as_exposed() {
        let mut b = Builder::default();
        b.counters(
            "moonfrp_tunnel_receive",
            "h",
            Some(Unit::Bytes),
            [([("tunnel", "a")], 5u64)],
        );
        b.info("moonfrp_tunnel", "h", [[("tunnel", "a")]]);
        b.gauge("moonfrp_load1", "h", None, f64::NAN);
        b.histograms(
            "moonfrp_d",
            "h",
            Some(Unit::Seconds),
            [(
                [("tunnel", "a")],
                Histogram {
                    sum: 1.5,
                    count: 3,
                    buckets: vec![(1.0, 2), (f64::INFINITY, 3)],
                },
            )],
        );
        let s = b.build();
        let points: Vec<(String, bool, f64)> = s
            .points()
            .map(|(_, p)| (p.name.to_owned(), p.counter, p.value))
            .collect();
        assert_eq!(
            points,
            [
                ("moonfrp_tunnel_receive_bytes_total".to_owned(), true, 5.0),
                ("moonfrp_tunnel_info".to_owned(), false, 1.0),
                ("moonfrp_d_seconds_sum".to_owned(), true, 1.5),
                ("moonfrp_d_seconds_count".to_owned(), true, 3.0),
            ],
            "NaN is left out, histogram buckets are not points"
        );
        assert_eq!(s.len(), 4);
    }
}
