//! Upstream peer selection and passive health. Pure: no I/O, no clocks (callers pass `now`).
//!
//! This reproduces NGINX's upstream balancers (`ngx_http_upstream_round_robin.c`,
//! `ngx_http_upstream_least_conn_module.c`, `ngx_http_upstream_hash_module.c`) so the gateway
//! spreads load and reacts to failures exactly like the NGINX it replaces:
//!
//! * A [`Pool`] holds primary and backup servers built from [`ServerSpec`]s, and an
//!   [`Algorithm`]. The caller wraps it in a `Mutex` (NGINX's peers lock).
//! * Per request, create an [`Attempt`]; each try calls [`Pool::select`] and later exactly
//!   one [`Pool::release`] with an [`Outcome`]. The try budget (`proxy_next_upstream_tries`)
//!   is the caller's; [`Pool::default_tries`] gives NGINX's default.
//! * Passive health (NGINX `max_fails`/`fail_timeout`): a failure bumps `fails`, stamps
//!   `accessed` and `checked`, and cuts `effective_weight` by `weight / max_fails`. With
//!   `fails >= max_fails` the server is skipped while `now - checked <= fail_timeout`; after
//!   that the next request to pick it moves `checked` to `now`, so one probe goes through at
//!   a time, and a successful release with `accessed < checked` resets `fails`.
//!   `effective_weight` heals by 1 each selection round the server takes part in.
//! * Active health is external: [`HealthTracker`] turns probe results into verdicts and
//!   [`Pool::set_healthy`] marks servers, which are then skipped exactly like `down` ones.
//!
//! Choices, checked against current NGINX sources (1.27+/1.31 copies):
//!
//! * **No "quick recovery" reset.** Old NGINX set `fails = 0` on every peer when all of them
//!   were unavailable. Current round-robin, least-conn and hash code just return `NGX_BUSY`
//!   ("no live upstreams"); so does [`Pool::select`] (`None`), and `fails` stay until each
//!   server's own `fail_timeout` ends.
//! * **Single server.** With exactly one primary and no backups (NGINX `peers->single`) the
//!   server is refused only when `down`, unhealthy or at `max_conns`, never for failures;
//!   release does no failure accounting and clears `fails`. NGINX also sets `tries = 0`, so
//!   a request gets no second try: here a second `select` with the same [`Attempt`] returns
//!   `None`. Least-conn and consistent hash defer to round-robin in that case, plain hash
//!   whenever there are fewer than two primaries.
//! * **Backups.** When no primary can take a try, the request switches to the backup set
//!   (with its own `tried` set) for the rest of its tries, never back, like NGINX's
//!   `rrp->peers = peers->next`. Backups use the same algorithm, except hash, whose fallback
//!   is round-robin (NGINX refuses `backup` with `hash`; here backups are reached through that
//!   fallback).
//! * **Hash.** Both variants use NGINX's crc32 formulas so keys map as NGINX maps them; after
//!   more than 20 misses, or with an empty key, round-robin takes over.
//! * **Time.** NGINX counts `fail_timeout` in whole seconds of `ngx_time()`; here it is exact
//!   [`Duration`](std::time::Duration) arithmetic on the caller's instants, with the same
//!   inclusive `<=` bound.
//! * **Reloads.** [`Pool::reloaded`] keeps the state of servers whose key survives. Peers keep
//!   a serial across reloads, so a request that began on the old pool can be released on the
//!   current one and its connection count goes where it was carried. Releasing on the old
//!   pool object is also safe but leaves the carried count in the new pool; prefer the
//!   current pool.

mod attempt;
mod hash;
mod health;
mod least_conn;
mod peer;
mod pool;
mod round_robin;
#[cfg(test)]
mod testutil;

pub use attempt::Attempt;
pub use health::{HealthTracker, Transition};
pub use peer::{PeerSnapshot, PeerState, ServerSpec, DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS};
pub use pool::Pool;

/// How a pool picks among its servers (NGINX's balancing directive in `upstream {}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (NGINX's default).
    RoundRobin,
    /// `least_conn`: fewest connections per weight, round-robin among ties.
    LeastConn,
    /// `hash $key` or `hash $key consistent`; the key bytes come with each select.
    Hash {
        /// Ketama ring (`consistent`), so adding or removing a server moves few keys.
        consistent: bool,
    },
}

/// Names one server of one pool lineage; returned by [`Pool::select`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId {
    backup: bool,
    index: usize,
    serial: u64,
}

impl PeerId {
    /// Whether the server is in the backup set.
    pub fn is_backup(self) -> bool {
        self.backup
    }

    /// Position within its set when it was selected.
    pub fn index(self) -> usize {
        self.index
    }

    /// Identity that survives [`Pool::reloaded`].
    pub fn serial(self) -> u64 {
        self.serial
    }
}

/// How a try ended, as far as passive health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a server failure. Includes NGINX's `NGX_PEER_NEXT` cases (e.g. a 404 retried
    /// because of `proxy_next_upstream http_404`), which do not count against the server.
    Success,
    /// A failure in the sense of `proxy_next_upstream` (connect error, timeout, 502/503/504
    /// as configured): counts towards `max_fails`.
    Failure,
}
