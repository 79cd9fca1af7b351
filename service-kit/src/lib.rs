//! Plumbing shared by every server binary of the platform (backends and gateway).
//!
//! What lives here is protocol-level and service-agnostic: TLS setup, request ids, the JSON
//! error shape, Prometheus HTTP metrics, structured logs, the accept loop with graceful drain,
//! the common command-line settings and a small HTTPS client for probes. It knows nothing of
//! any particular service's routes or store.

pub mod assets;
#[cfg(feature = "auth")]
pub mod auth;
pub mod boot;
pub mod client;
pub mod error;
pub mod health;
pub mod http;
pub mod json;
pub mod metrics;
#[cfg(feature = "openapi")]
pub mod openapi;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "testkit")]
pub mod prereq;
pub mod request_id;
pub mod server;
pub mod settings;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;

pub use error::ApiError;
pub use request_id::RequestId;
