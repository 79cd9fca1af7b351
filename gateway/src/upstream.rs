//! Upstream transport: the per-upstream shared state that survives reloads (balancer and
//! per-server keep-alive caches), connecting over TCP + TLS, and handing connections back.
//!
//! Selection and the server lookup happen under one lock, so a request always gets the
//! connection cache of the server the balancer picked, even while a reload reshapes the pool.
//! Connections go back to the idle cache only after their response body was read to the end
//! (HTTP/1.1 cannot reuse a connection with unread bytes); anything else closes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::balance::{Algorithm, Attempt, Outcome, PeerId, Pool, ServerSpec};
use crate::metrics::{GatewayMetrics, TryOutcome};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Keeps a client's h2 request body open until the response to it has been sent.
///
/// An h2 stream whose request body is dropped before the response went out is reset with
/// CANCEL, and clients report that instead of the response (curl error 92). Held until the
/// response body is done, the body's drop comes after the response's end, and h2 then ends
/// the stream with RST_STREAM(NO_ERROR) as RFC 9113 §8.1 asks of an early response.
#[derive(Clone, Default)]
pub struct BodyHold(Arc<Mutex<Option<Incoming>>>);

impl BodyHold {
    /// Keeps `body` until every clone of this hold is dropped.
    pub fn keep(&self, body: Incoming) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
    }

    /// After the response was sent: reads and discards what the client still sends, within
    /// the lingering bounds, then drops the body (RST_STREAM(NO_ERROR) if it is not done).
    /// Clients that treat any reset during an upload as a failure (curl 7.x) then read the
    /// response; a client that keeps sending past the bounds is reset.
    pub fn release(&self) {
        let body = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(mut body), Ok(runtime)) = (body, tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(async move {
            let bounds = service_kit::server::linger::Linger::default();
            let deadline = tokio::time::Instant::now() + bounds.total;
            let mut discarded = 0u64;
            while discarded < bounds.max_bytes && !body.is_end_stream() {
                let wait = bounds
                    .idle
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, http_body_util::BodyExt::frame(&mut body)).await {
                    Ok(Some(Ok(frame))) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
        });
    }
}

/// The body sent upstream: nothing, or the client's body streamed through with a size cap.
/// Kept to a pointer: hyper's dispatch channel preallocates blocks of 32 request envelopes
/// per upstream connection (~10 KB each with the body inline), and with h2 clients there is
/// an upstream connection per stream in flight.
pub enum RequestBody {
    Empty,
    Stream(Box<StreamBody>),
}

/// The client's body on its way upstream.
pub struct StreamBody {
    body: Incoming,
    /// Bytes still allowed (`client_max_body_size`).
    remaining: u64,
    /// Set when the client's body is at fault (too large, or broken).
    fault: Arc<BodyFault>,
    /// Where the client body goes when it exceeds the limit (h2 clients).
    hold: Option<BodyHold>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds client_max_body_size")]
pub struct BodyTooLarge;

/// Why a try failed on the client's side while its body streamed upstream: the upstream
/// server is not to blame for these (no passive-health failure, no 502).
#[derive(Debug, Default)]
pub struct BodyFault {
    /// The client sent more than allowed; the proxy answers 413.
    too_large: AtomicBool,
    /// The client's body broke (bad chunked framing, a reset h2 stream); the proxy answers 400.
    broken: AtomicBool,
}

impl BodyFault {
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

impl RequestBody {
    pub fn limited(body: Incoming, limit: u64, hold: Option<BodyHold>) -> (Self, Arc<BodyFault>) {
        let fault = Arc::new(BodyFault::default());
        (
            RequestBody::Stream(Box::new(StreamBody {
                body,
                remaining: limit,
                fault: fault.clone(),
                hold,
            })),
            fault,
        )
    }

    /// The client body, if this is one (to reuse it for another try).
    pub fn into_stream(self) -> Option<Incoming> {
        match self {
            RequestBody::Empty => None,
            RequestBody::Stream(stream) => Some(stream.body),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(stream) => match Pin::new(&mut stream.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > stream.remaining {
                        stream.fault.too_large.store(true, Ordering::Relaxed);
                        if let RequestBody::Stream(stream) =
                            std::mem::replace(this, RequestBody::Empty)
                        {
                            if let Some(hold) = stream.hold {
                                hold.keep(stream.body);
                            }
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    stream.remaining -= len;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    stream.fault.broken.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(stream) => stream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(stream) => stream.body.size_hint(),
        }
    }
}

pub type Sender = http1::SendRequest<RequestBody>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// How to reach servers of one upstream; part of a config snapshot.
#[derive(Clone)]
pub struct Transport {
    pub tls: Option<TlsConnector>,
    /// Name verified in server certificates; `None` verifies the server's IP address.
    pub server_name: Option<ServerName<'static>>,
    pub connect_timeout: Duration,
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
}

impl Transport {
    /// A new HTTP/1.1 connection (TCP, then TLS when configured) to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        let transport = self;
        let timeout = transport.connect_timeout;
        let work = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::Tcp { addr, source })?;
            let _ = tcp.set_nodelay(true);
            match &transport.tls {
                Some(connector) => {
                    let name = transport
                        .server_name
                        .clone()
                        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|source| ConnectError::Tls { addr, source })?;
                    handshake(TokioIo::new(tls), addr).await
                }
                None => handshake(TokioIo::new(tcp), addr).await,
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ConnectError::Timeout { addr, timeout })?
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// How many idle caches each server keeps: one per proxy worker thread plus one for
/// everything else. Set once at start, before any upstream exists.
static IDLE_SLOTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

thread_local! {
    /// This thread's idle cache: its worker number, 0 off the workers.
    static IDLE_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Gives each of `workers` threads its own idle connection cache per server. An upstream
/// connection's task runs on the runtime that dialled it, so a worker reusing only its own
/// connections never hands a request to another thread. Call before the first upstream is
/// built; later calls are ignored.
pub fn set_worker_count(workers: usize) {
    let _ = IDLE_SLOTS.set(workers + 1);
}

/// Marks the calling thread as worker `index` (0-based) for the idle caches.
pub fn enter_worker(index: usize) {
    IDLE_SLOT.with(|slot| slot.set(index + 1));
}

fn idle_slot(slots: usize) -> usize {
    IDLE_SLOT.with(|slot| slot.get()) % slots.max(1)
}

/// One server's keep-alive cache and metric handles; lives as long as the server stays in
/// the config.
pub struct ServerConns {
    pub key: String,
    pub addr: SocketAddr,
    /// One keep-alive cache per worker thread (see [`set_worker_count`]).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Bumped when the cache is flushed (reload); older connections are not taken back.
    generation: AtomicU64,
    outcomes: [IntCounter; 5],
    /// Flips to true when a reload removes the server: its WebSocket tunnels close.
    removed: tokio::sync::watch::Sender<bool>,
}

/// A connection checked out for one request.
pub struct Checkout {
    pub sender: Sender,
    pub reused: bool,
    generation: u64,
}

impl Checkout {
    /// A connection dialled for this request alone (never returned to a cache).
    pub fn fresh(sender: Sender) -> Self {
        Checkout {
            sender,
            reused: false,
            generation: u64::MAX,
        }
    }
}

impl ServerConns {
    fn new(upstream: &str, key: &str, addr: SocketAddr, metrics: &GatewayMetrics) -> Self {
        let outcomes = TryOutcome::ALL.map(|o| {
            metrics
                .upstream_requests
                .with_label_values(&[upstream, key, o.label()])
        });
        ServerConns {
            key: key.to_string(),
            addr,
            idle: (0..*IDLE_SLOTS.get_or_init(|| 1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            generation: AtomicU64::new(0),
            outcomes,
            removed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Watches for this server leaving the config.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    pub fn count(&self, outcome: TryOutcome) {
        self.outcomes[outcome.index()].inc();
    }

    /// The calling thread's idle cache.
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        lock_idle(&self.idle[idle_slot(self.idle.len())])
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|slot| lock_idle(slot).len()).sum()
    }

    /// Closes every idle connection (they may have been made with an older TLS config).
    fn flush(&self, idle_totals: &[AtomicUsize]) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        for (slot, total) in self.idle.iter().zip(idle_totals) {
            let dropped = std::mem::take(&mut *lock_idle(slot));
            total.fetch_sub(dropped.len(), Ordering::Relaxed);
        }
    }

    /// A cached live connection (most recently used first), or a new one.
    pub async fn checkout(
        &self,
        transport: &Transport,
        idle_total: &AtomicUsize,
    ) -> Result<Checkout, ConnectError> {
        let generation = self.generation.load(Ordering::Relaxed);
        loop {
            let Some(idle) = self.idle().pop() else { break };
            idle_total.fetch_sub(1, Ordering::Relaxed);
            if idle.since.elapsed() < transport.keepalive_timeout
                && !idle.sender.is_closed()
                && idle.sender.is_ready()
            {
                return Ok(Checkout {
                    sender: idle.sender,
                    reused: true,
                    generation,
                });
            }
        }
        // Boxed: the dial (TCP, TLS handshake, HTTP handshake, timer) is the largest future
        // on the request path, and inline it would make every request's future carry its
        // size, cache hit or not (the h2 server moves that future into a task per stream).
        let sender = Box::pin(transport.connect(self.addr)).await?;
        Ok(Checkout {
            sender,
            reused: false,
            generation,
        })
    }

    /// Returns a connection whose response was read to the end.
    fn checkin(&self, sender: Sender, generation: u64, limit: usize, idle_total: &AtomicUsize) {
        if generation != self.generation.load(Ordering::Relaxed) || sender.is_closed() {
            return;
        }
        if idle_total.fetch_add(1, Ordering::Relaxed) >= limit {
            idle_total.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.idle().push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

fn lock_idle(slot: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handshake<T>(io: TokioIo<T>, addr: SocketAddr) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| ConnectError::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

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
    shared: Arc<UpstreamShared>,
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

    /// Per-server state for `/-/upstreams` and metrics.
    pub fn snapshot(&self) -> Vec<ServerStatus> {
        let state = self.state();
        let now = Instant::now();
        state
            .pool
            .snapshot(now)
            .into_iter()
            .map(|p| ServerStatus {
                idle: state.servers.get(&p.key).map_or(0, |s| s.idle_count()),
                peer: p,
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

/// The upstream response body streamed to the client. When it has been read to the end the
/// connection goes back to the cache; when it is dropped the balancer is told the request
/// ended (least_conn counts requests until their body is done, as NGINX does).
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
    finished: bool,
    _peer: PeerGuard,
}

struct Checkin {
    sender: Sender,
    generation: u64,
    server: Arc<ServerConns>,
    shared: Arc<UpstreamShared>,
    limit: usize,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        checkout: Checkout,
        server: Arc<ServerConns>,
        peer: PeerGuard,
        keepalive: usize,
    ) -> Self {
        let shared = peer.shared.clone();
        UpstreamBody {
            inner,
            checkin: Some(Checkin {
                sender: checkout.sender,
                generation: checkout.generation,
                server,
                shared,
                limit: keepalive,
            }),
            finished: false,
            _peer: peer,
        }
    }

    fn give_back(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.server
                .checkin(c.sender, c.generation, c.limit, c.shared.idle_total());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                self.finished = true;
                self.give_back();
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken connection is never reused.
                self.checkin = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.finished || self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    /// hyper's dispatch channel keeps blocks of 32 request envelopes per upstream connection:
    /// the body inline would add its size 32 times to every connection.
    #[test]
    fn the_upstream_request_body_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<super::RequestBody>(),
            std::mem::size_of::<usize>()
        );
    }
}
