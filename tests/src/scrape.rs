//! The text exposition format as a test reads it.
/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed text-format scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses Prometheus text format (0.0.4); panics on a line it cannot read.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparseable sample line: {l}")))
            .collect();
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the one series named `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        });
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "{name}{labels:?} matches more than one series"
        );
        Some(first.value)
    }

    /// Like [`Self::get`] for a tunnel's series; panics if it is missing.
    pub fn tunnel(&self, tunnel: &str, name: &str) -> f64 {
        self.get(name, &[("tunnel", tunnel)])
            .unwrap_or_else(|| panic!("no {name}{{tunnel=\"{tunnel}\"}} in:\n{}", self.text))
    }

    /// How often the agent reached a bound on outside input
    /// (`moonfrp_agent_limit_reached_total{limit}`); panics if the series is missing.
    pub fn limit(&self, limit: &str) -> f64 {
        self.get("moonfrp_agent_limit_reached_total", &[("limit", limit)])
            .unwrap_or_else(|| panic!("no limit `{limit}` in:\n{}", self.text))
    }

    /// Asserts that `name{label="v"}` is `want` for each `v` of `values`.
    pub fn assert_each(&self, name: &str, label: &str, values: &[&str], want: f64) {
        for v in values {
            assert_eq!(
                self.get(name, &[(label, v)]),
                Some(want),
                "{name}{{{label}=\"{v}\"}}"
            );
        }
    }

    /// Every sample line that carries `label="value"`.
    pub fn with_label(&self, label: &str, value: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.labels.iter().any(|(k, v)| k == label && v == value))
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), Vec::new()),
        Some((name, rest)) => (name.to_owned(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').to_owned(), value));
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let m = Metrics::parse(
            "# HELP x y\nx_total{a=\"q\\\"uote\",b=\"2\"} 3\ny 1.5\nz{le=\"+Inf\"} 7\n",
        );
        assert_eq!(m.get("x_total", &[("a", "q\"uote")]), Some(3.0));
        assert_eq!(m.get("y", &[]), Some(1.5));
        assert_eq!(m.get("z", &[("le", "+Inf")]), Some(7.0));
        assert_eq!(m.get("x_total", &[("a", "nope")]), None);
    }
}
