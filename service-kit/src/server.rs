//! The accept loop: TLS (or explicit plain HTTP), HTTP/1.1 and h2 with upgrades, graceful drain.
//!
//! Shutdown sequence, in the spirit of mini-redis's `server::run`:
//! 1. the `shutdown` future resolves (SIGTERM/SIGINT in `main`, anything in tests);
//! 2. readiness flips to 503 while connections are still accepted for `drain_delay`, so load
//!    balancers polling `/ready` see it and stop sending;
//! 3. the listener is closed: new connections are refused;
//! 4. open connections are told to finish (HTTP/1.1 closes after the current response, h2
//!    sends GOAWAY) and in-flight requests get up to `shutdown_timeout`.

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

use crate::health::Lifecycle;

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
        async move { app.oneshot(req).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
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
