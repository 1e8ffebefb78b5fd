//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): one per kind of outside
//! input, each feeding bytes to the agent's own parser and checking more than "no panic" —
//! names from outside come out printable and bounded, error messages stay printable and never
//! quote a secret, a rendering parses back to the same series, sizes stay bounded.
//!
//! The first byte of an input often picks which parser of a kind runs (the seed corpus in
//! `fuzz/corpus/<target>/` starts with it); the rest is the input itself.
use std::{collections::BTreeMap, path::Path};

use crate::untrusted::{self, MAX_NAME_CHARS, MAX_TEXT_CHARS, MAX_WORD_CHARS};

/// Splits off the selector byte.
fn pick(data: &[u8]) -> Option<(u8, &str)> {
    let (&first, rest) = data.split_first()?;
    Some((first, std::str::from_utf8(rest).ok()?))
}

/// `what` is printable on one line and at most `max` characters.
fn bounded_and_safe(what: &str, s: &str, max: usize) {
    assert!(
        !s.chars().any(untrusted::is_unsafe),
        "{what} has an unsafe character: {s:?}"
    );
    assert!(s.chars().count() <= max, "{what} longer than {max}: {s:?}");
}

/// A name as the agent keeps it: printable, bounded, never empty.
fn name_ok(s: &str) {
    assert!(!s.is_empty(), "empty name");
    bounded_and_safe("name", s, MAX_NAME_CHARS);
}

/// An error message: printable except its line breaks, bounded, and not quoting the value of
/// a line of `input` that sets a secret (unless that value also appears elsewhere).
fn error_ok(msg: &str, input: &str) {
    assert!(
        !msg.chars().any(|c| c != '\n' && untrusted::is_unsafe(c)),
        "error message has an unsafe character: {msg:?}"
    );
    assert!(
        msg.chars().count() <= 4_000,
        "error message of {} characters",
        msg.len()
    );
    for value in untrusted::secret_values(input) {
        if value.len() < 8 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let elsewhere = input
            .lines()
            .filter(|l| !untrusted::sets_secret(l))
            .any(|l| l.contains(value));
        assert!(
            elsewhere || !msg.contains(value),
            "error message quotes the secret {value:?}: {msg}"
        );
    }
}

/// frps/frpc config files in the four formats frp reads.
pub fn frp_config(data: &[u8]) {
    let Some((sel, text)) = pick(data) else {
        return;
    };
    let ext = ["toml", "yaml", "json", "ini"][usize::from(sel % 4)];
    let path = format!("/etc/frp/frpc.{ext}");
    match crate::frp::config::parse(Path::new(&path), text) {
        Ok(crate::frp::config::FrpConfig::Client(c)) => {
            for p in &c.proxies {
                name_ok(&p.name);
                bounded_and_safe("proxy type", &p.kind, MAX_WORD_CHARS);
            }
        }
        Ok(crate::frp::config::FrpConfig::Server(_)) => {}
        Err(e) => error_ok(&e.to_string(), text),
    }
}

/// Answers of the frps dashboard API (v1 in both key styles, v2, serverinfo) and frpc's admin
/// API.
pub fn frp_api(data: &[u8]) {
    use crate::frp::api;
    let Some((sel, body)) = pick(data) else {
        return;
    };
    let server = |proxies: &[api::ServerProxy]| {
        for p in proxies {
            name_ok(&p.name);
            bounded_and_safe("proxy type", &p.kind, MAX_WORD_CHARS);
            bounded_and_safe("status", &p.status, MAX_WORD_CHARS);
        }
    };
    let result = match sel % 4 {
        0 => api::parse_v1(["tcp", "udp", "http"][usize::from(sel / 4 % 3)], body)
            .map(|p| server(&p)),
        1 => api::parse_v2(body).map(|(p, _)| server(&p)),
        2 => api::parse_serverinfo(body)
            .map(|i| bounded_and_safe("version", &i.version, MAX_WORD_CHARS)),
        _ => api::parse_client_status(body).map(|proxies| {
            for p in proxies {
                name_ok(&p.name);
                bounded_and_safe("status", &p.status, MAX_WORD_CHARS);
                for t in [&p.err, &p.local_addr, &p.remote_addr] {
                    bounded_and_safe("text", t, MAX_TEXT_CHARS);
                }
            }
        }),
    };
    // Answers are not config files: they hold no secret of ours (the credentials go the other
    // way), so their errors need only be printable and bounded.
    if let Err(e) = result {
        error_ok(&e, "");
    }
}

/// `/proc` and `/sys` files the host collectors and the cgroup reader parse.
pub fn proc_files(data: &[u8]) {
    use crate::collect::{self, cgroups};
    let Some((sel, text)) = pick(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or_default();
    match sel % 12 {
        0 => drop(collect::cpu::parse(text, 100)),
        1 => drop(collect::memory::parse(text)),
        2 => drop(collect::host::parse(next(), next(), next())),
        3 => drop(collect::netdev::parse(text)),
        4 => drop(collect::netstat::parse(next(), next())),
        5 => drop(collect::disk::parse(text)),
        6 => drop(collect::filesystem::parse_mounts(text.as_bytes())),
        7 => drop(collect::systemd::parse(text)),
        8 => {
            let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
            if let Some(path) = collect::processes::config_from_args(&args) {
                assert!(
                    args.iter().any(|a| a.contains(&path)),
                    "{path} not from the args"
                );
            }
        }
        9 => {
            let _ = cgroups::stats::field(text, "usage_usec");
            let _ = cgroups::stats::number(text);
            let _ = cgroups::stats::pressure(text);
        }
        10 => {
            let _ = cgroups::stats::io_stat(text);
            let _ = cgroups::stats::blkio(text);
        }
        _ => {
            if let Some(c) = cgroups::containers::container_of(next(), next()) {
                assert!(c.id.len() == 64 && c.id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }
}

/// tracefs `format` files (every tracepoint the probes use) and the kernel's BTF.
pub fn tracefs_format(data: &[u8]) {
    use crate::ebpf::{btf, layout};
    let Some((sel, text)) = pick(data) else {
        return;
    };
    if sel % 2 == 1 {
        let _ = btf::offsets(&data[1..], "sk_buff", &[("head", 8), ("network_header", 2)]);
        return;
    }
    let f = layout::parse_format(text);
    let _ = layout::symbolic_value(&f.print_fmt, "NO_SOCKET");
    let built = layout::build(|_| Ok(text.to_owned()), || Ok(data.to_vec()));
    for problem in built.problems.values() {
        error_ok(&problem.to_string(), "");
    }
    for note in &built.notes {
        error_ok(note, "");
    }
}

/// `/proc/self/mountinfo`, as the agent reads it to find cgroup, tracefs and bpffs mounts.
pub fn mountinfo(data: &[u8]) {
    let _ = crate::sys::parse_mounts(data);
}

/// A `sock_diag` dump as the kernel would answer it.
pub fn sock_diag(data: &[u8]) {
    let mut out = Vec::new();
    let _ = crate::sockets::parse_dump(data, &mut out);
    assert!(
        out.len() <= data.len() / 16 + 1,
        "{} sockets from {} bytes",
        out.len(),
        data.len()
    );
}

/// Query strings and headers of the agent's own API.
pub fn http_query(data: &[u8]) {
    let Some((sel, q)) = pick(data) else { return };
    let now = 1_796_000_000_000;
    match sel % 6 {
        0 => drop(crate::history::query::Request::from_query(q, now)),
        1 => drop(crate::api::logs::LogQuery::parse(q, now)),
        2 => drop(crate::api::alerts::EventQuery::parse(q, now)),
        3 => drop(crate::server::peers_target("/api/v1/peers/web", q)),
        4 => drop(crate::server::accepts_gzip(Some(q))),
        _ => {
            let mut headers = hyper::HeaderMap::new();
            if let Ok(v) = hyper::header::HeaderValue::from_str(q) {
                headers.insert(hyper::header::AUTHORIZATION, v);
            }
            let _ = crate::server::access::basic_credentials(&headers);
        }
    }
}

/// The agent's config file: alert rules (expressions, matchers, thresholds), channels and
/// annotation templates, and everything else in it. Valid templates are rendered with hostile
/// label values, which must come out as they went in (no second expansion).
pub fn agent_config(data: &[u8]) {
    let Some((sel, text)) = pick(data) else {
        return;
    };
    if sel % 2 == 1 {
        if crate::alerts::config::check_template("t", text).is_ok() {
            let labels = BTreeMap::from([
                ("tunnel".to_owned(), "{{value}}\u{1b}[31m".to_owned()),
                ("alertname".to_owned(), "{{tunnel}}".to_owned()),
            ]);
            let out = crate::alerts::rules::render(text, &labels, 1.5, Some(2.0));
            let placeholders = text.matches("{{").count();
            assert!(
                out.len() <= text.len() + placeholders * 32,
                "{text:?} → {out:?}"
            );
        }
        return;
    }
    if let Err(e) = crate::config::Config::from_text(Path::new("/etc/moonfrp.toml"), text) {
        error_ok(&e.to_string(), text);
    }
}

/// The web config file (TLS, basic auth, headers).
pub fn web_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::server::web_config::from_text(Path::new("/etc/moonfrp/web.yml"), text) {
        error_ok(&e, text);
    }
}

/// History database rows: compressed sample chunks and rollup buckets, as read back from a
/// file that may have been damaged or planted.
pub fn history_rows(data: &[u8]) {
    use crate::history::{chunk, rollup};
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    if let Ok(points) = chunk::decode(1_796_000_000_000, usize::from(count), rest) {
        assert!(
            points.len() <= usize::from(count),
            "{} points for {count}",
            points.len()
        );
    }
    let _ = rollup::Bucket::decode(rest);
}

/// Label values (tunnel names as they arrive, before any escaping) rendered into both
/// exposition formats and parsed back by a parser of the format's rules written here, apart
/// from the renderer: the same series, every label value intact.
pub fn exposition(data: &[u8]) {
    use crate::{
        exposition::{Format, render},
        series::{Builder, Histogram, Text, Unit},
    };
    let text = String::from_utf8_lossy(data);
    let names: Vec<&str> = text.split('\0').take(16).collect();
    let mut b = Builder::default();
    let labels = |i: usize, n: &str| [("tunnel", Text::of(n)), ("port", Text::from(i.to_string()))];
    b.counters(
        "moonfrp_tunnel_receive",
        "Bytes received.",
        Some(Unit::Bytes),
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (labels(i, n), i as u64)),
    );
    b.histograms(
        "moonfrp_tunnel_connection_duration",
        "Durations.",
        Some(Unit::Seconds),
        names.iter().enumerate().map(|(i, n)| {
            let h = Histogram {
                sum: 1.5,
                count: 2,
                buckets: vec![(1.0, 1), (f64::INFINITY, 2)],
            };
            (labels(i, n), h)
        }),
    );
    let series = b.build();
    for format in [Format::OpenMetrics, Format::Text004] {
        let out = render(&series, format);
        let mut seen: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let parsed = sample_line(line);
            let Some((name, labels)) = parsed else {
                panic!("{format:?}: a line that does not parse: {line:?}");
            };
            seen.push((name, labels));
        }
        for (i, n) in names.iter().enumerate() {
            let want = vec![
                ("tunnel".to_owned(), (*n).to_owned()),
                ("port".to_owned(), i.to_string()),
            ];
            for metric in [
                "moonfrp_tunnel_receive_bytes_total",
                "moonfrp_tunnel_connection_duration_seconds_count",
            ] {
                assert!(
                    seen.iter().any(|(name, l)| name == metric && *l == want),
                    "{format:?}: {metric} {want:?} did not come back from:\n{out}"
                );
            }
        }
        assert_eq!(seen.len(), names.len() * 5, "{format:?}: samples");
    }
}

/// `name{label="value",…} value` by the text format's rules (names `[a-zA-Z_:][a-zA-Z0-9_:]*`,
/// label names `[a-zA-Z_][a-zA-Z0-9_]*`, values with `\\`, `\"` and `\n` escapes, no raw
/// line feed): the name and the label pairs, unescaped.
fn sample_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let is_name = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
    };
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if !is_name(c, name.is_empty()) {
            break;
        }
        name.push(c);
        chars.next();
    }
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if !(is_name(c, key.is_empty()) && c != ':') {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if key.is_empty() || chars.next()? != '=' || chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => value.push(match chars.next()? {
                        '\\' => '\\',
                        '"' => '"',
                        'n' => '\n',
                        _ => return None,
                    }),
                    '"' => break,
                    '\n' => return None,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                ',' => {}
                '}' => break,
                _ => return None,
            }
        }
    }
    if chars.next()? != ' ' {
        return None;
    }
    let value: String = chars.take_while(|c| *c != ' ').collect();
    (value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok()).then_some((name, labels))
}

/// One `[[alerts.rules]]` table, built from structure so the fuzzer reaches the rule checks
/// (plain bytes rarely make TOML that gets that far): names, metrics and operators from the
/// real sets or anything at all.
#[derive(Debug, arbitrary::Arbitrary)]
pub struct RuleInput {
    name: Choice,
    metrics: Vec<Choice>,
    matchers: Vec<(String, String)>,
    function: Choice,
    divide_by: Option<Choice>,
    op: Choice,
    warning: Option<f64>,
    critical: Option<f64>,
    for_: Option<Choice>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

/// A value taken from the set the checks accept (by index) or any string.
#[derive(Debug, arbitrary::Arbitrary)]
pub enum Choice {
    Known(u8),
    Any(String),
}

impl Choice {
    fn get(&self, known: &[&str]) -> String {
        match self {
            Self::Known(i) => known[usize::from(*i) % known.len()].to_owned(),
            Self::Any(s) => s.clone(),
        }
    }
}

/// Alert rules as the config file gives them, then the rules' annotations rendered.
pub fn alert_rules(rules: &[RuleInput]) {
    use crate::metrics::names::KNOWN;
    let table = |pairs: &[(String, String)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect(),
        )
    };
    let rows: Vec<toml::Value> = rules
        .iter()
        .take(8)
        .map(|r| {
            let mut t = toml::Table::new();
            t.insert(
                "name".into(),
                r.name.get(&["TunnelBusy", "TunnelDown", "x"]).into(),
            );
            let metrics: Vec<toml::Value> = r
                .metrics
                .iter()
                .take(4)
                .map(|m| m.get(KNOWN).into())
                .collect();
            t.insert("metric".into(), toml::Value::Array(metrics));
            t.insert("matchers".into(), table(&r.matchers));
            t.insert(
                "function".into(),
                r.function.get(&["value", "rate", "increase"]).into(),
            );
            if let Some(d) = &r.divide_by {
                t.insert("divide_by".into(), d.get(KNOWN).into());
            }
            t.insert(
                "op".into(),
                r.op.get(&[">", ">=", "<", "<=", "==", "!="]).into(),
            );
            for (k, v) in [("warning", r.warning), ("critical", r.critical)] {
                if let Some(v) = v {
                    t.insert(k.into(), v.into());
                }
            }
            if let Some(f) = &r.for_ {
                t.insert("for".into(), f.get(&["0s", "5m", "1h"]).into());
            }
            t.insert("labels".into(), table(&r.labels));
            t.insert("annotations".into(), table(&r.annotations));
            toml::Value::Table(t)
        })
        .collect();
    let mut alerts = toml::Table::new();
    alerts.insert("rules".into(), toml::Value::Array(rows));
    let mut root = toml::Table::new();
    root.insert("alerts".into(), toml::Value::Table(alerts));
    let Ok(text) = toml::to_string(&root) else {
        return;
    };
    match crate::config::Config::from_text(Path::new("/etc/moonfrp.toml"), &text) {
        Ok(c) => {
            for rule in &c.start.alerts.rules {
                for template in rule.annotations.values() {
                    let _ =
                        crate::alerts::rules::render(template, &BTreeMap::new(), f64::NAN, None);
                }
            }
        }
        Err(e) => error_ok(&e.to_string(), &text),
    }
}
