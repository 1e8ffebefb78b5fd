//! The series of one snapshot, read back from the agent's own OpenMetrics exposition, so that
//! history keeps exactly the names and labels `/metrics` shows. Histogram buckets and `_created`
//! samples are left out (see the README: the duration distribution lives in `/metrics`).
use std::collections::BTreeMap;

/// Counter or gauge, as history treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cumulative: rates and increases apply, resets are detected.
    Counter,
    Gauge,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "counter" {
            Self::Counter
        } else {
            Self::Gauge
        }
    }
}

/// A metric family's description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Family<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub unit: &'a str,
    pub help: &'a str,
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Point<'a> {
    /// `name{labels}` exactly as exposed: the cache key of the series.
    pub key: &'a str,
    /// Sample name (`…_total`, `…_sum`, `…_count`, `…_info`, or the family name).
    pub name: &'a str,
    /// Inside the braces, escaped as exposed; empty without labels.
    pub labels: &'a str,
    pub kind: Kind,
    /// Index into the families returned with the points.
    pub family: usize,
    pub value: f64,
}

/// Splits an exposition into its families and the points history keeps.
pub fn parse(text: &str) -> (Vec<Family<'_>>, Vec<Point<'_>>) {
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut points = Vec::new();
    for line in text.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let (what, rest) = meta.split_once(' ').unwrap_or((meta, ""));
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if what == "HELP" || families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name,
                    ..Family::default()
                });
            }
            let f = families.last_mut().expect("pushed above");
            match what {
                "HELP" => f.help = value,
                "TYPE" => f.kind = value,
                "UNIT" => f.unit = value,
                _ => {}
            }
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if !value.is_finite() {
            continue;
        }
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or(l)),
            None => (key, ""),
        };
        let Some(fi) = families.len().checked_sub(1) else {
            continue;
        };
        let f = &families[fi];
        let suffix = name.strip_prefix(f.name).unwrap_or(name);
        let kind = match (f.kind, suffix) {
            (_, "_bucket" | "_created") => continue,
            ("counter", _) | ("histogram" | "summary", "_sum" | "_count") => Kind::Counter,
            _ => Kind::Gauge,
        };
        points.push(Point {
            key,
            name,
            labels,
            kind,
            family: fi,
            value,
        });
    }
    (families, points)
}

/// Label pairs of an exposed label set (`a="x",b="y\"z"`), unescaped and sorted by name.
pub fn labels(raw: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = raw;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP moonfrp_tunnel_receive_bytes IP bytes.\n\
# TYPE moonfrp_tunnel_receive_bytes counter\n\
# UNIT moonfrp_tunnel_receive_bytes bytes\n\
moonfrp_tunnel_receive_bytes_total{tunnel=\"a \\\"q\\\"\",port=\"6000\",proto=\"tcp\"} 1234\n\
# HELP moonfrp_tunnel_connection_duration_seconds Durations.\n\
# TYPE moonfrp_tunnel_connection_duration_seconds histogram\n\
# UNIT moonfrp_tunnel_connection_duration_seconds seconds\n\
moonfrp_tunnel_connection_duration_seconds_sum{tunnel=\"a\"} 2.5\n\
moonfrp_tunnel_connection_duration_seconds_count{tunnel=\"a\"} 3\n\
moonfrp_tunnel_connection_duration_seconds_bucket{tunnel=\"a\",le=\"0.001\"} 0\n\
# HELP moonfrp_system_load1 Load.\n\
# TYPE moonfrp_system_load1 gauge\n\
moonfrp_system_load1 0.25\n\
moonfrp_system_load1 NaN\n\
# EOF\n";

    #[test]
    fn keeps_counters_gauges_and_histogram_totals_but_not_buckets() {
        let (families, points) = parse(TEXT);
        let got: Vec<(&str, Kind, f64, &str)> = points
            .iter()
            .map(|p| (p.name, p.kind, p.value, families[p.family].unit))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "moonfrp_tunnel_receive_bytes_total",
                    Kind::Counter,
                    1234.0,
                    "bytes"
                ),
                (
                    "moonfrp_tunnel_connection_duration_seconds_sum",
                    Kind::Counter,
                    2.5,
                    "seconds"
                ),
                (
                    "moonfrp_tunnel_connection_duration_seconds_count",
                    Kind::Counter,
                    3.0,
                    "seconds"
                ),
                ("moonfrp_system_load1", Kind::Gauge, 0.25, ""),
            ]
        );
        assert_eq!(families[0].help, "IP bytes.");
        assert_eq!(
            points[0].key,
            "moonfrp_tunnel_receive_bytes_total{tunnel=\"a \\\"q\\\"\",port=\"6000\",proto=\"tcp\"}"
        );
    }

    #[test]
    fn unescapes_and_sorts_labels() {
        let l = labels(r#"tunnel="a \"q\" \\ b",port="6000",proto="tcp""#);
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("port", "6000"),
                ("proto", "tcp"),
                ("tunnel", r#"a "q" \ b"#)
            ]
        );
        assert!(labels("").is_empty());
    }
}
