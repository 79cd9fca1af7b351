//! One client connection: accepted on the control runtime, handed to the least loaded
//! worker, PROXY header and connection limits, TLS handshake, the h2 preface read under a
//! timer, HTTP/1.1 served by hyper or h2 by `server::h2`, and a lingering close.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use service_kit::server::linger;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Gateway, ListenerKind, HANDSHAKE_TIMEOUT};
use crate::body::IncomingBody;
use crate::config::any_contains;
use crate::policy::proxy_protocol::{self, PrefixedIo, Start};
use crate::proxy::{self, ClientConn, Held, Scheme};
use crate::upstream::BodyHold;

pub(super) async fn accept_loop(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    kind: ListenerKind,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let watcher = gateway.drain.watcher();
                    let _ = stream.set_nodelay(true);
                    gateway.dispatch(stream, peer, kind, watcher);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

impl Gateway {
    /// Open client connections per worker thread (empty without workers).
    pub fn worker_connections(&self) -> Vec<usize> {
        self.worker_load
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .collect()
    }

    /// Hands an accepted connection to the worker with the fewest open connections (all its
    /// requests are then served there), or serves it here without workers. Accepting in one
    /// place and choosing by load keeps workers even: a burst of new connections would
    /// otherwise go to whichever worker's accept loop woke first and drained the backlog,
    /// and with h2 (many streams per connection) one overloaded worker is the tail latency.
    fn dispatch(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        watcher: crate::drain::Watcher,
    ) {
        let Some((index, worker)) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(i, _)| self.worker_load[*i].load(Ordering::Relaxed))
        else {
            tokio::spawn(serve_client(self.clone(), stream, peer, kind, watcher));
            return;
        };
        // Moves the socket from this thread's event loop to the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        // Counted now, so a burst of accepts sees each choice at once; uncounted when the task
        // ends, or when it is dropped unrun (a worker that stopped).
        let load = WorkerLoad::new(self.clone(), index);
        worker.spawn(async move {
            let gateway = load.gateway.clone();
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_client(gateway, stream, peer, kind, watcher).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot take the connection"),
            }
            drop(load);
        });
    }
}

/// One open connection on a worker, for as long as it lives.
struct WorkerLoad {
    gateway: Arc<Gateway>,
    index: usize,
}

impl WorkerLoad {
    fn new(gateway: Arc<Gateway>, index: usize) -> Self {
        gateway.worker_load[index].fetch_add(1, Ordering::Relaxed);
        WorkerLoad { gateway, index }
    }
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.gateway.worker_load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open client connection for as long as it lives.
struct ConnectionGauge(prometheus::IntGauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve_client(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    watcher: crate::drain::Watcher,
) {
    let snapshot = gateway.snapshot.load_full();
    let client_ip_config = &snapshot.config.client_ip;
    let limits = &snapshot.config.limits;
    let refuse = |reason: &str| {
        gateway
            .metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    };

    // PROXY protocol: believed from trusted proxies, refused from anyone else.
    let (stream, conn_client) = if client_ip_config.proxy_protocol {
        let trusted = any_contains(&client_ip_config.trusted_proxies, peer.ip());
        let read = tokio::time::timeout(
            limits.header_read_timeout.0,
            proxy_protocol::read_header(stream),
        )
        .await;
        match read {
            Ok(Ok(Ok(Start::Plain(io)))) => (io, peer.ip()),
            Ok(Ok(Ok(Start::Proxied(header, io)))) if trusted => {
                let client = match header {
                    proxy_protocol::Header::Proxy { source, .. } => source.ip(),
                    proxy_protocol::Header::Local => peer.ip(),
                };
                (io, client)
            }
            Ok(Ok(Ok(Start::Proxied(..)))) => {
                refuse("untrusted_proxy_protocol");
                tracing::warn!(%peer, "PROXY header from an untrusted peer; connection closed");
                return;
            }
            Ok(Ok(Err(e))) => {
                refuse("bad_proxy_protocol");
                tracing::warn!(%peer, error = %e, "malformed PROXY header; connection closed");
                return;
            }
            Ok(Err(_)) | Err(_) => return,
        }
    } else {
        (PrefixedIo::new(Vec::new(), stream), peer.ip())
    };

    let permit = match gateway.conn_limiter.acquire(
        crate::policy::client_ip::limit_key(conn_client),
        limits.max_connections,
        limits.max_connections_per_ip,
    ) {
        Ok(permit) => permit,
        Err(reason) => {
            refuse(reason.label());
            return;
        }
    };
    let gauge = gateway
        .metrics
        .connections
        .with_label_values(&[kind.label()]);
    gauge.inc();
    let connection_gauge = ConnectionGauge(gauge);
    let client = ClientConn {
        peer,
        conn_client,
        scheme: match kind {
            ListenerKind::Https => Scheme::Https,
            ListenerKind::Http => Scheme::Http,
        },
    };
    match kind {
        ListenerKind::Https => {
            let Some(acceptor) = snapshot.tls_acceptor.clone() else {
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let version = match tls.get_ref().1.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "other",
                    };
                    gateway
                        .metrics
                        .tls_handshakes
                        .with_label_values(&[version])
                        .inc();
                    drop(snapshot);
                    let returned = serve_http(gateway, tls, client, watcher).await;
                    // The connection is no longer served: it stops counting against limits.
                    drop((permit, connection_gauge));
                    linger_close(peer, returned).await;
                }
                Ok(Err(e)) => {
                    gateway.metrics.tls_handshake_errors.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    gateway.metrics.tls_handshake_errors.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
        ListenerKind::Http => {
            drop(snapshot);
            let returned = serve_http(gateway, stream, client, watcher).await;
            drop((permit, connection_gauge));
            linger_close(peer, returned).await;
        }
    }
}

/// Serves HTTP on `stream`: HTTP/1.1 with hyper, h2 with [`super::h2`]. Hands the
/// connection back for a lingering close when it is done (not after an upgrade).
async fn serve_http<S>(
    gateway: Arc<Gateway>,
    stream: S,
    client: ClientConn,
    watcher: crate::drain::Watcher,
) -> Option<linger::Returned<PrefixedIo<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gateway.snapshot.load().config.limits.clone();
    // Fired at each answer: a connection is wound down only once it has answered one.
    let answered = Arc::new(tokio::sync::Notify::new());
    let answered_in_handler = answered.clone();
    let handler = move |mut req: http::Request<IncomingBody>| {
        let snapshot = gateway.snapshot.load_full();
        let gateway = gateway.clone();
        let answered = answered_in_handler.clone();
        // h2: a request body left unread by an early answer (413) stays open until the
        // response is sent, so the stream ends with NO_ERROR rather than CANCEL.
        let hold =
            (req.version() == http::Version::HTTP_2 && !req.body().is_end_stream()).then(|| {
                let hold = BodyHold::default();
                req.extensions_mut().insert(hold.clone());
                hold
            });
        // Boxed: the request future is several KB (4,552 bytes in a dev build); a box moves a
        // pointer into the connection's state or its stream set.
        Box::pin(async move {
            let response = match client.scheme {
                Scheme::Https => proxy::handle(&*gateway, &snapshot, req, client).await,
                Scheme::Http => match &snapshot.config.http {
                    Some(http) => {
                        let started = std::time::Instant::now();
                        let mut response = crate::redirect::handle(http, req).await;
                        snapshot
                            .default_headers
                            .apply(response.headers_mut(), false);
                        snapshot
                            .redirect_metrics
                            .observe(response.status().as_u16(), started.elapsed());
                        response
                    }
                    None => proxy::error_response(
                        &service_kit::ApiError::not_found("no HTTP listener configured"),
                        &service_kit::RequestId::generate(),
                    ),
                },
            };
            answered.notify_one();
            response.map(|body| Held::new(body, hold))
        })
    };
    // hyper's own limits sit far above ours so that ours answer first, as JSON (a head past
    // hyper's HTTP/1.1 buffer gets its bare 431; past h2's header list, 431 + REFUSED_STREAM,
    // which clients retry); its header timer also runs while an idle keep-alive connection
    // waits for the next request.
    let head_buffer = usize::try_from(limits.max_header_bytes.0)
        .unwrap_or(usize::MAX)
        .saturating_add(limits.max_uri_length)
        .saturating_mul(4)
        .max(HYPER_DEFAULT_BUFFER);
    let (stream, is_h2) = read_preface(stream, limits.header_read_timeout.0).await?;
    let (io, returned) = linger::track(stream);
    let served = if is_h2 {
        let settings = super::h2::Settings {
            max_concurrent_streams: limits.h2_max_concurrent_streams,
            max_header_list_size: u32::try_from(head_buffer).unwrap_or(u32::MAX),
            keepalive: limits.keepalive_timeout.0 / 3,
        };
        let wind_down = tokio::sync::Notify::new();
        let conn = super::h2::serve(io, settings, handler, &wind_down);
        watcher
            .watch(conn, |_| wind_down.notify_one(), &answered)
            .await
            .map_err(crate::body::WireError::from)
    } else {
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let response = handler(req.map(IncomingBody::Http1));
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.0)
            .max_buf_size(head_buffer)
            .max_headers(limits.max_headers.saturating_mul(4).max(400))
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        watcher
            .watch(conn, |conn| conn.graceful_shutdown(), &answered)
            .await
            .map_err(crate::body::WireError::from)
    };
    if let Err(e) = served {
        tracing::debug!(peer = %client.peer, error = %e, "client connection ended with an error");
    }
    linger::take_back(returned)
}

/// Reads what tells h2 from HTTP/1.1 (the h2 preface, or fewer bytes once they stop
/// matching it) within `limit`, and hands back a stream that replays them, and whether it
/// is h2. HTTP/1.1's header timer starts only after the first bytes, so without this a
/// client that sends nothing after the TLS handshake, or half a preface, would hold its
/// connection forever (slowloris). `None`: too slow, closed, or failed.
async fn read_preface<S>(mut stream: S, limit: Duration) -> Option<(PrefixedIo<S>, bool)>
where
    S: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let read = async {
        while filled < buf.len() && H2_PREFACE.starts_with(&buf[..filled]) {
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => filled += n,
            }
        }
        true
    };
    if !tokio::time::timeout(limit, read).await.unwrap_or(false) {
        return None;
    }
    let is_h2 = buf[..filled] == *H2_PREFACE;
    Some((PrefixedIo::new(buf[..filled].to_vec(), stream), is_h2))
}

/// hyper's default HTTP/1.1 read buffer (8 KiB + 100 × 4 KiB).
const HYPER_DEFAULT_BUFFER: usize = 8192 + 4096 * 100;

/// Closes an HTTP/1.1 connection after lingering (NGINX's `lingering_close`): a client still
/// sending a body we answered early (413) reads the answer instead of a reset.
async fn linger_close<S>(peer: SocketAddr, returned: Option<linger::Returned<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(returned) = returned {
        let discarded = linger::close(returned, linger::Linger::default()).await;
        if discarded > 0 {
            tracing::debug!(%peer, discarded, "lingered before closing");
        }
    }
}
