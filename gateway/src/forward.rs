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

/// A try's bound while a failover may be under way. A SYN sent while the VIP moves (the old
/// master's MAC is dead, the new one has not announced itself yet) is lost, and the kernel
/// would retransmit it only after a second: a fresh SYN every 25 ms reaches the new master
/// within 25 ms of its gratuitous ARP. The edge and the gateways share one L2 network, where
/// an answer takes well under a millisecond.
const FIRST_TRY: Duration = Duration::from_millis(25);
/// How long tries keep that pace (a failover takes 3 advert intervals and a skew); after it,
/// each try doubles its bound up to [`MAX_TRY`] (a slow gateway, not a moving VIP).
const FAST_TRIES: Duration = Duration::from_secs(1);
const MAX_TRY: Duration = Duration::from_millis(800);
/// Pause before another try after a refusal (the VIP is between holders, or a gateway is
/// restarting its listeners).
const REFUSED_PAUSE: Duration = Duration::from_millis(20);

/// The bound of the connect try after one that timed out, `elapsed` after the first try
/// began: [`FIRST_TRY`] for [`FAST_TRIES`], then doubled each time, up to [`MAX_TRY`].
pub fn next_try(bound: Duration, elapsed: Duration) -> Duration {
    if elapsed < FAST_TRIES {
        FIRST_TRY
    } else {
        (bound * 2).min(MAX_TRY)
    }
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
            Err(_) => bound = next_try(bound, CONNECT_TIMEOUT - left),
        }
    }
}

/// A gateway answers a ClientHello within milliseconds; one that has not after this is gone
/// (killed, or the VIP moved under the connection), and the hello goes to a new connection.
const HELLO_ANSWER: Duration = Duration::from_millis(250);
/// Sent bytes a gateway has not acknowledged for this long mean it is gone: the connection
/// is given up (TCP_USER_TIMEOUT) instead of retransmitting with backoff for seconds. The
/// gateways' kernels acknowledge within a millisecond on the shared network, busy or not.
const UNACKED_LIMIT: Duration = Duration::from_millis(500);

/// Most client bytes kept for a replay: a TLS ClientHello is well under this.
const REPLAY_LIMIT: usize = 16 * 1024;
/// Connections tried for one client while its hello goes unanswered.
const MAX_HELLO_TRIES: usize = 3;

/// Whether the client's first bytes may be sent again to a new connection when the gateway
/// closed the first without answering: only a TLS handshake record (0x16, version 3.x). A
/// server answers a ClientHello before it can read any request, and the gateways accept no
/// TLS 1.3 early data, so an unanswered hello means nothing was processed. Plain HTTP is
/// never replayed (the request may have been acted on).
pub fn replayable(first: &[u8]) -> bool {
    first.len() >= 2 && first[0] == 0x16 && first[1] == 0x03
}

/// What became of a connection to the gateway before it answered.
enum Hello {
    /// It answered: relay the rest as it comes.
    Answered(TcpStream),
    /// It closed or reset without a byte back, and what the client sent may go again.
    Unanswered,
    /// Give up (client gone, or nothing safe to replay).
    Done,
}

async fn relay(mut client: TcpStream, peer: SocketAddr, target: SocketAddr, proxy_protocol: bool) {
    let _ = client.set_nodelay(true);
    let header = proxy_protocol.then(|| {
        let destination = client.local_addr().unwrap_or(target);
        proxy_protocol::encode(peer, destination)
    });
    // The client's bytes sent to the gateway before it answered, for a replay.
    let mut sent = Vec::new();
    for _ in 0..MAX_HELLO_TRIES {
        let upstream = match connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, %target, error = %e, "forward: connect failed");
                return;
            }
        };
        match until_answered(&mut client, upstream, header.as_deref(), &mut sent).await {
            Hello::Answered(mut upstream) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Hello::Unanswered => {
                tracing::info!(%peer, %target, "forward: the gateway closed before answering the TLS hello; sending it again");
            }
            Hello::Done => return,
        }
    }
}

async fn wait_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends the PROXY header and what the client sent so far (`sent`, a replay), then relays
/// the client's bytes, keeping them in `sent` while they may be replayed, until the gateway
/// sends its first byte (passed on to the client).
async fn until_answered(
    client: &mut TcpStream,
    mut upstream: TcpStream,
    header: Option<&[u8]>,
    sent: &mut Vec<u8>,
) -> Hello {
    use tokio::io::AsyncReadExt;
    let _ = upstream.set_nodelay(true);
    let _ = socket2::SockRef::from(&upstream).set_tcp_user_timeout(Some(UNACKED_LIMIT));
    let mut hello_by = None;
    let mut keep = sent.is_empty() || replayable(sent);
    let unanswered = |keep: bool| if keep { Hello::Unanswered } else { Hello::Done };
    if let Some(h) = header {
        if upstream.write_all(h).await.is_err() {
            return unanswered(keep);
        }
    }
    if !sent.is_empty() {
        hello_by = Some(tokio::time::Instant::now() + HELLO_ANSWER);
        if upstream.write_all(sent).await.is_err() {
            return unanswered(keep);
        }
    }
    let mut from_client = [0u8; 4096];
    let mut from_upstream = [0u8; 4096];
    let mut client_open = true;
    loop {
        tokio::select! {
            read = client.read(&mut from_client), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = upstream.shutdown().await;
                }
                Ok(n) => {
                    let bytes = &from_client[..n];
                    hello_by.get_or_insert(tokio::time::Instant::now() + HELLO_ANSWER);
                    if keep {
                        sent.extend_from_slice(bytes);
                        keep = replayable(sent) && sent.len() <= REPLAY_LIMIT;
                    }
                    if upstream.write_all(bytes).await.is_err() {
                        return unanswered(keep);
                    }
                }
            },
            () = wait_until(hello_by), if keep && client_open => return Hello::Unanswered,
            read = upstream.read(&mut from_upstream) => match read {
                Ok(0) | Err(_) => return unanswered(keep && client_open),
                Ok(n) => {
                    if client.write_all(&from_upstream[..n]).await.is_err() {
                        return Hello::Done;
                    }
                    return Hello::Answered(upstream);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_tries_keep_a_fast_pace_for_a_second_then_double_up_to_a_cap() {
        let (mut bound, mut elapsed) = (FIRST_TRY, Duration::ZERO);
        let mut seen = vec![bound];
        while elapsed < Duration::from_secs(5) {
            elapsed += bound;
            bound = next_try(bound, elapsed);
            seen.push(bound);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        // 40 tries of 25 ms fill the first second.
        let mut want = vec![25; 40];
        want.extend([50, 100, 200, 400, 800, 800, 800, 800, 800, 800]);
        assert_eq!(ms, want);
    }

    #[test]
    fn only_a_tls_handshake_is_replayed() {
        assert!(replayable(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(replayable(&[0x16, 0x03]));
        assert!(!replayable(b"GET / HTTP/1.1\r\n"));
        assert!(!replayable(&[0x16]));
        assert!(!replayable(&[0x17, 0x03, 0x03]));
        assert!(!replayable(b""));
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
