//! moonfrp-agent: reads moonfrp's kernel counters every interval into a [`snapshot::Snapshot`],
//! turns it into typed [`series`] once, and hands those to every output: `/metrics`, history,
//! the alert rules, the textfile. `main.rs` is a thin wrapper around [`agent::run`] and the
//! [`client`] commands.
//!
//! Data flows one way: kernel ([`ebpf`], [`watch`]) and host ([`collect`], [`frp`]) → snapshot
//! ([`cycle`]) → series ([`metrics`]) → outputs ([`exposition`], [`history`], [`alerts`],
//! [`api`] and [`server`]). The public modules are what the binary, the benches and the
//! examples use; the rest is the agent's own.
pub mod agent;
pub mod alert_test;
pub(crate) mod alerts;
pub mod api;
pub mod check;
pub mod cli;
pub mod client;
pub mod collect;
pub mod config;
pub(crate) mod counter;
pub(crate) mod cycle;
pub mod ebpf;
pub mod exposition;
pub(crate) mod frp;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod history;
pub mod logging;
pub mod metrics;
pub(crate) mod privileges;
pub(crate) mod process;
pub(crate) mod remote_write;
pub(crate) mod residency;
pub mod series;
pub(crate) mod server;
pub mod snapshot;
pub(crate) mod sockets;
pub mod synthetic;
pub mod sys;
pub(crate) mod textfile;
pub mod time;
pub(crate) mod tls;
pub mod tunnel;
pub(crate) mod untrusted;
pub mod watch;

/// The alert engine with the built-in rules, for the benches (the rest of the alerts module is the
/// agent's own).
pub mod alert_engine {
    pub use crate::alerts::{eval::Engine, rules::builtin};
}
