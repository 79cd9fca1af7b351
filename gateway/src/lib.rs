//! The InsightSerenity gateway: a TLS-terminating reverse proxy.
//!
//! Pure decision logic lives in [`balance`] (peer selection, passive health) and [`routing`]
//! (path normalization, longest-prefix match); neither does I/O, and time is passed in.
//! [`config`] is the TOML schema; [`runtime`] turns a config into a servable snapshot;
//! [`proxy`] is the request path; [`upstream`] the transport and keep-alive caches;
//! [`server`] owns listeners, reloads and drain; [`workers`] the thread-per-core runtimes;
//! [`admin`] the internal endpoints.

pub mod admin;
pub mod balance;
pub mod body;
pub mod certs;
pub mod config;
pub mod discover;
pub mod drain;
pub mod forward;
pub mod ha;
pub mod health_check;
pub mod keepalive;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod upstream;
pub mod workers;
