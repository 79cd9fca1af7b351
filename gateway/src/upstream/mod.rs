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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::metrics::{GatewayMetrics, TryOutcome};

mod request_body;
mod response_body;
mod shared;

pub use request_body::{BodyFault, BodyHold, BodyTooLarge, RequestBody, StreamBody};
pub use response_body::UpstreamBody;
pub use shared::{PeerGuard, QueueRefusal, QueueSeat, ServerStatus, UpstreamShared};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
