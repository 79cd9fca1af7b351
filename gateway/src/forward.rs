//! `gateway forward`: the edge forwarder. A plain TCP relay from published ports to the VIP,
//! optionally prefixing each connection with a PROXY v2 header so the gateways see the true
//! client address. devctl runs it as the container that publishes 127.0.0.1:8443/8080, which
//! keeps the VIP reachable from the host even where container IPs are not (Docker Desktop).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::policy::proxy_protocol;

/// `LISTEN=TARGET`, e.g. `0.0.0.0:8443=172.28.1.100:443`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

impl std::str::FromStr for Mapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (listen, target) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid mapping {s:?}: expected LISTEN=TARGET"))?;
        Ok(Mapping {
            listen: listen
                .parse()
                .map_err(|_| format!("invalid listen address {listen:?} in {s:?}"))?,
            target: target
                .parse()
                .map_err(|_| format!("invalid target address {target:?} in {s:?}"))?,
        })
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds every mapping, then relays until the process ends.
pub async fn run(mappings: Vec<Mapping>, proxy_protocol: bool) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for m in &mappings {
        let listener = TcpListener::bind(m.listen).await?;
        tracing::info!(listener = "forward", addr = %listener.local_addr()?, target = %m.target, "listening");
        listeners.push((listener, m.target));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, target) in listeners {
        tasks.spawn(accept_loop(listener, target, proxy_protocol));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, proxy_protocol: bool) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(relay(client, peer, target, proxy_protocol));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn relay(mut client: TcpStream, peer: SocketAddr, target: SocketAddr, proxy_protocol: bool) {
    let _ = client.set_nodelay(true);
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, %target, error = %e, "forward: connect failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, %target, "forward: connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if proxy_protocol {
        let destination = client.local_addr().unwrap_or(target);
        if upstream
            .write_all(&proxy_protocol::encode(peer, destination))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mappings() {
        let m: Mapping = "0.0.0.0:8443=172.28.1.100:443".parse().unwrap();
        assert_eq!(m.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(m.target, "172.28.1.100:443".parse().unwrap());
        for bad in ["0.0.0.0:8443", "x=1.2.3.4:5", "0.0.0.0:1=host:2"] {
            assert!(bad.parse::<Mapping>().is_err(), "{bad}");
        }
    }
}
