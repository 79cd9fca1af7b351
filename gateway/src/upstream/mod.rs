//! Upstream transport: the per-upstream shared state that survives reloads (balancer and
//! per-server keep-alive caches), connecting over TCP + TLS, and handing connections back.
//!
//! Selection and the server lookup happen under one lock, so a request always gets the
//! connection cache of the server the balancer picked, even while a reload reshapes the pool.
//! Connections go back to the idle cache only after their response body was read to the end
//! (HTTP/1.1 cannot reuse a connection with unread bytes); anything else closes them.
//!
//! - `mod.rs`: connecting (`Transport`), the per-server idle caches (`ServerConns`,
//!   `Checkout`).
//! - `shared`: `UpstreamShared` (balancer + servers under one lock), `PeerGuard`, the queue
//!   (`QueueSeat`).
//! - `request_body`: the client's body on its way up (`RequestBody`, size limit, `BodyHold`).
//! - `response_body`: the upstream's body on its way down (`UpstreamBody`), which checks the
//!   connection back in when read to the end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_config::UpstreamProtocol;
use http::uri::{Authority, Scheme};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::keepalive::KeepAlive;
use crate::metrics::{GatewayMetrics, TryOutcome};

mod liveness;
mod mux;
mod request_body;
mod response_body;
mod sender;
mod shared;

pub use mux::StreamCount;
pub use request_body::{BodyFault, BodyHold, BodyTooLarge, RequestBody, StreamBody};
pub use response_body::UpstreamBody;
pub use sender::{Http1Sender, Http2Sender, SendFailure, Sender};
pub use shared::{PeerGuard, QueueRefusal, QueueSeat, ServerStatus, UpstreamShared};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    #[error("HTTP/2 handshake with {addr}: the server closed the connection")]
    Http2Closed { addr: SocketAddr },
    #[error("{addr} did not agree to HTTP/2 in the TLS handshake (ALPN); set protocol = \"http1\" or \"auto\" for this upstream")]
    NoHttp2 { addr: SocketAddr },
}

/// The TLS client settings for upstream connections, one per ALPN offer.
#[derive(Clone)]
pub struct TlsConnectors {
    /// Offers `http/1.1`.
    pub http1: TlsConnector,
    /// Offers `h2` alone.
    pub http2: TlsConnector,
    /// Offers `h2`, then `http/1.1`: the server picks (`protocol = "auto"`).
    pub either: TlsConnector,
}

/// How to reach servers of one upstream; part of a config snapshot.
#[derive(Clone)]
pub struct Transport {
    pub tls: Option<TlsConnectors>,
    /// Name verified in server certificates; `None` verifies the server's IP address.
    pub server_name: Option<ServerName<'static>>,
    pub connect_timeout: Duration,
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// HTTP/2: streams in flight on one connection before another is opened.
    pub max_streams: usize,
}

impl Transport {
    /// A new connection (TCP, then TLS when configured) to `addr` in the upstream's protocol.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        self.connect_with(addr, self.protocol).await
    }

    /// A new HTTP/2 connection, whatever the upstream's protocol.
    pub async fn connect_http2(&self, addr: SocketAddr) -> Result<Http2Sender, ConnectError> {
        match self.connect_with(addr, UpstreamProtocol::Http2).await? {
            Sender::Http2(sender) => Ok(sender),
            Sender::Http1(_) => Err(ConnectError::NoHttp2 { addr }),
        }
    }

    /// A new HTTP/1.1 connection, whatever the upstream's protocol (WebSocket upgrades).
    pub async fn connect_http1(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        self.connect_with(addr, UpstreamProtocol::Http1).await
    }

    async fn connect_with(
        &self,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Result<Sender, ConnectError> {
        let timeout = self.connect_timeout;
        let work = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::Tcp { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let liveness = match protocol {
                UpstreamProtocol::Http2 => None,
                UpstreamProtocol::Http1 | UpstreamProtocol::Auto => liveness::Liveness::of(&tcp),
            };
            let Some(connectors) = &self.tls else {
                // Plain text has nothing to negotiate with (the config refuses `auto` there).
                let http2 = protocol == UpstreamProtocol::Http2;
                return handshake(tcp, addr, http2, Scheme::HTTP, liveness).await;
            };
            let name = self
                .server_name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
            let connector = match protocol {
                UpstreamProtocol::Http1 => &connectors.http1,
                UpstreamProtocol::Http2 => &connectors.http2,
                UpstreamProtocol::Auto => &connectors.either,
            };
            let tls = connector.connect(name, tcp).await.map_err(|source| {
                if protocol == UpstreamProtocol::Http2 && refused_alpn(&source) {
                    ConnectError::NoHttp2 { addr }
                } else {
                    ConnectError::Tls { addr, source }
                }
            })?;
            let agreed_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let http2 = match protocol {
                UpstreamProtocol::Http1 => false,
                UpstreamProtocol::Http2 if !agreed_h2 => {
                    return Err(ConnectError::NoHttp2 { addr });
                }
                UpstreamProtocol::Http2 => true,
                UpstreamProtocol::Auto => agreed_h2,
            };
            handshake(tls, addr, http2, Scheme::HTTPS, liveness).await
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

impl Idle {
    /// Idle for less than `timeout` and not closed by the server: worth keeping (a checkout
    /// also asks the connection whether it can take a request now).
    fn fresh(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout && !self.sender.is_closed()
    }
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
    /// HTTP/2: each worker thread's shared connections.
    multiplexed: Box<[mux::MuxSlot]>,
    /// Bumped when the cache is flushed (reload); older connections are not taken back.
    generation: AtomicU64,
    outcomes: [IntCounter; TryOutcome::ALL.len()],
    /// Flips to true when a reload removes the server: its WebSocket tunnels close.
    removed: tokio::sync::watch::Sender<bool>,
    /// `protocol = "auto"`: what the server picked on the last connection dialled
    /// (`SPEAKS_*`).
    speaks: std::sync::atomic::AtomicU8,
}

const SPEAKS_UNKNOWN: u8 = 0;
const SPEAKS_HTTP1: u8 = 1;
const SPEAKS_HTTP2: u8 = 2;

/// A connection checked out for one request.
pub struct Checkout {
    pub sender: Sender,
    pub reused: bool,
    generation: u64,
    /// Which HTTP/2 connection of its slot this is (0 for HTTP/1.1).
    serial: u64,
    /// HTTP/2: this request's stream, counted on its connection until the body ends.
    pub stream: Option<StreamCount>,
}

impl Checkout {
    /// A connection dialled for this request alone (never returned to a cache).
    pub fn fresh(sender: Sender) -> Self {
        Checkout {
            sender,
            reused: false,
            generation: u64::MAX,
            serial: 0,
            stream: None,
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
            multiplexed: (0..*IDLE_SLOTS.get_or_init(|| 1))
                .map(|_| mux::MuxSlot::default())
                .collect(),
            generation: AtomicU64::new(0),
            outcomes,
            removed: tokio::sync::watch::Sender::new(false),
            speaks: std::sync::atomic::AtomicU8::new(SPEAKS_UNKNOWN),
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
        lock(&self.idle[idle_slot(self.idle.len())])
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|slot| lock(slot).len()).sum()
    }

    /// `protocol = "auto"`: the protocol the server picked on the last connection dialled
    /// (`None` before the first one).
    pub fn picked(&self) -> Option<&'static str> {
        match self.speaks.load(Ordering::Relaxed) {
            SPEAKS_HTTP1 => Some("http1"),
            SPEAKS_HTTP2 => Some("http2"),
            _ => None,
        }
    }

    /// Open shared HTTP/2 connections, over all workers.
    pub fn http2_count(&self) -> usize {
        self.multiplexed.iter().map(mux::MuxSlot::len).sum()
    }

    /// Closes every idle connection (they may have been made with an older TLS config).
    fn flush(&self, idle_totals: &[AtomicUsize]) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        for (slot, total) in self.idle.iter().zip(idle_totals) {
            let dropped = std::mem::take(&mut *lock(slot));
            total.fetch_sub(dropped.len(), Ordering::Relaxed);
        }
        for slot in self.multiplexed.iter() {
            slot.clear();
        }
    }

    /// A cached live connection (most recently used first), or a new one. HTTP/2: a stream
    /// on one of this worker's shared connections (see `mux`).
    pub async fn checkout(
        &self,
        transport: &Transport,
        idle_total: &AtomicUsize,
    ) -> Result<Checkout, ConnectError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let slot = &self.multiplexed[idle_slot(self.multiplexed.len())];
        let auto = transport.protocol == UpstreamProtocol::Auto;
        if transport.protocol == UpstreamProtocol::Http2
            || (auto && self.speaks.load(Ordering::Relaxed) == SPEAKS_HTTP2)
        {
            match slot.checkout(transport, self.addr, generation).await {
                // `auto`: the server no longer picks h2; ask again below.
                Err(ConnectError::NoHttp2 { .. }) if auto => {
                    self.speaks.store(SPEAKS_UNKNOWN, Ordering::Relaxed);
                }
                checkout => return checkout,
            }
        }
        loop {
            let Some(idle) = self.idle().pop() else { break };
            idle_total.fetch_sub(1, Ordering::Relaxed);
            if idle.fresh(Instant::now(), transport.keepalive_timeout) && idle.sender.is_ready() {
                return Ok(Checkout {
                    sender: idle.sender,
                    reused: true,
                    generation,
                    serial: 0,
                    stream: None,
                });
            }
        }
        // Boxed: the dial (TCP, TLS handshake, HTTP handshake, timer) is the largest future
        // on the request path, and inline it would make every request's future carry its
        // size, cache hit or not (the h2 server keeps one such future per stream in flight).
        let sender = Box::pin(transport.connect(self.addr)).await?;
        if auto {
            // The server picked: remembered for the next checkouts, and an h2 connection
            // joins this worker's shared ones.
            let speaks = match sender {
                Sender::Http1(_) => SPEAKS_HTTP1,
                Sender::Http2(_) => SPEAKS_HTTP2,
            };
            self.speaks.store(speaks, Ordering::Relaxed);
            if let Sender::Http2(sender) = sender {
                return Ok(slot.adopt(sender, generation));
            }
        }
        Ok(Checkout {
            sender,
            reused: false,
            generation,
            serial: 0,
            stream: None,
        })
    }

    /// Forgets a shared HTTP/2 connection that failed a request before sending it, so the
    /// next checkout dials a new one. No-op for HTTP/1.1 (the failed connection is dropped
    /// with its checkout).
    pub fn forget(&self, checkout: &Checkout) {
        if checkout.serial == 0 {
            return;
        }
        for slot in self.multiplexed.iter() {
            slot.forget(checkout.serial);
        }
    }

    /// Closes the connections, every worker's, that a checkout would not hand out: HTTP/1.1
    /// ones idle for `keepalive_timeout` or closed by the server, and the HTTP/2 ones `mux`
    /// lets go. A checkout does this for its own worker on the way; without requests only
    /// this sweep does.
    fn close_idle(&self, transport: &Transport, idle_totals: &[AtomicUsize]) {
        let now = Instant::now();
        for (slot, total) in self.idle.iter().zip(idle_totals) {
            let mut idle = lock(slot);
            let before = idle.len();
            idle.retain(|c| c.fresh(now, transport.keepalive_timeout));
            total.fetch_sub(before - idle.len(), Ordering::Relaxed);
        }
        let generation = self.generation.load(Ordering::Relaxed);
        for slot in self.multiplexed.iter() {
            slot.close_idle(transport.keepalive_timeout, generation);
        }
    }

    /// Returns a connection whose response was read to the end.
    fn checkin(&self, sender: Sender, generation: u64, limit: usize, idle_total: &AtomicUsize) {
        // A shared HTTP/2 connection stays in its slot.
        if sender.is_http2()
            || generation != self.generation.load(Ordering::Relaxed)
            || sender.is_closed()
        {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The server ended the TLS handshake because no offered ALPN protocol suits it (what
/// rustls servers do; others complete the handshake without choosing one).
fn refused_alpn(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        })
}

/// Starts HTTP/1.1, or HTTP/2 when `http2`, on a connected (and TLS-secured) socket.
async fn handshake<T>(
    io: T,
    addr: SocketAddr,
    http2: bool,
    scheme: Scheme,
    liveness: Option<liveness::Liveness>,
) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match http2 {
        false => {
            let (sender, conn) = http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(|source| ConnectError::Http { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upstream connection closed with an error");
                }
            });
            Ok(Sender::Http1(Http1Sender {
                send: sender,
                liveness,
            }))
        }
        true => {
            let (send, mut conn) = h2::client::Builder::new()
                .enable_push(false)
                // hyper's client defaults: room for large responses without a window update
                // per frame.
                .initial_window_size(HTTP2_STREAM_WINDOW)
                .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
                .max_send_buffer_size(HTTP2_SEND_BUFFER)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|source| ConnectError::Http2 { addr, source })?;
            let mut ping = conn.ping_pong();
            // The server's SETTINGS are its first frame (RFC 9113 §3.4) and are applied before
            // later frames are read: once a PING comes back, the connection knows how many
            // streams the server takes, and `mux` fills it up to that many, not past it.
            if let Some(ping) = ping.as_mut() {
                tokio::select! {
                    pong = ping.ping(h2::Ping::opaque()) => {
                        pong.map_err(|source| ConnectError::Http2 { addr, source })?;
                    }
                    ended = &mut conn => {
                        return Err(match ended {
                            Err(source) => ConnectError::Http2 { addr, source },
                            Ok(()) => ConnectError::Http2Closed { addr },
                        });
                    }
                }
            }
            let open = Arc::new(AtomicBool::new(true));
            tokio::spawn(drive(conn, ping, open.clone(), addr));
            // A socket address is always a valid authority.
            let authority = Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("localhost"));
            Ok(Sender::Http2(Http2Sender {
                send,
                scheme,
                authority,
                open,
            }))
        }
    }
}

/// Runs an HTTP/2 connection until it ends: pinged every `HTTP2_PING_INTERVAL`, closed when a
/// ping goes unanswered for `HTTP2_PING_TIMEOUT` (the next request then dials a new one), or
/// when the last sender is dropped and its streams are done.
async fn drive<T>(
    conn: h2::client::Connection<T, Bytes>,
    ping: Option<h2::PingPong>,
    open: Arc<AtomicBool>,
    addr: SocketAddr,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = std::pin::pin!(conn);
    let mut keepalive =
        ping.map(|ping| KeepAlive::new(ping, HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT));
    std::future::poll_fn(|cx| {
        if keepalive.as_mut().is_some_and(|k| k.poll_timed_out(cx)) {
            tracing::debug!(%addr, "upstream HTTP/2 connection did not answer a ping; closing it");
            return std::task::Poll::Ready(());
        }
        Future::poll(conn.as_mut(), cx).map(|result| {
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection closed with an error");
            }
        })
    })
    .await;
    open.store(false, Ordering::Relaxed);
}

/// How often an HTTP/2 upstream connection is pinged, and how long an answer may take.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Flow-control windows and send buffer of an HTTP/2 upstream connection (hyper's client
/// defaults).
const HTTP2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const HTTP2_SEND_BUFFER: usize = 1024 * 1024;
