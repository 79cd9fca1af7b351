//! WebSocket (HTTP/1.1 Upgrade) tunnels: after both sides agreed to upgrade, bytes are
//! copied both ways until either side closes, the tunnel is idle too long, its upstream
//! server is removed from the config, or the gateway drains.
//!
//! Tunnels hold no config snapshot, so a reload that keeps their server leaves them alone.

use std::time::Duration;

use http::header::{self, HeaderMap};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// `Connection: upgrade` with `Upgrade: websocket`.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

/// What a tunnel watches besides its two sockets.
pub struct Tunnel {
    pub idle: Duration,
    /// Flips when the upstream server leaves the config.
    pub removed: watch::Receiver<bool>,
    /// Flips when the gateway drains.
    pub draining: watch::Receiver<bool>,
    /// Open tunnels (`gateway_websocket_tunnels`).
    pub open: prometheus::IntGauge,
    /// For the log line at close.
    pub server: String,
}

impl Tunnel {
    /// Answers a server's 101: the tunnel between the client's upgrade and the server's runs
    /// in its own task (see [`Tunnel::spawn`]); the returned head, the server's, goes to the
    /// client.
    pub fn switch<H: Send + 'static, B>(
        self,
        client: hyper::upgrade::OnUpgrade,
        mut response: http::Response<B>,
        hold: H,
    ) -> http::response::Parts {
        let upstream = hyper::upgrade::on(&mut response);
        self.spawn(client, upstream, hold);
        response.into_parts().0
    }

    /// After the server's 101: waits for both sides' upgrades, then pumps in its own task
    /// until an end. `hold` (the balancer's peer guard) lives as long as the tunnel, so the
    /// server counts the tunnel as an active connection.
    pub fn spawn<H: Send + 'static>(
        self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        hold: H,
    ) {
        tokio::spawn(async move {
            let _hold = hold;
            let (Ok(client_io), Ok(upstream_io)) = (client.await, upstream.await) else {
                return;
            };
            self.open.inc();
            let end = pump(
                client_io,
                upstream_io,
                self.idle,
                self.removed,
                self.draining,
            )
            .await;
            self.open.dec();
            tracing::info!(server = %self.server, ?end, "websocket closed");
        });
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    ClientClosed,
    UpstreamClosed,
    Idle,
    ServerRemoved,
    Draining,
    Error,
}

/// Copies bytes both ways. `removed` flips when the upstream server leaves the config;
/// `draining` when the gateway shuts down.
pub async fn pump(
    client: Upgraded,
    upstream: Upgraded,
    idle: Duration,
    mut removed: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
) -> TunnelEnd {
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let end = loop {
        if *removed.borrow() {
            break TunnelEnd::ServerRemoved;
        }
        let idle_timer = tokio::time::sleep(idle);
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) => break TunnelEnd::ClientClosed,
                Ok(n) => if upstream.write_all(&from_client[..n]).await.is_err() { break TunnelEnd::Error },
                Err(_) => break TunnelEnd::Error,
            },
            read = upstream.read(&mut from_upstream) => match read {
                Ok(0) => break TunnelEnd::UpstreamClosed,
                Ok(n) => if client.write_all(&from_upstream[..n]).await.is_err() { break TunnelEnd::Error },
                Err(_) => break TunnelEnd::Error,
            },
            () = idle_timer => break TunnelEnd::Idle,
            changed = removed.changed() => if changed.is_err() || *removed.borrow() { break TunnelEnd::ServerRemoved },
            changed = draining.changed() => if changed.is_err() || *draining.borrow() { break TunnelEnd::Draining },
        }
    };
    if matches!(
        end,
        TunnelEnd::Idle | TunnelEnd::ServerRemoved | TunnelEnd::Draining
    ) {
        // Tell the client why, with a close frame (1001 going away); the upstream side is
        // simply closed, which the server sees as an abnormal closure of a dead peer.
        let reason = match end {
            TunnelEnd::Idle => &b"idle timeout"[..],
            TunnelEnd::ServerRemoved => b"server removed",
            _ => b"gateway shutting down",
        };
        let mut frame = vec![0x88, (2 + reason.len()) as u8, 0x03, 0xe9];
        frame.extend_from_slice(reason);
        let _ = client.write_all(&frame).await;
    }
    let _ = client.shutdown().await;
    let _ = upstream.shutdown().await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_websocket_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_websocket_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_websocket_upgrade(&h));
        let mut only_upgrade = HeaderMap::new();
        only_upgrade.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_websocket_upgrade(&only_upgrade));
    }
}
