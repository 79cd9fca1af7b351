//! devctl: runs the platform's production layout on one machine.
//!
//! topology (TOML, [`topology`]) → plan (pure data, [`plan`]) → runtime (Docker through
//! bollard, or local processes). Everything up to the plan is pure and unit-tested; the
//! runtimes are thin layers that apply a plan.

pub mod topology;
