//! The part of an upstream that outlives config snapshots: the balancer, the servers' idle
//! caches, and the queue of requests waiting for a server below `max_conns`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::balance::{Algorithm, Attempt, Outcome, PeerId, Pool, ServerSpec};
use crate::metrics::GatewayMetrics;

use super::{idle_slot, ServerConns, IDLE_SLOTS};

struct UpstreamState {
    pool: Pool,
    servers: HashMap<String, Arc<ServerConns>>,
}

/// The part of an upstream that outlives config snapshots: balancer state and connection
/// caches. Reloads reshape it in place.
pub struct UpstreamShared {
    pub name: String,
    state: Mutex<UpstreamState>,
    /// Idle connections per worker slot, across this upstream's servers: NGINX's `keepalive`
    /// caps each worker's cache, and so does ours (one worker's full cache must not starve
    /// another into dialling for every request).
    idle_totals: Box<[AtomicUsize]>,
    /// Requests in the queue for a server below `max_conns` (`queue`): asleep, or woken and
    /// selecting. While any is, a new request joins the queue rather than taking a freed
    /// slot first, so requests are served in arrival order.
    waiting: AtomicUsize,
    /// The sleeping ones, oldest first: a finished request wakes the first.
    sleeping: Mutex<std::collections::VecDeque<tokio::sync::oneshot::Sender<()>>>,
}

/// Why a request left the upstream queue without a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The queue was at its size.
    Full,
    /// No server freed up in time.
    Timeout,
}

/// A picked server: released back to the balancer when dropped, with the recorded outcome.
pub struct PeerGuard {
    pub(super) shared: Arc<UpstreamShared>,
    id: PeerId,
    outcome: Outcome,
}

impl PeerGuard {
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.shared
            .state()
            .pool
            .release(self.id, Instant::now(), self.outcome);
        if self.shared.waiting.load(Ordering::Relaxed) > 0 {
            self.shared.wake_oldest();
        }
    }
}

/// A request's place in the upstream queue, from joining it until it has a server or gives
/// up. Leaving wakes the next sleeper: the slot may still be free (several were freed at
/// once), and if it is not, the woken request goes back to sleep at the front.
pub struct QueueSeat {
    shared: Arc<UpstreamShared>,
    queued: prometheus::IntGauge,
    /// When the request gives up waiting (`queue.timeout` after it joined).
    until: tokio::time::Instant,
    /// Woken at least once: it sleeps again at the front, keeping its turn.
    woken: bool,
}

impl QueueSeat {
    /// Sleeps until a finished request wakes this one (its turn to select), or the seat's
    /// deadline.
    pub async fn wait(&mut self) -> Result<(), QueueRefusal> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut sleeping = self.shared.sleeping();
            if self.woken {
                sleeping.push_front(tx);
            } else {
                sleeping.push_back(tx);
            }
        }
        match tokio::time::timeout_at(self.until, rx).await {
            Ok(_) => {
                self.woken = true;
                Ok(())
            }
            // The sender stays queued until a wake-up finds it closed and skips it.
            Err(_) => Err(QueueRefusal::Timeout),
        }
    }
}

impl Drop for QueueSeat {
    fn drop(&mut self) {
        self.queued.dec();
        if self.shared.waiting.fetch_sub(1, Ordering::Relaxed) > 1 {
            self.shared.wake_oldest();
        }
    }
}

impl UpstreamShared {
    pub fn new(
        name: &str,
        algorithm: Algorithm,
        specs: Vec<ServerSpec>,
        metrics: &GatewayMetrics,
    ) -> Arc<Self> {
        let servers = server_map(name, &specs, &HashMap::new(), metrics);
        Arc::new(UpstreamShared {
            name: name.to_string(),
            state: Mutex::new(UpstreamState {
                pool: Pool::new(algorithm, specs),
                servers,
            }),
            idle_totals: (0..*IDLE_SLOTS.get_or_init(|| 1))
                .map(|_| AtomicUsize::new(0))
                .collect(),
            waiting: AtomicUsize::new(0),
            sleeping: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn state(&self) -> MutexGuard<'_, UpstreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new server list, keeping state for servers that stay; flushes idle caches.
    pub fn reconfigure(
        &self,
        algorithm: Algorithm,
        specs: Vec<ServerSpec>,
        metrics: &GatewayMetrics,
    ) {
        let mut state = self.state();
        let servers = server_map(&self.name, &specs, &state.servers, metrics);
        let pool = Pool::reloaded(&state.pool, algorithm, specs);
        for (key, old) in &state.servers {
            old.flush(&self.idle_totals);
            if !servers.contains_key(key) {
                old.removed.send_replace(true);
            }
        }
        state.pool = pool;
        state.servers = servers;
    }

    /// The upstream left the config: every server counts as removed.
    pub fn retire(&self) {
        let state = self.state();
        for server in state.servers.values() {
            server.flush(&self.idle_totals);
            server.removed.send_replace(true);
        }
    }

    /// Picks a server for this try (the pinned one when it can serve); `None` when no server
    /// can take it.
    pub fn select(
        self: &Arc<Self>,
        attempt: &mut Attempt,
        key: Option<&[u8]>,
        pin: Option<&str>,
    ) -> Option<(PeerGuard, Arc<ServerConns>)> {
        let mut state = self.state();
        let now = Instant::now();
        let pinned = pin.and_then(|p| state.pool.select_pinned(now, attempt, p));
        let id = match pinned {
            Some(id) => id,
            None => state.pool.select(now, attempt, key)?,
        };
        let server = state
            .pool
            .key(id)
            .and_then(|k| state.servers.get(k))
            .cloned();
        let guard = PeerGuard {
            shared: self.clone(),
            id,
            outcome: Outcome::Success,
        };
        drop(state);
        match server {
            Some(server) => Some((guard, server)),
            None => {
                tracing::error!(upstream = %self.name, "picked server has no connection cache");
                None
            }
        }
    }

    /// Whether this try found no server only because the usable ones are at `max_conns`.
    pub fn busy(&self, attempt: &Attempt) -> bool {
        self.state().pool.busy(Instant::now(), attempt)
    }

    /// Whether requests are queued: a new one then queues behind them.
    pub fn has_queue(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Joins the queue (at most `size` in it) until `until` at most, counted in `queued`
    /// while in it.
    pub fn join_queue(
        self: &Arc<Self>,
        size: usize,
        until: tokio::time::Instant,
        queued: &prometheus::IntGauge,
    ) -> Result<QueueSeat, QueueRefusal> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= size {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueRefusal::Full);
        }
        queued.inc();
        Ok(QueueSeat {
            shared: self.clone(),
            queued: queued.clone(),
            until,
            woken: false,
        })
    }

    fn sleeping(
        &self,
    ) -> MutexGuard<'_, std::collections::VecDeque<tokio::sync::oneshot::Sender<()>>> {
        self.sleeping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the oldest sleeping request that is still waiting.
    fn wake_oldest(&self) {
        let mut sleeping = self.sleeping();
        while let Some(tx) = sleeping.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
    }

    /// The calling worker's idle count (what its `keepalive` cap applies to).
    pub fn idle_total(&self) -> &AtomicUsize {
        &self.idle_totals[idle_slot(self.idle_totals.len())]
    }

    /// Marks a server healthy or not for active health checks.
    pub fn set_healthy(&self, key: &str, healthy: bool) {
        self.state().pool.set_healthy(key, healthy);
    }

    /// Closes every server's idle connections that outlived `transport`'s keep-alive
    /// timeout (`ServerConns::close_idle`).
    pub fn close_idle(&self, transport: &super::Transport) {
        // Not under the state's lock: each server's slots take their own.
        let servers: Vec<Arc<ServerConns>> = self.state().servers.values().cloned().collect();
        for server in servers {
            server.close_idle(transport, &self.idle_totals);
        }
    }

    /// Per-server state for `/-/upstreams` and metrics.
    pub fn snapshot(&self) -> Vec<ServerStatus> {
        let state = self.state();
        let now = Instant::now();
        state
            .pool
            .snapshot(now)
            .into_iter()
            .map(|p| {
                let conns = state.servers.get(&p.key);
                ServerStatus {
                    idle: conns.map_or(0, |s| s.idle_count()),
                    http2: conns.map_or(0, |s| s.http2_count()),
                    picked: conns.and_then(|s| s.picked()),
                    peer: p,
                }
            })
            .collect()
    }

    pub fn default_tries(&self) -> usize {
        self.state().pool.default_tries()
    }

    pub fn server_keys(&self) -> Vec<(String, SocketAddr)> {
        self.state()
            .servers
            .values()
            .map(|s| (s.key.clone(), s.addr))
            .collect()
    }
}

pub struct ServerStatus {
    pub peer: crate::balance::PeerSnapshot,
    pub idle: usize,
    /// Open shared HTTP/2 connections (`protocol = "http2"`).
    pub http2: usize,
    /// `protocol = "auto"`: what the server picked on the last connection dialled.
    pub picked: Option<&'static str>,
}

fn server_map(
    upstream: &str,
    specs: &[ServerSpec],
    previous: &HashMap<String, Arc<ServerConns>>,
    metrics: &GatewayMetrics,
) -> HashMap<String, Arc<ServerConns>> {
    specs
        .iter()
        .filter_map(|spec| {
            let conns = match previous.get(&spec.key) {
                Some(existing) => existing.clone(),
                None => {
                    let addr: SocketAddr = spec.key.parse().ok()?;
                    Arc::new(ServerConns::new(upstream, &spec.key, addr, metrics))
                }
            };
            Some((spec.key.clone(), conns))
        })
        .collect()
}
