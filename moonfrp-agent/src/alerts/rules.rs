//! Alert rules: a metric (or several, summed per label set), label matchers, a function (the
//! value, or a counter's per-second rate or increase over the last interval), an optional divisor,
//! a comparison with a warning and/or critical threshold, `for`, labels and annotations. The
//! built-in rules are ordinary rules; a user rule with the same name replaces one.
use std::{collections::BTreeMap, time::Duration};

use super::state::Severity;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Value,
    /// Per second, between the last two snapshots (reset-aware).
    Rate,
    /// Between the last two snapshots (reset-aware).
    Increase,
}

impl Func {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "value" => Self::Value,
            "rate" => Self::Rate,
            "increase" => Self::Increase,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
        }
    }

    #[allow(clippy::float_cmp)]
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Gt => value > threshold,
            Self::Ge => value >= threshold,
            Self::Lt => value < threshold,
            Self::Le => value <= threshold,
            Self::Eq => value == threshold,
            Self::Ne => value != threshold,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Summed per label set.
    pub metrics: Vec<String>,
    pub matchers: BTreeMap<String, String>,
    pub func: Func,
    /// Joined on identical labels (or a single unlabelled series divides every value).
    pub divide_by: Option<String>,
    pub op: Op,
    pub warning: Option<f64>,
    pub critical: Option<f64>,
    pub for_: Duration,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// The severity this value deserves, if any.
    pub fn judge(&self, value: f64) -> Option<Severity> {
        if self.critical.is_some_and(|t| self.op.holds(value, t)) {
            Some(Severity::Critical)
        } else if self.warning.is_some_and(|t| self.op.holds(value, t)) {
            Some(Severity::Warning)
        } else {
            None
        }
    }

    pub fn threshold(&self, s: Severity) -> Option<f64> {
        match s {
            Severity::Warning => self.warning,
            Severity::Critical => self.critical,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn rule(
    name: &str,
    metrics: &[&str],
    func: Func,
    divide_by: Option<&str>,
    op: Op,
    (warning, critical): (Option<f64>, Option<f64>),
    for_: Duration,
    summary: &str,
) -> Rule {
    Rule {
        name: name.to_owned(),
        metrics: metrics.iter().map(ToString::to_string).collect(),
        matchers: BTreeMap::new(),
        func,
        divide_by: divide_by.map(str::to_owned),
        op,
        warning,
        critical,
        for_,
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([("summary".to_owned(), summary.to_owned())]),
    }
}

/// The rules on by default (README: Alerts). A table, one entry per rule.
#[allow(clippy::too_many_lines)]
pub fn builtin() -> Vec<Rule> {
    let min = Duration::from_mins;
    let mut service = rule(
        "ServiceFailed",
        &["moonfrp_service_state"],
        Func::Value,
        None,
        Op::Eq,
        (None, Some(1.0)),
        Duration::ZERO,
        "service {{unit}} has failed",
    );
    service.matchers.insert("state".into(), "failed".into());
    vec![
        rule(
            "TunnelDown",
            &["moonfrp_tunnel_up"],
            Func::Value,
            None,
            Op::Eq,
            (None, Some(0.0)),
            min(1),
            "tunnel {{tunnel}} ({{port}}/{{proto}}) is down",
        ),
        rule(
            "TunnelConnectionsRefused",
            &["moonfrp_tunnel_connections_refused_total"],
            Func::Increase,
            None,
            Op::Gt,
            (Some(0.0), None),
            Duration::ZERO,
            "tunnel {{tunnel}} refused {{value}} connection(s): nothing listened on {{port}}/{{proto}}",
        ),
        rule(
            "TunnelErrorRate",
            &[
                "moonfrp_tunnel_resets_sent_total",
                "moonfrp_tunnel_resets_received_total",
                "moonfrp_tunnel_retransmits_total",
            ],
            Func::Rate,
            None,
            Op::Gt,
            (Some(5.0), Some(50.0)),
            min(5),
            "tunnel {{tunnel}}: {{value}} resets and retransmits per second",
        ),
        rule(
            "FrpProcessDown",
            &["moonfrp_process_up"],
            Func::Value,
            None,
            Op::Eq,
            (None, Some(0.0)),
            min(1),
            "{{process}} ({{config}}) is not running",
        ),
        rule(
            "FrpProcessRestarting",
            &["moonfrp_process_restarts_total"],
            Func::Increase,
            None,
            Op::Gt,
            (Some(0.0), None),
            Duration::ZERO,
            "{{process}} ({{config}}) restarted",
        ),
        service,
        rule(
            "HostCpuHigh",
            &["moonfrp_system_cpu_usage_ratio"],
            Func::Value,
            None,
            Op::Gt,
            (Some(0.8), Some(0.95)),
            min(5),
            "CPU busy {{value}} of the time",
        ),
        rule(
            "HostMemoryHigh",
            &["moonfrp_system_memory_used_bytes"],
            Func::Value,
            Some("moonfrp_system_memory_total_bytes"),
            Op::Gt,
            (Some(0.85), Some(0.95)),
            min(5),
            "memory {{value}} used",
        ),
        rule(
            "HostDiskFull",
            &["moonfrp_system_filesystem_used_bytes"],
            Func::Value,
            Some("moonfrp_system_filesystem_size_bytes"),
            Op::Gt,
            (Some(0.85), Some(0.95)),
            min(5),
            "{{mountpoint}} is {{value}} full",
        ),
        rule(
            "HostLoadHigh",
            &["moonfrp_system_load5"],
            Func::Value,
            Some("moonfrp_system_cpus"),
            Op::Gt,
            (Some(2.0), Some(4.0)),
            min(10),
            "load {{value}} per CPU",
        ),
    ]
}

/// Fills `{{label}}`, `{{value}}`, `{{threshold}}`, `{{severity}}` and `{{alertname}}`.
pub fn render(
    template: &str,
    labels: &BTreeMap<String, String>,
    value: f64,
    threshold: Option<f64>,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        match key {
            "value" => out.push_str(&format_value(value)),
            "threshold" => out.push_str(&threshold.map_or_else(String::new, format_value)),
            k => out.push_str(labels.get(k).map_or("", String::as_str)),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Short, human: integers as such, others with up to 3 decimals.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_severities() {
        let labels = BTreeMap::from([
            ("tunnel".to_owned(), "ssh".to_owned()),
            ("port".to_owned(), "6000".to_owned()),
        ]);
        assert_eq!(
            render(
                "{{tunnel}} on {{port}}: {{value}} > {{threshold}} {{nope}}{{",
                &labels,
                2.5,
                Some(1.0)
            ),
            "ssh on 6000: 2.5 > 1 {{"
        );
        let r = &builtin()[2];
        assert_eq!(r.name, "TunnelErrorRate");
        assert_eq!(r.judge(1.0), None);
        assert_eq!(r.judge(6.0), Some(Severity::Warning));
        assert_eq!(r.judge(60.0), Some(Severity::Critical));
        assert_eq!(format_value(0.333_333), "0.333");
    }
}
