//! The accept loop: TLS (or explicit plain HTTP), HTTP/1.1 and h2 with upgrades, graceful drain.
//!
//! Shutdown sequence, in the spirit of mini-redis's `server::run`:
//! 1. the `shutdown` future resolves (SIGTERM/SIGINT in `main`, anything in tests);
//! 2. readiness flips to 503 while connections are still accepted for `drain_delay`, so load
//!    balancers polling `/ready` see it and stop sending;
//! 3. the listener is closed: new connections are refused;
//! 4. open connections are told to finish (HTTP/1.1 closes after the current response, h2
//!    sends GOAWAY) and in-flight requests get up to `shutdown_timeout`.
//!
//! Errors at the protocol's edges are JSON too: hyper's head limits sit far above
//! [`MAX_HEAD_BYTES`], so a large head reaches our own check (JSON 431) instead of hyper's
//! bare one, and an HTTP/1.1 connection closed while the client may still be sending (a 413
//! answered before the body was read) lingers ([`linger`]) so the client reads the answer.

pub mod linger;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::health::Lifecycle;
use crate::request_id::RequestId;

/// Bytes of request head (request target + header fields) a backend accepts; more is a JSON
/// 431. Above the gateway's default limits, so anything the gateway forwards fits.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields a backend accepts; more is a JSON 431.
pub const MAX_HEADERS: usize = 200;
/// hyper's own limits (HTTP/1.1 read buffer, h2 header list): well above ours, so our check
/// answers first. Past them hyper answers itself (bare 431, or 431 + REFUSED_STREAM on h2).
const PARSER_HEAD_BYTES: usize = 4 * MAX_HEAD_BYTES;
/// HTTP/2 streams a client may have open on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`;
/// hyper's default, stated: the gateway opens another connection once this many are in
/// flight on one).
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 200;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time between readiness flipping to 503 and the listener closing.
    pub drain_delay: Duration,
    /// Upper bound for in-flight requests to finish once the listener is closed.
    pub shutdown_timeout: Duration,
    /// A client must complete the TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// An HTTP/1.1 client must send a complete request head within this time.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            drain_delay: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every in-flight request finished.
    Clean,
    /// `shutdown_timeout` passed with connections still open; they were abandoned.
    TimedOut,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    lifecycle: Lifecycle,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> Drained {
    let graceful = GracefulShutdown::new();
    let conn = ConnectionContext {
        tls,
        app,
        options: options.clone(),
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => conn.accept(accepted, graceful.watcher()),
            () = &mut shutdown => break,
        }
    }

    lifecycle.begin_drain();
    tracing::info!(
        drain_delay_ms = options.drain_delay.as_millis() as u64,
        "shutdown requested: readiness is now 503"
    );
    let delay = tokio::time::sleep(options.drain_delay);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => conn.accept(accepted, graceful.watcher()),
            () = &mut delay => break,
        }
    }
    drop(listener);
    tracing::info!("listener closed; waiting for in-flight requests");

    match tokio::time::timeout(options.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained cleanly");
            Drained::Clean
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = options.shutdown_timeout.as_millis() as u64,
                "shutdown timeout passed with requests still in flight"
            );
            Drained::TimedOut
        }
    }
}

struct ConnectionContext {
    tls: Option<TlsAcceptor>,
    app: Router,
    options: ServeOptions,
}

impl ConnectionContext {
    fn accept(&self, accepted: std::io::Result<(TcpStream, SocketAddr)>, watcher: Watcher) {
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: log and keep accepting rather than dying.
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = self.tls.clone();
        let app = self.app.clone();
        let options = self.options.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, peer, app, &options, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(stream, peer, app, &options, watcher).await,
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    options: &ServeOptions,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            if let Some(err) = check_head(&req) {
                let id = RequestId::from_headers(req.headers());
                tracing::info!(%peer, request_id = %id, status = err.status.as_u16(), "request head refused");
                return Ok(err.into_response_with_id(&id));
            }
            app.oneshot(req).await
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(PARSER_HEAD_BYTES)
        .max_headers(MAX_HEADERS * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(PARSER_HEAD_BYTES as u32);
    let (io, returned) = linger::track(stream);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    if let Some(returned) = linger::take_back(returned) {
        let discarded = linger::close(returned, linger::Linger::default()).await;
        if discarded > 0 {
            tracing::debug!(%peer, discarded, "lingered before closing");
        }
    }
}

/// Head limits (431), checked before the router sees the request.
fn check_head<B>(req: &http::Request<B>) -> Option<ApiError> {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("more than {MAX_HEADERS} header fields"),
        ));
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |p| p.as_str().len());
    let bytes = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .fold(target, usize::saturating_add);
    (bytes > MAX_HEAD_BYTES).then(|| {
        ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request head exceeds {MAX_HEAD_BYTES} bytes"),
        )
    })
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::extract::DefaultBodyLimit;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new()
            .route(
                "/echo",
                axum::routing::post(
                    |crate::json::ApiJson(v): crate::json::ApiJson<serde_json::Value>| async move {
                        v.to_string()
                    },
                ),
            )
            .layer(DefaultBodyLimit::max(crate::json::MAX_BODY_BYTES));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            None,
            app,
            Lifecycle::new(),
            async move {
                let _ = stopped.await;
            },
            ServeOptions::default(),
        ));
        (addr, stop)
    }

    async fn exchange(addr: SocketAddr, head: String, body_len: usize) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            if let Err(e) = stream.write_all(&chunk[..n]).await {
                return format!("write failed after {sent} bytes: {e}");
            }
            sent += n;
        }
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
        match read {
            Ok(Ok(_)) => String::from_utf8_lossy(&reply).into_owned(),
            other => format!(
                "read failed: {other:?}: {}",
                String::from_utf8_lossy(&reply)
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_heads_get_json_431_and_early_413s_are_read() {
        let (addr, _stop) = start().await;
        let fat = "v".repeat(70 * 1024);
        let reply = exchange(
            addr,
            format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-ID: big-1\r\nX-Fat: {fat}\r\nConnection: close\r\n\r\n"),
            0,
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        assert!(reply.contains(r#""code":"headers_too_large""#), "{reply}");
        assert!(reply.contains(r#""request_id":"big-1""#), "{reply}");

        // A client that writes its whole body before reading gets the 413, 40 times out of 40.
        for i in 0..40usize {
            let len = if i % 10 == 9 { 16 << 20 } else { 2 << 20 };
            let head = format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
            );
            let reply = exchange(addr, head, len).await;
            assert!(reply.starts_with("HTTP/1.1 413"), "try {i}: {reply}");
            assert!(reply.contains(r#""status":413"#), "try {i}: {reply}");
        }
    }
}
