//! Evaluates every rule against one snapshot's series and advances each alert instance.
use std::{
    cell::OnceCell,
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    sync::Arc,
};

use serde::Serialize;

use super::{
    rules::{Func, Rule, render},
    state::{Instance, Notify, Phase, Severity, Timing},
};
use crate::{
    counter::{Obs, counter_step},
    series::{Labels, Point, Series},
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
    pub active: Vec<Arc<Alert>>,
}

struct Tracked {
    instance: Instance,
    /// The evaluation that last saw its series.
    seen: u64,
    labels: BTreeMap<String, String>,
    value: f64,
    /// When the condition started to hold (kept for the resolve).
    since: i64,
    /// The alert as last built; built again only when the instance or its value changes (a
    /// thousand tunnels down must not mean a thousand alerts rebuilt every interval).
    current: Option<Arc<Alert>>,
}

/// A fast hash with a per-process random seed: keys hold label values strangers choose.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Two label sets are one series' (the same allocation, or the same pairs).
fn same(a: &Labels, b: &Labels) -> bool {
    Arc::ptr_eq(a, b) || a[..] == b[..]
}

/// One counter's values at the last evaluation, in the order its points came. The points come
/// in the same order every snapshot, so a point's previous value is looked for at its own
/// position first; by label set (an index built then) only when that misses.
#[derive(Default)]
struct Prev {
    points: Vec<(Labels, i64, f64)>,
    index: OnceCell<Map<Labels, usize>>,
}

impl Prev {
    /// The value at the last evaluation of the series at `pos` with `labels`.
    fn get(&self, pos: usize, labels: &Labels) -> Option<(i64, f64)> {
        let at = |i: usize| {
            let (_, ts, v) = &self.points[i];
            (*ts, *v)
        };
        if self.points.get(pos).is_some_and(|(l, ..)| same(l, labels)) {
            return Some(at(pos));
        }
        let index = self.index.get_or_init(|| {
            // The last of a label set that came twice, as a map filled in order keeps.
            let mut m = Map::default();
            for (i, (l, ..)) in self.points.iter().enumerate() {
                m.insert(l.clone(), i);
            }
            m
        });
        index.get(labels).map(|&i| at(i))
    }

    /// This evaluation's values, for the next (the vector's room is reused).
    fn refill(&mut self, points: &[Point<'_>], now: i64) {
        self.points.clear();
        self.points
            .extend(points.iter().map(|p| (p.labels.clone(), now, p.value)));
        self.index = OnceCell::new();
    }
}

/// Label sets key instances and counters by content (each snapshot's sets are new allocations):
/// a key is a reference-counted copy of the series' own set, so an evaluation allocates nothing
/// per series.
pub struct Engine {
    rules: Vec<(Rule, Timing)>,
    instances: Map<(usize, Labels), Tracked>,
    /// Instances kept per rule: a rule with none looks up no series whose condition does not
    /// hold (the healthy ones, nearly all).
    tracked: Vec<usize>,
    /// Previous value of every counter some rule takes a rate or increase of, by sample name.
    prev: Map<String, Prev>,
    counters: Set<String>,
    /// Every sample name a rule reads (metrics and divisors).
    used: Set<String>,
    /// Evaluations so far.
    generation: u64,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, repeat_ms: i64, cooldown_ms: i64) -> Self {
        let counters = rules
            .iter()
            .filter(|r| r.func != Func::Value)
            .flat_map(|r| r.metrics.iter().cloned())
            .collect();
        let used = rules
            .iter()
            .flat_map(|r| r.metrics.iter().chain(&r.divide_by).cloned())
            .collect();
        let rules: Vec<(Rule, Timing)> = rules
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
            tracked: vec![0; rules.len()],
            rules,
            instances: Map::default(),
            prev: Map::default(),
            counters,
            used,
            generation: 0,
        }
    }

    pub fn evaluate(&mut self, now: i64, series: &Series) -> Evaluation {
        let mut by_name: Map<&str, Vec<Point<'_>>> = Map::default();
        for point in series.points_where(|n| self.used.contains(n)) {
            if self.used.contains(point.name) {
                by_name.entry(point.name).or_default().push(point);
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let mut out = Evaluation::default();
        for ri in 0..self.rules.len() {
            for (labels, value) in self.observe(ri, &by_name, now) {
                let (rule, timing) = &self.rules[ri];
                let verdict = rule.judge(value);
                if verdict.is_none() && self.tracked[ri] == 0 {
                    continue;
                }
                let t = match self.instances.entry((ri, labels.clone())) {
                    Entry::Occupied(o) => o.into_mut(),
                    // A series whose condition does not hold and that has no past to remember
                    // is not tracked: a thousand healthy tunnels cost no state.
                    Entry::Vacant(_) if verdict.is_none() => continue,
                    Entry::Vacant(v) => v.insert(Tracked {
                        instance: Instance::default(),
                        seen: generation,
                        labels: labels
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), v.to_string()))
                            .collect(),
                        value,
                        since: now,
                        current: None,
                    }),
                };
                t.seen = generation;
                let before = t.instance;
                let note = t.instance.step(now, verdict, timing);
                if t.instance != before || t.value.to_bits() != value.to_bits() {
                    t.current = None;
                }
                t.value = value;
                if let Phase::Pending { since } | Phase::Firing { since, .. } = t.instance.phase {
                    t.since = since;
                }
                emit(rule, t, note, now, &mut out);
            }
        }
        // Instances whose series went away resolve.
        for ((ri, _), t) in &mut self.instances {
            if t.seen != generation {
                let (rule, timing) = &self.rules[*ri];
                let note = t.instance.step(now, None, timing);
                t.current = None;
                emit(rule, t, note, now, &mut out);
            }
        }
        // Kept: what is pending or firing, and what a cooldown still holds back; an instance
        // at rest behaves as a new one would.
        let rules = &self.rules;
        self.instances.retain(|(ri, _), t| {
            t.instance.is_active()
                || (t.seen == generation && !t.instance.at_rest(now, &rules[*ri].1))
        });
        self.tracked.fill(0);
        for (ri, _) in self.instances.keys() {
            self.tracked[*ri] += 1;
        }
        // The counters' values for the next rates.
        self.prev
            .retain(|name, _| by_name.contains_key(name.as_str()));
        for (name, points) in by_name.iter().filter(|(n, _)| self.counters.contains(**n)) {
            if let Some(prev) = self.prev.get_mut(*name) {
                prev.refill(points, now);
            } else {
                let mut prev = Prev::default();
                prev.refill(points, now);
                self.prev.insert((*name).to_owned(), prev);
            }
        }
        out.active
            .sort_by(|a, b| (&a.alertname, &a.labels).cmp(&(&b.alertname, &b.labels)));
        out
    }

    /// Values of a rule's series this evaluation, by exposed label set, in the order the series
    /// come (the same in every snapshot); the values of a label set seen under several metrics
    /// are added.
    fn observe<'a>(
        &self,
        ri: usize,
        by_name: &Map<&str, Vec<Point<'a>>>,
        now: i64,
    ) -> Vec<(&'a Labels, f64)> {
        let rule = &self.rules[ri].0;
        let mut groups: Vec<(&'a Labels, f64)> = Vec::new();
        // The first metric's points are groups of their own (a family's label sets are unique,
        // as the exposition requires); a later metric's point is added to the group at its
        // position if that is its label set, else found through an index built then.
        let mut index: Option<Map<&'a Labels, usize>> = None;
        for (mi, metric) in rule.metrics.iter().enumerate() {
            let prev = self.prev.get(metric.as_str());
            for (pos, p) in by_name
                .get(metric.as_str())
                .into_iter()
                .flatten()
                .enumerate()
            {
                if !rule.matchers.iter().all(|(k, v)| {
                    p.labels
                        .iter()
                        .any(|(lk, lv)| lk == k && &**lv == v.as_str())
                }) {
                    continue;
                }
                let v = match rule.func {
                    Func::Value => p.value,
                    Func::Rate | Func::Increase => {
                        let Some((ts, before)) = prev.and_then(|m| m.get(pos, p.labels)) else {
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
                if mi == 0 {
                    groups.push((p.labels, v));
                    continue;
                }
                if index.is_none() {
                    if let Some(g) = groups.get_mut(pos).filter(|g| same(g.0, p.labels)) {
                        g.1 += v;
                        continue;
                    }
                    let mut m = Map::default();
                    for (i, (l, _)) in groups.iter().enumerate() {
                        m.entry(*l).or_insert(i);
                    }
                    index = Some(m);
                }
                let index = index.as_mut().expect("built above");
                match index.entry(p.labels) {
                    Entry::Occupied(o) => groups[*o.get()].1 += v,
                    Entry::Vacant(e) => {
                        e.insert(groups.len());
                        groups.push((p.labels, v));
                    }
                }
            }
        }
        if let Some(div) = &rule.divide_by {
            let divisors: Map<&Labels, f64> = by_name
                .get(div.as_str())
                .into_iter()
                .flatten()
                .map(|p| (p.labels, p.value))
                .collect();
            // One divisor without labels divides every group.
            let single = match divisors.iter().next() {
                Some((labels, v)) if divisors.len() == 1 && labels.is_empty() => Some(*v),
                _ => None,
            };
            groups.retain_mut(
                |(labels, v)| match divisors.get(labels).copied().or(single) {
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

/// The alert of an instance as it stands now.
fn build(rule: &Rule, t: &Tracked, now: i64) -> Alert {
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
    Alert {
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
    }
}

fn emit(rule: &Rule, t: &mut Tracked, note: Option<Notify>, now: i64, out: &mut Evaluation) {
    if note.is_none() && !t.instance.is_active() {
        // Nothing to show or send: no alert is built.
        t.current = None;
        return;
    }
    if t.current.is_none() {
        t.current = Some(Arc::new(build(rule, t, now)));
    }
    let alert = t.current.clone().expect("built above");
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
            ..(*alert).clone()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::builtin;

    fn text(up_b: u8, refused_a: u64, used: u64) -> Series {
        use crate::series::Builder;
        let tunnel =
            |t: &'static str, p: &'static str| [("tunnel", t), ("port", p), ("proto", "tcp")];
        let mut b = Builder::default();
        b.gauges(
            "moonfrp_tunnel_up",
            "h",
            None,
            [
                (tunnel("a", "1"), 1i64),
                (tunnel("b", "2"), i64::from(up_b)),
            ],
        );
        b.counters(
            "moonfrp_tunnel_connections_refused",
            "h",
            None,
            [(tunnel("a", "1"), refused_a)],
        );
        b.gauge("moonfrp_system_memory_used_bytes", "h", None, used);
        b.gauge("moonfrp_system_memory_total_bytes", "h", None, 100u64);
        b.build()
    }

    fn run(e: &mut Engine, now: i64, t: &Series) -> Evaluation {
        e.evaluate(now, t)
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

    /// TunnelErrorRate's three counters, each family's tunnels in the order given.
    fn errors(
        sent: &[(&'static str, u64)],
        received: &[(&'static str, u64)],
        retransmits: &[(&'static str, u64)],
    ) -> Series {
        use crate::series::Builder;
        let mut b = Builder::default();
        for (name, rows) in [
            ("moonfrp_tunnel_resets_sent", sent),
            ("moonfrp_tunnel_resets_received", received),
            ("moonfrp_tunnel_retransmits", retransmits),
        ] {
            b.counters(
                name,
                "h",
                None,
                rows.iter()
                    .map(|(t, v)| ([("tunnel", *t), ("port", "1"), ("proto", "tcp")], *v)),
            );
        }
        b.build()
    }

    #[test]
    fn rates_follow_each_series_when_the_order_changes() {
        let mut e = Engine::new(builtin(), 4 * 3_600_000, 0);
        let first = errors(
            &[("a", 0), ("b", 0), ("c", 0)],
            &[("b", 0)],
            &[("c", 0), ("a", 0), ("b", 0)],
        );
        assert!(run(&mut e, 0, &first).active.is_empty());
        // Ten seconds on: a new tunnel d comes first (no previous value: no rate), and the
        // others moved. a: 10/s, b: 5/s (not above 5), c: 60/s.
        let second = errors(
            &[("d", 500), ("c", 0), ("a", 100), ("b", 20)],
            &[("b", 30)],
            &[("b", 0), ("a", 0), ("c", 600)],
        );
        let r = run(&mut e, 10_000, &second);
        let mut got: Vec<(String, f64, Severity)> = r
            .active
            .iter()
            .map(|a| (a.labels["tunnel"].clone(), a.value, a.severity))
            .collect();
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            got,
            [
                ("a".to_owned(), 10.0, Severity::Warning),
                ("c".to_owned(), 60.0, Severity::Critical)
            ]
        );
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
        let mut t = text(0, 7, 96);
        t.families[0]
            .samples
            .retain(|s| !s.labels.iter().any(|(k, v)| *k == "tunnel" && &**v == "b"));
        let r = run(&mut e, 3 * min, &t);
        assert_eq!(
            names(&r.notifications),
            [("TunnelDown".into(), "resolved", "b".into())]
        );
        assert!(r.notifications[0].ended_at == Some(3 * min));
        assert_eq!(r.notifications[0].active_since, min);
    }

    /// Healthy series leave no state behind; a resolved alert is remembered for its cooldown
    /// (a flap inside it is not notified), and forgotten after.
    #[test]
    fn only_active_or_cooling_instances_are_kept() {
        let min = 60_000;
        let mut e = Engine::new(builtin(), 4 * 3_600_000, 10 * min);
        for k in 0..3 {
            run(&mut e, k * min, &text(1, 5, 50));
        }
        assert_eq!(e.instances.len(), 0, "nothing is wrong: nothing tracked");
        // b down for two minutes: fires, then comes back: resolves.
        run(&mut e, 3 * min, &text(0, 5, 50));
        let r = run(&mut e, 4 * min, &text(0, 5, 50));
        assert_eq!(
            names(&r.notifications),
            [("TunnelDown".into(), "firing", "b".into())]
        );
        let r = run(&mut e, 5 * min, &text(1, 5, 50));
        assert_eq!(
            names(&r.notifications),
            [("TunnelDown".into(), "resolved", "b".into())]
        );
        assert_eq!(e.instances.len(), 1, "the cooldown is remembered");
        // Down again inside the cooldown: it fires without a notification.
        run(&mut e, 6 * min, &text(0, 5, 50));
        let r = run(&mut e, 7 * min, &text(0, 5, 50));
        assert!(r.notifications.is_empty(), "{:?}", names(&r.notifications));
        assert_eq!(r.active.len(), 1);
        assert_eq!(r.active[0].state, "firing");
        // Back up, and the cooldown over: nothing left.
        run(&mut e, 8 * min, &text(1, 5, 50));
        run(&mut e, 19 * min, &text(1, 5, 50));
        assert_eq!(e.instances.len(), 0);
    }
}
