//! The InsightSerenity gateway: a TLS-terminating reverse proxy.
//!
//! Pure decision logic lives in [`balance`] (peer selection, passive health) and [`routing`]
//! (path normalization, longest-prefix match); neither does I/O, and time is passed in.
//! [`config`] is the TOML schema and its validation.

pub mod balance;
pub mod config;
pub mod routing;
