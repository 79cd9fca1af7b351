//! The gateway's integration tests, one binary (one link): the proxy path, the edge
//! policies, the HA pair on loopback, and the HA pair's interface mode in network namespaces.
//! Each test starts real gateway processes and real HTTPS backends on their own ports.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod acme;
mod discover;
mod forward;
#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;
mod ha;
mod ha_netns;
mod hostile;
mod http2_upstream;
mod ocsp;
mod parsers;
mod policies;
mod proxy;
mod util;
