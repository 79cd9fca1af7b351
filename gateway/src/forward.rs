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

/// How long a client waits for the edge to reach a gateway before it is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first try's bound; each retry doubles it, up to [`MAX_TRY`]. A SYN sent while the VIP
/// moves (the old master's MAC is dead, the new one has not announced itself yet) is lost,
/// and the kernel would retransmit it only after a second: a short first bound and a fresh
/// SYN reach the new master within a few milliseconds of its gratuitous ARP.
const FIRST_TRY: Duration = Duration::from_millis(50);
const MAX_TRY: Duration = Duration::from_millis(800);
/// Pause before another try after a refusal (the VIP is between holders, or a gateway is
/// restarting its listeners).
const REFUSED_PAUSE: Duration = Duration::from_millis(20);

/// The bound of the connect try after one that timed out: doubled, up to [`MAX_TRY`].
pub fn next_try(bound: Duration) -> Duration {
    (bound * 2).min(MAX_TRY)
}

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

/// Connects to `target`, retrying lost SYNs and refusals within [`CONNECT_TIMEOUT`], so a
/// client whose connection arrives while the VIP moves is served by the new master instead
/// of failing: what the edge's users see of a failover is the detection time, not TCP's
/// one-second SYN retransmission.
async fn connect(target: SocketAddr) -> Result<TcpStream, std::io::Error> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut bound = FIRST_TRY;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            ));
        }
        match tokio::time::timeout(bound.min(left), TcpStream::connect(target)).await {
            Ok(Ok(stream)) => return Ok(stream),
            // Refused (or unreachable) at once: try again shortly, until the deadline.
            Ok(Err(e)) => {
                if deadline.saturating_duration_since(tokio::time::Instant::now()) <= REFUSED_PAUSE
                {
                    return Err(e);
                }
                tokio::time::sleep(REFUSED_PAUSE).await;
            }
            // No answer: the SYN was lost; a fresh one, with more patience.
            Err(_) => bound = next_try(bound),
        }
    }
}

async fn relay(mut client: TcpStream, peer: SocketAddr, target: SocketAddr, proxy_protocol: bool) {
    let _ = client.set_nodelay(true);
    let mut upstream = match connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, %target, error = %e, "forward: connect failed");
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
    fn connect_tries_double_up_to_a_cap() {
        let mut bound = FIRST_TRY;
        let mut seen = vec![bound];
        for _ in 0..6 {
            bound = next_try(bound);
            seen.push(bound);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 800, 800]);
    }

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
