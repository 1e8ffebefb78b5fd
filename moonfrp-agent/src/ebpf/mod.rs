//! The kernel side as the agent sees it: its settings, layouts, the probe table and loader, and
//! the maps.
pub mod btf;
pub mod config;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod stats;
mod syscall;

pub use config::KernelConfig;
pub use loader::{Kernel, LoadError, ProbeStatus, ProgramStats, load};
pub use maps::KernelMaps;
