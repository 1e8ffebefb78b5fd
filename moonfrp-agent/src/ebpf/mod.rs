//! The kernel side as the agent sees it: layouts, the probe table and loader, and the maps.
pub mod layout;
pub mod loader;
pub mod maps;

pub use loader::{Kernel, LoadError, ProbeStatus, ProgramStats, load};
pub use maps::KernelMaps;
