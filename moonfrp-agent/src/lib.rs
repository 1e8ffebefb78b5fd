//! moonfrp-agent: reads moonfrp's kernel counters every interval, builds a `Snapshot`, and serves
//! it as Prometheus metrics. `main.rs` is a thin wrapper around [`agent::run`].
pub mod agent;
pub mod alerts;
pub mod api;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod cycle;
pub mod ebpf;
pub mod exposition;
pub mod frp;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod privileges;
pub mod process;
pub mod series;
pub mod server;
pub mod snapshot;
pub mod sockets;
pub mod synthetic;
pub mod sys;
pub mod textfile;
pub mod untrusted;
pub mod view;
pub mod watch;
