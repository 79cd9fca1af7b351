//! devctl: runs the platform's production layout on one machine.
//!
//! topology (TOML, [`topology`]) → plan (pure data, [`plan`]) → converge (pure diff against
//! what runs, [`converge`]) → engine (Docker through bollard, or local processes:
//! [`engine`]). The commands ([`ops`]) are written once above the [`engine::Engine`] trait.
//! Everything up to the converge schedule is pure and unit-tested; engines are thin layers
//! that observe and act on one instance at a time.

pub mod alerts;
pub mod backup;
pub mod build;
pub mod compose;
pub mod context;
pub mod converge;
pub mod engine;
pub mod gateway_toml;
pub mod images;
pub mod kube;
pub mod ops;
pub mod plan;
pub mod registry;
pub mod state;
pub mod status;
pub mod summary;
pub mod tokens;
pub mod topology;
pub mod trust;
pub mod ui;
pub mod yaml;
