//! One upstream server: its configuration and the NGINX passive-health state kept next to it.
//!
//! The rules here are NGINX's `ngx_http_upstream_rr_peer_t` bookkeeping, shared by every
//! algorithm so that a server is judged the same way whichever one picks it.

use std::time::{Duration, Instant};

use super::{Outcome, PeerId};

/// NGINX's default `max_fails`.
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// NGINX's default `fail_timeout`.
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// Configuration of one `server` line, identified by `key` (e.g. `"10.0.2.10:3002"`).
///
/// The key is what reloads match on and what the consistent-hash ring is built from, so it
/// should be the server's configured name, like NGINX's `peer->server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Stable identity of the server, `host:port` or `unix:/path`.
    pub key: String,
    /// Relative weight; 0 is treated as 1 because NGINX rejects `weight=0`.
    pub weight: u32,
    /// Maximum simultaneous connections; 0 means unlimited.
    pub max_conns: u32,
    /// Failures within `fail_timeout` that take the server out; 0 disables accounting.
    pub max_fails: u32,
    /// How long a failed server stays out, and the window failures are counted in.
    pub fail_timeout: Duration,
    /// Administratively down (`server ... down`).
    pub down: bool,
    /// Only used when no primary server can take the request.
    pub backup: bool,
}

impl ServerSpec {
    /// A server with NGINX's defaults: weight 1, no connection limit, `max_fails=1`,
    /// `fail_timeout=10s`, up, primary.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            weight: 1,
            max_conns: 0,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            down: false,
            backup: false,
        }
    }

    /// Sets `weight`.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets `max_conns`.
    #[must_use]
    pub fn with_max_conns(mut self, max_conns: u32) -> Self {
        self.max_conns = max_conns;
        self
    }

    /// Sets `max_fails`.
    #[must_use]
    pub fn with_max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// Sets `fail_timeout`.
    #[must_use]
    pub fn with_fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// Sets the admin `down` flag.
    #[must_use]
    pub fn with_down(mut self, down: bool) -> Self {
        self.down = down;
        self
    }

    /// Puts the server in the backup set.
    #[must_use]
    pub fn with_backup(mut self, backup: bool) -> Self {
        self.backup = backup;
        self
    }
}

/// Why a server can or cannot take a request right now, for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Selectable.
    Up,
    /// Administratively down.
    Down,
    /// Marked down by active health checks.
    Unhealthy,
    /// Reached `max_fails`; skipped until `until`, then one probe request is let through.
    Failed {
        /// End of the `fail_timeout` window.
        until: Instant,
    },
    /// At `max_conns`.
    Full,
}

/// Plain copy of one server's state, so the admin API can render it without holding the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Id usable with [`super::Pool::release`] and the setters.
    pub id: PeerId,
    /// The server key.
    pub key: String,
    /// Position within its set (primary or backup).
    pub index: usize,
    /// Whether it is in the backup set.
    pub backup: bool,
    /// Configured weight.
    pub weight: u32,
    /// Weight after failure penalties; recovers by 1 per selection round.
    pub effective_weight: i64,
    /// Smooth round-robin accumulator.
    pub current_weight: i64,
    /// Requests currently holding this server.
    pub conns: u32,
    /// Configured connection limit (0 = unlimited).
    pub max_conns: u32,
    /// Failures counted in the current window.
    pub fails: u32,
    /// Configured `max_fails`.
    pub max_fails: u32,
    /// Configured `fail_timeout`.
    pub fail_timeout: Duration,
    /// Time of the last failure.
    pub accessed: Option<Instant>,
    /// Start of the current failure window / time of the last probe.
    pub checked: Option<Instant>,
    /// Summary state.
    pub state: PeerState,
}

/// Live state of one server inside a pool.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) key: String,
    /// Identity that survives reloads, so a request started on an old pool can be released
    /// on the new one.
    pub(crate) serial: u64,
    /// Index of the first peer of the same set with the same key; consistent hashing picks a
    /// group, like NGINX matching `peer->server` names.
    pub(crate) group: usize,
    pub(crate) weight: u32,
    pub(crate) effective_weight: i64,
    pub(crate) current_weight: i64,
    pub(crate) conns: u32,
    pub(crate) max_conns: u32,
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    pub(crate) fails: u32,
    pub(crate) accessed: Option<Instant>,
    pub(crate) checked: Option<Instant>,
    pub(crate) down: bool,
    pub(crate) backup: bool,
    pub(crate) health_down: bool,
}

impl Peer {
    pub(crate) fn from_spec(spec: ServerSpec, serial: u64) -> Self {
        let weight = spec.weight.max(1);
        Self {
            key: spec.key,
            serial,
            group: 0,
            weight,
            effective_weight: i64::from(weight),
            current_weight: 0,
            conns: 0,
            max_conns: spec.max_conns,
            max_fails: spec.max_fails,
            fail_timeout: spec.fail_timeout,
            fails: 0,
            accessed: None,
            checked: None,
            down: spec.down,
            backup: spec.backup,
            health_down: false,
        }
    }

    /// Takes over the runtime state of the same server from the pool being replaced.
    ///
    /// The effective-weight *penalty* is carried rather than the value, so a weight change
    /// in the reload applies at once to a healthy server.
    pub(crate) fn inherit(&mut self, old: &Peer) {
        let penalty = i64::from(old.weight).saturating_sub(old.effective_weight);
        self.serial = old.serial;
        self.effective_weight = i64::from(self.weight)
            .saturating_sub(penalty)
            .clamp(0, i64::from(self.weight));
        self.conns = old.conns;
        self.fails = old.fails;
        self.accessed = old.accessed;
        self.checked = old.checked;
        self.health_down = old.health_down;
    }

    /// Down by admin or by active health checks: never selected.
    pub(crate) fn is_out(&self) -> bool {
        self.down || self.health_down
    }

    /// NGINX: `max_conns && conns >= max_conns`.
    pub(crate) fn is_full(&self) -> bool {
        self.max_conns != 0 && self.conns >= self.max_conns
    }

    /// NGINX: `max_fails && fails >= max_fails && now - checked <= fail_timeout`.
    pub(crate) fn is_failed(&self, now: Instant) -> bool {
        self.max_fails != 0
            && self.fails >= self.max_fails
            && self
                .checked
                .is_some_and(|checked| now.saturating_duration_since(checked) <= self.fail_timeout)
    }

    /// Selectable by any algorithm (the tried set aside).
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        !self.is_out() && !self.is_failed(now) && !self.is_full()
    }

    /// Bookkeeping when a request is given this peer.
    ///
    /// Moving `checked` to `now` once the window is over is what lets exactly one probe
    /// through after `fail_timeout`: the probe re-opens the window for everyone else. A lone
    /// server (`single`) skips this, as in NGINX, because it is never judged failed.
    pub(crate) fn on_selected(&mut self, now: Instant, single: bool) {
        self.conns = self.conns.saturating_add(1);
        if !single
            && self
                .checked
                .is_none_or(|checked| now.saturating_duration_since(checked) > self.fail_timeout)
        {
            self.checked = Some(now);
        }
    }

    /// Bookkeeping when a request is done with this peer (NGINX's `free_round_robin_peer`).
    pub(crate) fn on_released(&mut self, now: Instant, outcome: Outcome, single: bool) {
        if single {
            // NGINX: a lone server is never marked failed, and stale counts are dropped.
            self.fails = 0;
        } else {
            match outcome {
                Outcome::Failure => {
                    self.fails = self.fails.saturating_add(1);
                    self.accessed = Some(now);
                    self.checked = Some(now);
                    // max_fails == 0 (no accounting) means no penalty either.
                    if let Some(penalty) = self.weight.checked_div(self.max_fails) {
                        self.effective_weight =
                            self.effective_weight.saturating_sub(i64::from(penalty));
                    }
                    self.effective_weight = self.effective_weight.max(0);
                }
                Outcome::Success => {
                    // A success after a probe (checked moved past the last failure) proves
                    // the server is back; a success inside the window does not reset.
                    if self.accessed < self.checked {
                        self.fails = 0;
                    }
                }
            }
        }
        self.conns = self.conns.saturating_sub(1);
    }

    pub(crate) fn state(&self, now: Instant, single: bool) -> PeerState {
        if self.down {
            return PeerState::Down;
        }
        if self.health_down {
            return PeerState::Unhealthy;
        }
        if !single && self.is_failed(now) {
            if let Some(checked) = self.checked {
                let until = checked.checked_add(self.fail_timeout).unwrap_or(checked);
                return PeerState::Failed { until };
            }
        }
        if self.is_full() {
            return PeerState::Full;
        }
        PeerState::Up
    }

    pub(crate) fn snapshot(&self, id: PeerId, now: Instant, single: bool) -> PeerSnapshot {
        PeerSnapshot {
            id,
            key: self.key.clone(),
            index: id.index(),
            backup: self.backup,
            weight: self.weight,
            effective_weight: self.effective_weight,
            current_weight: self.current_weight,
            conns: self.conns,
            max_conns: self.max_conns,
            fails: self.fails,
            max_fails: self.max_fails,
            fail_timeout: self.fail_timeout,
            accessed: self.accessed,
            checked: self.checked,
            state: self.state(now, single),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spec: ServerSpec) -> Peer {
        Peer::from_spec(spec, 0)
    }

    #[test]
    fn spec_defaults_match_nginx() {
        let spec = ServerSpec::new("10.0.2.10:3002");
        assert_eq!(spec.weight, 1);
        assert_eq!(spec.max_conns, 0);
        assert_eq!(spec.max_fails, 1);
        assert_eq!(spec.fail_timeout, Duration::from_secs(10));
        assert!(!spec.down && !spec.backup);
    }

    #[test]
    fn zero_weight_is_one() {
        let p = peer(ServerSpec::new("a").with_weight(0));
        assert_eq!(p.weight, 1);
        assert_eq!(p.effective_weight, 1);
    }

    #[test]
    fn failure_penalty_is_weight_over_max_fails_clamped_at_zero() {
        // (weight, max_fails, failures, expected effective_weight)
        let cases = [
            (10, 2, 1, 5),
            (10, 2, 2, 0),
            (10, 3, 1, 7),
            (10, 3, 4, 0),
            (1, 3, 1, 1),
            (5, 1, 1, 0),
            (5, 0, 3, 5),
        ];
        let t0 = Instant::now();
        for (weight, max_fails, failures, expected) in cases {
            let mut p = peer(
                ServerSpec::new("a")
                    .with_weight(weight)
                    .with_max_fails(max_fails),
            );
            for _ in 0..failures {
                p.on_selected(t0, false);
                p.on_released(t0, Outcome::Failure, false);
            }
            assert_eq!(
                p.effective_weight, expected,
                "weight {weight} max_fails {max_fails} failures {failures}"
            );
            assert_eq!(p.fails, failures);
            assert_eq!(p.conns, 0);
        }
    }

    #[test]
    fn failed_window_is_inclusive_like_nginx() {
        let t0 = Instant::now();
        let mut p = peer(ServerSpec::new("a"));
        p.on_selected(t0, false);
        p.on_released(t0, Outcome::Failure, false);
        // (offset, failed?)
        let cases = [(0, true), (5, true), (10, true), (11, false)];
        for (secs, failed) in cases {
            assert_eq!(
                p.is_failed(t0 + Duration::from_secs(secs)),
                failed,
                "{secs}s"
            );
        }
    }

    #[test]
    fn max_fails_zero_never_fails() {
        let t0 = Instant::now();
        let mut p = peer(ServerSpec::new("a").with_max_fails(0));
        for _ in 0..5 {
            p.on_selected(t0, false);
            p.on_released(t0, Outcome::Failure, false);
        }
        assert!(!p.is_failed(t0));
        assert_eq!(p.state(t0, false), PeerState::Up);
    }

    #[test]
    fn success_inside_window_does_not_reset_but_probe_does() {
        let t0 = Instant::now();
        let mut p = peer(ServerSpec::new("a").with_max_fails(3));
        p.on_selected(t0, false);
        p.on_released(t0, Outcome::Failure, false);
        let t1 = t0 + Duration::from_secs(1);
        p.on_selected(t1, false);
        p.on_released(t1, Outcome::Success, false);
        assert_eq!(p.fails, 1, "success within the window keeps the count");
        let t2 = t0 + Duration::from_secs(11);
        p.on_selected(t2, false);
        assert_eq!(p.checked, Some(t2));
        p.on_released(t2, Outcome::Success, false);
        assert_eq!(p.fails, 0, "success after the window resets");
    }

    #[test]
    fn single_release_drops_fails_and_skips_accounting() {
        let t0 = Instant::now();
        let mut p = peer(ServerSpec::new("a"));
        p.fails = 4;
        p.on_selected(t0, true);
        assert_eq!(p.checked, None, "single path leaves checked alone");
        p.on_released(t0, Outcome::Failure, true);
        assert_eq!(p.fails, 0);
        assert_eq!(p.effective_weight, 1);
        assert_eq!(p.accessed, None);
    }

    #[test]
    fn conns_never_underflow() {
        let t0 = Instant::now();
        let mut p = peer(ServerSpec::new("a"));
        p.on_released(t0, Outcome::Success, false);
        p.on_released(t0, Outcome::Failure, false);
        assert_eq!(p.conns, 0);
    }

    #[test]
    fn inherit_carries_penalty_and_counters() {
        let t0 = Instant::now();
        let mut old = peer(ServerSpec::new("a").with_weight(10).with_max_fails(2));
        old.on_selected(t0, false);
        old.on_selected(t0, false);
        old.on_released(t0, Outcome::Failure, false);
        assert_eq!(old.effective_weight, 5);
        // (new weight, expected effective weight)
        for (weight, expected) in [(10, 5), (20, 15), (4, 0)] {
            let mut new = Peer::from_spec(ServerSpec::new("a").with_weight(weight), 99);
            new.inherit(&old);
            assert_eq!(new.effective_weight, expected, "weight {weight}");
            assert_eq!(new.serial, old.serial);
            assert_eq!(new.conns, 1);
            assert_eq!(new.fails, 1);
            assert_eq!(new.checked, Some(t0));
            assert_eq!(new.accessed, Some(t0));
        }
    }
}
