//! Shared helpers for the balance tests.

use std::time::Instant;

use super::{Algorithm, Attempt, Outcome, PeerId, Pool, ServerSpec};

/// Simulated-time origin.
pub(crate) fn t0() -> Instant {
    Instant::now()
}

pub(crate) fn weighted(servers: &[(&str, u32)]) -> Vec<ServerSpec> {
    servers
        .iter()
        .map(|&(key, weight)| ServerSpec::new(key).with_weight(weight))
        .collect()
}

pub(crate) fn pool_of(algorithm: Algorithm, specs: Vec<ServerSpec>) -> Pool {
    Pool::new(algorithm, specs)
}

/// `n` one-try requests, each released successfully before the next.
pub(crate) fn run(pool: &mut Pool, n: usize) -> Vec<PeerId> {
    let t0 = t0();
    (0..n)
        .map(|_| {
            let id = pool.select(t0, &mut Attempt::new(), None).unwrap();
            pool.release(id, t0, Outcome::Success);
            id
        })
        .collect()
}

/// Concatenated keys, handy with one-letter server names.
pub(crate) fn names(pool: &Pool, ids: &[PeerId]) -> String {
    ids.iter().map(|&id| pool.key(id).unwrap()).collect()
}
