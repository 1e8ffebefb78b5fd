//! The snapshot's series: every family the agent exposes, built once per snapshot as typed
//! series ([`crate::series`]). Kernel counters are already cumulative: they are exported as
//! they are, never re-added from deltas.
mod agent;
mod alerts;
mod history;
pub mod names;
mod remote_write;
mod settings;
mod system;
mod tunnels;

use std::sync::Arc;

pub use settings::{Settings, SettingsFile};

use crate::{
    series::{Builder, Series},
    snapshot::Snapshot,
};

/// Parts of the agent outside the snapshot whose own series go with it: the history writer's
/// and the alert engine's counters, as they are when the series are built (the previous write
/// and evaluation).
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub history: Option<Arc<crate::history::writer::Stats>>,
    pub alerts: Option<Arc<crate::alerts::Shared>>,
    /// Each remote_write endpoint's counters.
    pub remote_write: Vec<Arc<crate::remote_write::Stats>>,
}

/// The series of `snap` (build information only before the first snapshot), with the families
/// `settings` ask for.
pub fn series(snap: Option<&Snapshot>, extras: &Extras, settings: &Settings) -> Series {
    let mut b = Builder::default();
    b.info(
        "moonfrp_agent_build",
        "Version of the running agent.",
        [[("version", env!("CARGO_PKG_VERSION"))]],
    );
    if let Some(h) = &extras.history {
        history::build(h, &mut b);
    }
    if let Some(a) = &extras.alerts {
        alerts::build(a, &mut b);
    }
    remote_write::build(&extras.remote_write, &mut b);
    if let Some(s) = snap {
        tunnels::build(s, settings, &mut b);
        system::build(&s.system, &mut b);
        agent::build(s, &mut b);
    }
    b.build()
}

#[cfg(test)]
mod tests;
