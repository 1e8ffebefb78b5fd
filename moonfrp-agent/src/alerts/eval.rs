//! Evaluates every rule against one snapshot's series and advances each alert instance.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{
    rules::{Func, Rule, render},
    state::{Instance, Notify, Phase, Severity, Timing},
};
use crate::history::{
    exposition::{self, Point},
    rollup::{Obs, counter_step},
};

/// An alert as channels, the API and history see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub alertname: String,
    /// `firing`, `pending` or `resolved`.
    pub state: &'static str,
    pub severity: Severity,
    pub value: f64,
    pub threshold: Option<f64>,
    /// alertname, severity, the series' labels and the rule's.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Unix ms the condition started to hold.
    pub active_since: i64,
    /// Unix ms it resolved.
    pub ended_at: Option<i64>,
    /// Why it is being sent: `firing`, `repeat`, `severity_changed`, `resolved`; empty in the
    /// list of active alerts.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub event: &'static str,
}

/// One evaluation's outcome.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Firing, repeated, changed and resolved alerts to send.
    pub notifications: Vec<Alert>,
    /// Pending and firing instances now.
    pub active: Vec<Alert>,
}

struct Tracked {
    instance: Instance,
    labels: BTreeMap<String, String>,
    value: f64,
    /// When the condition started to hold (kept for the resolve).
    since: i64,
}

pub struct Engine {
    rules: Vec<(Rule, Timing)>,
    instances: HashMap<(usize, String), Tracked>,
    /// Previous value of every counter some rule takes a rate or increase of.
    prev: HashMap<String, (i64, f64)>,
    counters: HashSet<String>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, repeat_ms: i64, cooldown_ms: i64) -> Self {
        let counters = rules
            .iter()
            .filter(|r| r.func != Func::Value)
            .flat_map(|r| r.metrics.iter().cloned())
            .collect();
        let rules = rules
            .into_iter()
            .map(|r| {
                let t = Timing {
                    for_ms: i64::try_from(r.for_.as_millis()).unwrap_or(i64::MAX),
                    repeat_ms,
                    cooldown_ms,
                };
                (r, t)
            })
            .collect();
        Self {
            rules,
            instances: HashMap::new(),
            prev: HashMap::new(),
            counters,
        }
    }

    pub fn evaluate(&mut self, now: i64, points: &[Point<'_>]) -> Evaluation {
        let mut by_name: HashMap<&str, Vec<&Point<'_>>> = HashMap::new();
        for p in points {
            by_name.entry(p.name).or_default().push(p);
        }
        let mut out = Evaluation::default();
        let mut seen: HashSet<(usize, String)> = HashSet::new();
        for ri in 0..self.rules.len() {
            for (raw, (labels, value)) in self.observe(ri, &by_name, now) {
                let (rule, timing) = &self.rules[ri];
                let verdict = rule.judge(value);
                let key = (ri, raw);
                seen.insert(key.clone());
                let t = self.instances.entry(key).or_insert_with(|| Tracked {
                    instance: Instance::default(),
                    labels,
                    value,
                    since: now,
                });
                t.value = value;
                let note = t.instance.step(now, verdict, timing);
                if let Phase::Pending { since } | Phase::Firing { since, .. } = t.instance.phase {
                    t.since = since;
                }
                emit(rule, t, note, now, &mut out);
            }
        }
        // Instances whose series went away resolve.
        for (key, t) in &mut self.instances {
            if !seen.contains(key) {
                let (rule, timing) = &self.rules[key.0];
                let note = t.instance.step(now, None, timing);
                emit(rule, t, note, now, &mut out);
            }
        }
        self.instances
            .retain(|k, t| seen.contains(k) || t.instance.is_active());
        self.prev = points
            .iter()
            .filter(|p| self.counters.contains(p.name))
            .map(|p| (p.key.to_owned(), (now, p.value)))
            .collect();
        out.active
            .sort_by(|a, b| (&a.alertname, &a.labels).cmp(&(&b.alertname, &b.labels)));
        out
    }

    /// Values of a rule's series this evaluation, by exposed label set.
    fn observe(
        &self,
        ri: usize,
        by_name: &HashMap<&str, Vec<&Point<'_>>>,
        now: i64,
    ) -> BTreeMap<String, (BTreeMap<String, String>, f64)> {
        let rule = &self.rules[ri].0;
        let mut groups: BTreeMap<String, (BTreeMap<String, String>, f64)> = BTreeMap::new();
        for metric in &rule.metrics {
            for p in by_name.get(metric.as_str()).into_iter().flatten() {
                let labels = exposition::labels(p.labels);
                if !rule
                    .matchers
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
                {
                    continue;
                }
                let v = match rule.func {
                    Func::Value => p.value,
                    Func::Rate | Func::Increase => {
                        let Some(&(ts, before)) = self.prev.get(p.key) else {
                            continue;
                        };
                        let obs = |ts, value| Obs {
                            ts,
                            value,
                            run: 0,
                            run_start: 0,
                        };
                        let Some((inc, secs)) = counter_step(&obs(ts, before), &obs(now, p.value))
                        else {
                            continue;
                        };
                        if rule.func == Func::Rate {
                            inc / secs
                        } else {
                            inc
                        }
                    }
                };
                let g = groups
                    .entry(p.labels.to_owned())
                    .or_insert_with(|| (labels, 0.0));
                g.1 += v;
            }
        }
        if let Some(div) = &rule.divide_by {
            let divisors: HashMap<&str, f64> = by_name
                .get(div.as_str())
                .into_iter()
                .flatten()
                .map(|p| (p.labels, p.value))
                .collect();
            let single = (divisors.len() == 1)
                .then(|| divisors.get(""))
                .flatten()
                .copied();
            groups.retain(
                |raw, (_, v)| match divisors.get(raw.as_str()).copied().or(single) {
                    Some(d) if d != 0.0 => {
                        *v /= d;
                        true
                    }
                    _ => false,
                },
            );
        }
        groups
    }
}

fn emit(rule: &Rule, t: &Tracked, note: Option<Notify>, now: i64, out: &mut Evaluation) {
    let (state, since) = match t.instance.phase {
        Phase::Pending { since } => ("pending", since),
        Phase::Firing { since, .. } => ("firing", since),
        Phase::Inactive => ("resolved", t.since),
    };
    let severity = t.instance.severity;
    let mut labels = t.labels.clone();
    labels.extend(rule.labels.clone());
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), severity.as_str().into());
    let threshold = rule.threshold(severity);
    let annotations = rule
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), render(v, &labels, t.value, threshold)))
        .collect();
    let alert = Alert {
        alertname: rule.name.clone(),
        state,
        severity,
        value: t.value,
        threshold,
        labels,
        annotations,
        active_since: since,
        ended_at: (state == "resolved").then_some(now),
        event: "",
    };
    if t.instance.is_active() {
        out.active.push(alert.clone());
    }
    if let Some(n) = note {
        out.notifications.push(Alert {
            event: match n {
                Notify::Firing => "firing",
                Notify::Repeat => "repeat",
                Notify::SeverityChanged => "severity_changed",
                Notify::Resolved => "resolved",
            },
            ..alert
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::builtin;

    fn text(up_b: u8, refused_a: u64, used: u64) -> String {
        format!(
            "# TYPE moonfrp_tunnel_up gauge\n\
             moonfrp_tunnel_up{{tunnel=\"a\",port=\"1\",proto=\"tcp\"}} 1\n\
             moonfrp_tunnel_up{{tunnel=\"b\",port=\"2\",proto=\"tcp\"}} {up_b}\n\
             # TYPE moonfrp_tunnel_connections_refused counter\n\
             moonfrp_tunnel_connections_refused_total{{tunnel=\"a\",port=\"1\",proto=\"tcp\"}} {refused_a}\n\
             # TYPE moonfrp_system_memory_used_bytes gauge\nmoonfrp_system_memory_used_bytes {used}\n\
             # TYPE moonfrp_system_memory_total_bytes gauge\nmoonfrp_system_memory_total_bytes 100\n# EOF\n"
        )
    }

    fn run(e: &mut Engine, now: i64, t: &str) -> Evaluation {
        let (_, points) = exposition::parse(t);
        e.evaluate(now, &points)
    }

    fn names(v: &[Alert]) -> Vec<(String, &'static str, String)> {
        v.iter()
            .map(|a| {
                (
                    a.alertname.clone(),
                    a.event,
                    a.labels.get("tunnel").cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn builtin_rules_on_a_series_stream() {
        let mut e = Engine::new(builtin(), 4 * 3_600_000, 0);
        let min = 60_000;
        // t=0: everything fine; refused counter seen for the first time (no increase yet).
        let r = run(&mut e, 0, &text(1, 5, 50));
        assert!(r.notifications.is_empty() && r.active.is_empty());
        // t=1m: b down (pending, for 1m), 2 refusals on a (fires at once), memory 96 %.
        let r = run(&mut e, min, &text(0, 7, 96));
        assert_eq!(
            names(&r.notifications),
            [("TunnelConnectionsRefused".into(), "firing", "a".into())]
        );
        let refused = &r.notifications[0];
        assert_eq!(refused.value, 2.0);
        assert_eq!(
            refused.annotations["summary"],
            "tunnel a refused 2 connection(s): nothing listened on 1/tcp"
        );
        let states: Vec<(&str, &str)> = r
            .active
            .iter()
            .map(|a| (a.alertname.as_str(), a.state))
            .collect();
        assert!(states.contains(&("TunnelDown", "pending")), "{states:?}");
        assert!(
            states.contains(&("HostMemoryHigh", "pending")),
            "{states:?}"
        );
        let mem = r
            .active
            .iter()
            .find(|a| a.alertname == "HostMemoryHigh")
            .unwrap();
        assert_eq!(mem.value, 0.96);
        assert_eq!(mem.severity, Severity::Critical);
        // t=2m: b still down → fires; no new refusals → resolved.
        let r = run(&mut e, 2 * min, &text(0, 7, 96));
        assert_eq!(
            names(&r.notifications),
            [
                ("TunnelDown".into(), "firing", "b".into()),
                ("TunnelConnectionsRefused".into(), "resolved", "a".into()),
            ]
        );
        // t=3m: tunnel b's series is gone (removed): its alert resolves.
        let t = text(0, 7, 96).replace(
            "moonfrp_tunnel_up{tunnel=\"b\",port=\"2\",proto=\"tcp\"} 0\n",
            "",
        );
        let r = run(&mut e, 3 * min, &t);
        assert_eq!(
            names(&r.notifications),
            [("TunnelDown".into(), "resolved", "b".into())]
        );
        assert!(r.notifications[0].ended_at == Some(3 * min));
        assert_eq!(r.notifications[0].active_since, min);
    }
}
