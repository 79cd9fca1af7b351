//! The upstream pool: primary and backup peers plus the algorithm that picks among them.
//!
//! This is NGINX's `ngx_http_upstream_rr_peers_t` pair (`peers` and `peers->next`) with the
//! `get`/`free` entry points of the round-robin, least-conn and hash modules.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::attempt::Attempt;
use super::hash::{self, Point, MAX_HASH_TRIES};
use super::peer::{Peer, PeerSnapshot, ServerSpec};
use super::{least_conn, round_robin, Algorithm, Outcome, PeerId};

/// Servers of one upstream and their live state. Not thread-safe by design: wrap it in a
/// `Mutex`, as NGINX takes the peers lock around `get` and `free`.
#[derive(Debug, Clone)]
pub struct Pool {
    algorithm: Algorithm,
    primary: Vec<Peer>,
    backup: Vec<Peer>,
    /// Consistent-hash ring over the primaries (empty for other algorithms).
    ring: Vec<Point>,
    /// Next unused peer serial in this pool's reload lineage.
    next_serial: u64,
}

impl Pool {
    /// A pool with fresh state.
    pub fn new(algorithm: Algorithm, specs: impl IntoIterator<Item = ServerSpec>) -> Self {
        let mut next_serial = 0u64;
        let peers = specs
            .into_iter()
            .map(|spec| {
                let peer = Peer::from_spec(spec, next_serial);
                next_serial = next_serial.wrapping_add(1);
                peer
            })
            .collect();
        Self::assemble(algorithm, peers, next_serial)
    }

    /// A pool for a new configuration that keeps the runtime state (fails, checked,
    /// accessed, conns, effective-weight penalty, health mark) of every server whose key is
    /// also in `previous`, so a reload neither forgets a dead server nor loses in-flight
    /// connection counts. Smooth round-robin accumulators restart at zero.
    ///
    /// Carried servers keep their identity, so [`Pool::release`] on the new pool accepts a
    /// [`PeerId`] handed out by `previous`.
    pub fn reloaded(
        previous: &Pool,
        algorithm: Algorithm,
        specs: impl IntoIterator<Item = ServerSpec>,
    ) -> Self {
        let mut old: HashMap<&str, VecDeque<&Peer>> = HashMap::new();
        for peer in previous.primary.iter().chain(&previous.backup) {
            old.entry(peer.key.as_str()).or_default().push_back(peer);
        }
        let mut next_serial = previous.next_serial;
        let mut peers = Vec::new();
        for spec in specs {
            let carried = old.get_mut(spec.key.as_str()).and_then(VecDeque::pop_front);
            let mut peer = Peer::from_spec(spec, next_serial);
            match carried {
                Some(old_peer) => peer.inherit(old_peer),
                None => next_serial = next_serial.wrapping_add(1),
            }
            peers.push(peer);
        }
        Self::assemble(algorithm, peers, next_serial)
    }

    fn assemble(algorithm: Algorithm, peers: Vec<Peer>, next_serial: u64) -> Self {
        let (mut primary, mut backup): (Vec<Peer>, Vec<Peer>) =
            peers.into_iter().partition(|peer| !peer.backup);
        assign_groups(&mut primary);
        assign_groups(&mut backup);
        let ring = match algorithm {
            Algorithm::Hash { consistent: true } => hash::build_ring(&primary),
            _ => Vec::new(),
        };
        Self {
            algorithm,
            primary,
            backup,
            ring,
            next_serial,
        }
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Number of servers, primary and backup.
    pub fn len(&self) -> usize {
        self.primary.len() + self.backup.len()
    }

    /// Whether the pool has no servers at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NGINX's `peers->single`: one primary and no backups. Such a server is never judged
    /// failed and a request gets no second try on it.
    pub fn is_single(&self) -> bool {
        self.primary.len() == 1 && self.backup.is_empty()
    }

    /// NGINX's default try budget (`proxy_next_upstream_tries 0`): servers not marked
    /// `down` in the configuration, primaries plus backups. Health marks are not counted,
    /// like NGINX which computes it from the configuration.
    pub fn default_tries(&self) -> usize {
        self.primary
            .iter()
            .chain(&self.backup)
            .filter(|peer| !peer.down)
            .count()
    }

    /// Picks a server for one try of a request and counts a connection on it.
    ///
    /// `attempt` carries what earlier tries of the same request used; `key` is the hash key
    /// for [`Algorithm::Hash`] (pass the same key on every try; `None` or empty means
    /// round-robin, as NGINX does for an empty key) and is ignored otherwise.
    /// `None` means no live upstream: the caller answers 502/503.
    ///
    /// Every `Some` must be followed by exactly one [`Pool::release`].
    pub fn select(
        &mut self,
        now: Instant,
        attempt: &mut Attempt,
        key: Option<&[u8]>,
    ) -> Option<PeerId> {
        let key = key.unwrap_or_default();
        let (backup, index) = match self.algorithm {
            Algorithm::RoundRobin => self.get_round_robin(now, attempt),
            Algorithm::LeastConn => self.get_least_conn(now, attempt),
            Algorithm::Hash { consistent: false } => self.get_hash(now, attempt, key),
            Algorithm::Hash { consistent: true } => self.get_chash(now, attempt, key),
        }?;
        let single = !backup && self.is_single();
        let set = if backup {
            &mut self.backup
        } else {
            &mut self.primary
        };
        let peer = set.get_mut(index)?;
        peer.on_selected(now, single);
        attempt.tried.insert(index);
        Some(PeerId {
            backup,
            index,
            serial: peer.serial,
        })
    }

    /// Picks the server named `key` (a sticky-session pin) when it can take the request: not
    /// down, failed, full or already tried. `None` means the caller should [`Pool::select`]
    /// normally (and re-pin the client).
    pub fn select_pinned(
        &mut self,
        now: Instant,
        attempt: &mut Attempt,
        key: &str,
    ) -> Option<PeerId> {
        let backup = attempt.in_backup;
        let single = !backup && self.is_single();
        let set = if backup {
            &mut self.backup
        } else {
            &mut self.primary
        };
        let index = set.iter().position(|peer| peer.key == key)?;
        if attempt.tried.contains(index) {
            return None;
        }
        let peer = set.get_mut(index)?;
        let eligible = if single {
            !peer.is_out() && !peer.is_full()
        } else {
            peer.is_available(now)
        };
        if !eligible {
            return None;
        }
        peer.on_selected(now, single);
        attempt.tried.insert(index);
        Some(PeerId {
            backup,
            index,
            serial: peer.serial,
        })
    }

    /// Ends one try: drops the connection count and does NGINX's passive-health accounting.
    ///
    /// Accepts ids from this pool and from the pools it was [`reloaded`](Pool::reloaded)
    /// from, so release on whichever pool is current when the request finishes. Returns
    /// `false` (and changes nothing) if the server is no longer in this pool.
    /// Whether a request found no server only because servers it could use are at
    /// `max_conns` (it may wait for one: `queue`), rather than down, failed or tried.
    pub fn busy(&self, now: Instant, attempt: &Attempt) -> bool {
        let set = if attempt.in_backup {
            &self.backup
        } else {
            &self.primary
        };
        set.iter().enumerate().any(|(index, peer)| {
            peer.is_full()
                && !peer.is_out()
                && !peer.is_failed(now)
                && !attempt.tried.contains(index)
        })
    }

    pub fn release(&mut self, id: PeerId, now: Instant, outcome: Outcome) -> bool {
        let single = self.is_single();
        match self.find_mut(id) {
            Some((backup, peer)) => {
                peer.on_released(now, outcome, single && !backup);
                true
            }
            None => false,
        }
    }

    /// The key of the server behind `id`, for logs and for connecting.
    pub fn key(&self, id: PeerId) -> Option<&str> {
        self.find(id).map(|peer| peer.key.as_str())
    }

    /// Sets the active-health mark on every server with `key`; returns how many matched.
    pub fn set_healthy(&mut self, key: &str, healthy: bool) -> usize {
        self.for_key(key, |peer| peer.health_down = !healthy)
    }

    /// Sets the admin `down` flag on every server with `key`; returns how many matched.
    pub fn set_down(&mut self, key: &str, down: bool) -> usize {
        self.for_key(key, |peer| peer.down = down)
    }

    /// Plain copies of every server's state, primaries first, for the admin API.
    pub fn snapshot(&self, now: Instant) -> Vec<PeerSnapshot> {
        let single = self.is_single();
        let primary = self.primary.iter().enumerate().map(|(index, peer)| {
            let id = PeerId {
                backup: false,
                index,
                serial: peer.serial,
            };
            peer.snapshot(id, now, single)
        });
        let backup = self.backup.iter().enumerate().map(|(index, peer)| {
            let id = PeerId {
                backup: true,
                index,
                serial: peer.serial,
            };
            peer.snapshot(id, now, false)
        });
        primary.chain(backup).collect()
    }

    /// `ngx_http_upstream_get_round_robin_peer`: primaries, then (once, for good) backups.
    fn get_round_robin(&mut self, now: Instant, attempt: &mut Attempt) -> Option<(bool, usize)> {
        if !attempt.in_backup {
            if self.is_single() {
                // The lone server is only refused when down or full, never for failures.
                let usable = self.primary.first().is_some_and(|peer| {
                    !peer.is_out() && !peer.is_full() && !attempt.tried.contains(0)
                });
                if usable {
                    return Some((false, 0));
                }
            } else if let Some(index) = round_robin::pick(&mut self.primary, &attempt.tried, now) {
                return Some((false, index));
            }
            if !self.enter_backup(attempt) {
                return None;
            }
        }
        round_robin::pick(&mut self.backup, &attempt.tried, now).map(|index| (true, index))
    }

    /// `ngx_http_upstream_get_least_conn_peer`.
    fn get_least_conn(&mut self, now: Instant, attempt: &mut Attempt) -> Option<(bool, usize)> {
        if self.is_single() {
            return self.get_round_robin(now, attempt);
        }
        if !attempt.in_backup {
            if let Some(index) = least_conn::pick(&mut self.primary, &attempt.tried, now) {
                return Some((false, index));
            }
            if !self.enter_backup(attempt) {
                return None;
            }
        }
        least_conn::pick(&mut self.backup, &attempt.tried, now).map(|index| (true, index))
    }

    /// `ngx_http_upstream_get_hash_peer`.
    fn get_hash(
        &mut self,
        now: Instant,
        attempt: &mut Attempt,
        key: &[u8],
    ) -> Option<(bool, usize)> {
        if attempt.in_backup
            || attempt.cursor.tries > MAX_HASH_TRIES
            || self.primary.len() < 2
            || key.is_empty()
        {
            return self.get_round_robin(now, attempt);
        }
        match hash::pick_plain(&self.primary, &mut attempt.cursor, &attempt.tried, now, key) {
            Some(index) => Some((false, index)),
            None => self.get_round_robin(now, attempt),
        }
    }

    /// `ngx_http_upstream_get_chash_peer`.
    fn get_chash(
        &mut self,
        now: Instant,
        attempt: &mut Attempt,
        key: &[u8],
    ) -> Option<(bool, usize)> {
        if attempt.in_backup
            || attempt.cursor.tries > MAX_HASH_TRIES
            || self.is_single()
            || key.is_empty()
            || self.ring.is_empty()
        {
            return self.get_round_robin(now, attempt);
        }
        let found = hash::pick_consistent(
            &mut self.primary,
            &self.ring,
            &mut attempt.cursor,
            &attempt.tried,
            now,
            key,
        );
        match found {
            Some(index) => Some((false, index)),
            None => self.get_round_robin(now, attempt),
        }
    }

    /// Switches the request to the backup set, clearing `tried` because indices now refer
    /// to backups. Returns `false` when there are no backups.
    fn enter_backup(&self, attempt: &mut Attempt) -> bool {
        if self.backup.is_empty() {
            return false;
        }
        attempt.in_backup = true;
        attempt.tried.clear();
        true
    }

    fn find(&self, id: PeerId) -> Option<&Peer> {
        let set = if id.backup {
            &self.backup
        } else {
            &self.primary
        };
        match set.get(id.index) {
            Some(peer) if peer.serial == id.serial => Some(peer),
            // An id from an older pool of the lineage: the server may have moved.
            _ => self
                .primary
                .iter()
                .chain(&self.backup)
                .find(|peer| peer.serial == id.serial),
        }
    }

    fn find_mut(&mut self, id: PeerId) -> Option<(bool, &mut Peer)> {
        let direct = {
            let set = if id.backup {
                &self.backup
            } else {
                &self.primary
            };
            set.get(id.index)
                .is_some_and(|peer| peer.serial == id.serial)
        };
        if direct {
            let set = if id.backup {
                &mut self.backup
            } else {
                &mut self.primary
            };
            return set.get_mut(id.index).map(|peer| (id.backup, peer));
        }
        if let Some(peer) = self.primary.iter_mut().find(|p| p.serial == id.serial) {
            return Some((false, peer));
        }
        self.backup
            .iter_mut()
            .find(|p| p.serial == id.serial)
            .map(|peer| (true, peer))
    }

    fn for_key(&mut self, key: &str, mut apply: impl FnMut(&mut Peer)) -> usize {
        let mut matched = 0;
        for peer in self.primary.iter_mut().chain(self.backup.iter_mut()) {
            if peer.key == key {
                apply(peer);
                matched += 1;
            }
        }
        matched
    }

    #[cfg(test)]
    pub(crate) fn ring(&self) -> &[Point] {
        &self.ring
    }

    /// Test hook: pretend `conns` requests are in flight on `key`.
    #[cfg(test)]
    pub(crate) fn force_conns(&mut self, key: &str, conns: u32) {
        self.for_key(key, |peer| peer.conns = conns);
    }
}

/// Gives peers sharing a key the same group (index of the first such peer).
fn assign_groups(peers: &mut [Peer]) {
    let mut first: HashMap<String, usize> = HashMap::new();
    for (index, peer) in peers.iter_mut().enumerate() {
        peer.group = *first.entry(peer.key.clone()).or_insert(index);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pinned_tests;
