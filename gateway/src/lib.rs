//! The InsightSerenity gateway: a TLS-terminating reverse proxy.
//!
//! Pure decision logic (peer selection, passive health) lives in [`balance`]; it does no I/O
//! and is driven by explicit `now` instants so it can be tested with simulated time.

pub mod balance;
