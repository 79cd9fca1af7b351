//! Whether a kept-alive HTTP/1.1 upstream connection is still open, asked of the socket
//! itself when the connection is about to be reused.
//!
//! A server may close an idle keep-alive connection at any time (its idle timeout, a
//! graceful shutdown). hyper's connection task notices the close only when it next runs; a
//! request handed to the connection before that is written to a closed socket and fails
//! after it was sent, which a POST cannot recover from (502). The server's FIN (or a TLS
//! `close_notify` before it) is already in the socket's receive queue by then: one
//! non-blocking peek at checkout tells a closed connection from an idle one, and the request
//! goes to another connection instead.

use std::os::fd::AsFd;

/// A second descriptor of an upstream connection's socket, only ever peeked at.
pub struct Liveness(std::net::TcpStream);

impl Liveness {
    /// A probe of `tcp` (`None` when the descriptor cannot be duplicated: no probe then).
    pub fn of(tcp: &tokio::net::TcpStream) -> Option<Self> {
        let fd = tcp.as_fd().try_clone_to_owned().ok()?;
        Some(Liveness(std::net::TcpStream::from(fd)))
    }

    /// True while the server has neither closed the connection nor sent anything: an idle
    /// HTTP/1.1 connection has nothing to read, so bytes waiting there (a TLS alert, a stray
    /// response) mean it is not fit for a new request either. The socket is non-blocking
    /// (tokio's), so this never waits.
    pub fn idle_and_open(&self) -> bool {
        matches!(
            self.0.peek(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_closed_or_talking_socket_is_not_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let probe = Liveness::of(&client).unwrap();
        assert!(probe.idle_and_open());

        server.write_all(b"x").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!probe.idle_and_open(), "unread bytes");

        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let probe = Liveness::of(&client).unwrap();
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!probe.idle_and_open(), "closed by the server");
    }
}
