//! devctl: runs the platform's production layout on one machine.
//!
//! topology (TOML, [`topology`]) → plan (pure data, [`plan`]) → runtime ([`docker`] through
//! bollard, or local processes: [`process`]). Everything up to the plan is pure and
//! unit-tested; the runtimes are thin layers that apply a plan.

pub mod compose;
pub mod context;
pub mod docker;
pub mod gateway_toml;
pub mod images;
pub mod plan;
pub mod process;
pub mod state;
pub mod status;
pub mod summary;
pub mod topology;
pub mod trust;
pub mod ui;
pub mod yaml;
