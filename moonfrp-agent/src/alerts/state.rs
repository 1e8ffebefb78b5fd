//! One alert instance's life: inactive → pending (for `for`) → firing → resolved, with a repeat
//! interval while firing and a cooldown after a resolve, so a flapping tunnel does not page
//! every minute. Pure: every time comes from the caller (the snapshot's clock).

/// How bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// Timing of the state machine, in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_field_names,
    reason = "milliseconds, as every time inside the agent; the suffix says so"
)]
pub struct Timing {
    /// How long the condition must hold before firing.
    pub for_ms: i64,
    /// Re-notify a firing alert this often.
    pub repeat_ms: i64,
    /// After a resolve, a new firing is held back (not notified) this long.
    pub cooldown_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Inactive,
    Pending {
        since: i64,
    },
    /// `notified`: when the last notification went out, and with which severity (`None` while
    /// held back by the cooldown).
    Firing {
        since: i64,
        notified: Option<(i64, Severity)>,
    },
}

/// What to tell the channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Newly firing (or the cooldown that held it back is over).
    Firing,
    /// Still firing, repeat interval elapsed.
    Repeat,
    /// Still firing, with another severity.
    SeverityChanged,
    Resolved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    pub phase: Phase,
    pub severity: Severity,
    pub last_resolved: Option<i64>,
}

impl Default for Instance {
    fn default() -> Self {
        Self {
            phase: Phase::Inactive,
            severity: Severity::Warning,
            last_resolved: None,
        }
    }
}

impl Instance {
    /// Advances with this evaluation's verdict (`None`: the condition does not hold).
    pub fn step(&mut self, now: i64, verdict: Option<Severity>, t: &Timing) -> Option<Notify> {
        let cooled = self.last_resolved.is_none_or(|r| now - r >= t.cooldown_ms);
        match (self.phase, verdict) {
            (Phase::Inactive, None) => None,
            (Phase::Pending { .. }, None) => {
                self.phase = Phase::Inactive;
                None
            }
            (Phase::Firing { notified, .. }, None) => {
                self.phase = Phase::Inactive;
                notified.map(|_| {
                    self.last_resolved = Some(now);
                    Notify::Resolved
                })
            }
            (Phase::Inactive, Some(sev)) => {
                self.severity = sev;
                self.phase = Phase::Pending { since: now };
                self.fire_if_due(now, now, cooled, t)
            }
            (Phase::Pending { since }, Some(sev)) => {
                self.severity = sev;
                self.fire_if_due(now, since, cooled, t)
            }
            (Phase::Firing { since, notified }, Some(sev)) => {
                self.severity = sev;
                let (note, notified) = match notified {
                    None if cooled => (Some(Notify::Firing), Some((now, sev))),
                    None => (None, None),
                    Some((_, was)) if was != sev => {
                        (Some(Notify::SeverityChanged), Some((now, sev)))
                    }
                    Some((at, _)) if now - at >= t.repeat_ms => {
                        (Some(Notify::Repeat), Some((now, sev)))
                    }
                    keep => (None, keep),
                };
                self.phase = Phase::Firing { since, notified };
                note
            }
        }
    }

    fn fire_if_due(&mut self, now: i64, since: i64, cooled: bool, t: &Timing) -> Option<Notify> {
        if now - since < t.for_ms {
            return None;
        }
        let notified = cooled.then_some((now, self.severity));
        self.phase = Phase::Firing { since, notified };
        notified.map(|_| Notify::Firing)
    }

    /// Pending or firing.
    pub const fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Inactive)
    }

    /// Inactive with no cooldown running at `now`: it steps as a new instance would.
    pub fn at_rest(&self, now: i64, t: &Timing) -> bool {
        !self.is_active() && self.last_resolved.is_none_or(|r| now - r >= t.cooldown_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::{Severity::*, *};

    const T: Timing = Timing {
        for_ms: 120_000,
        repeat_ms: 3_600_000,
        cooldown_ms: 600_000,
    };
    const MIN: i64 = 60_000;

    /// Runs verdicts one minute apart and collects what was notified.
    fn run(i: &mut Instance, start: i64, verdicts: &[Option<Severity>]) -> Vec<(i64, Notify)> {
        verdicts
            .iter()
            .enumerate()
            .filter_map(|(k, v)| {
                let now = start + i64::try_from(k).unwrap() * MIN;
                i.step(now, *v, &T).map(|n| (now, n))
            })
            .collect()
    }

    #[test]
    fn pending_fires_only_after_for() {
        let mut i = Instance::default();
        let got = run(&mut i, 0, &[Some(Warning), Some(Warning), Some(Warning)]);
        assert_eq!(got, [(2 * MIN, Notify::Firing)]);
        assert_eq!(
            i.phase,
            Phase::Firing {
                since: 0,
                notified: Some((2 * MIN, Warning))
            }
        );
        // A blip shorter than `for` never fires.
        let mut i = Instance::default();
        assert!(
            run(
                &mut i,
                0,
                &[Some(Critical), Some(Critical), None, Some(Critical)]
            )
            .is_empty()
        );
        assert_eq!(i.phase, Phase::Pending { since: 3 * MIN });
    }

    #[test]
    fn repeats_while_firing_and_on_severity_change() {
        let mut i = Instance::default();
        let mut v = vec![Some(Warning); 93];
        v[30] = Some(Critical);
        v[31] = Some(Critical);
        let got = run(&mut i, 0, &v);
        assert_eq!(
            got,
            [
                (2 * MIN, Notify::Firing),
                (30 * MIN, Notify::SeverityChanged),
                (32 * MIN, Notify::SeverityChanged),
                (92 * MIN, Notify::Repeat),
            ]
        );
    }

    #[test]
    fn resolves_then_a_flap_within_the_cooldown_is_held_back() {
        let mut i = Instance::default();
        let mut v = vec![Some(Critical); 4]; // fires at 2 min
        v.push(None); // resolved at 4 min
        v.extend([Some(Critical); 12]); // back at 5 min: firing at 7 min, held until 14 min
        v.push(None);
        let got = run(&mut i, 0, &v);
        assert_eq!(
            got,
            [
                (2 * MIN, Notify::Firing),
                (4 * MIN, Notify::Resolved),
                (14 * MIN, Notify::Firing),
                (17 * MIN, Notify::Resolved),
            ]
        );
        // A firing that was never notified resolves silently.
        let mut i = Instance::default();
        let got = run(
            &mut i,
            0,
            &[
                Some(Warning),
                Some(Warning),
                Some(Warning),
                None,
                Some(Warning),
                Some(Warning),
                Some(Warning),
                None,
            ],
        );
        assert_eq!(
            got,
            [(2 * MIN, Notify::Firing), (3 * MIN, Notify::Resolved)]
        );
        assert!(!i.is_active());
    }

    #[test]
    fn zero_for_fires_at_once() {
        let t = Timing { for_ms: 0, ..T };
        let mut i = Instance::default();
        assert_eq!(i.step(5, Some(Warning), &t), Some(Notify::Firing));
        assert_eq!(i.step(10, None, &t), Some(Notify::Resolved));
    }
}
