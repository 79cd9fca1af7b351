//! Lingering close for HTTP/1.1, after NGINX's `lingering_close`.
//!
//! When a server answers before reading the whole request (a 413 over the body limit, any
//! error that closes the connection), the client may still be sending. Closing a socket
//! with unread bytes makes the kernel send RST, and a client that writes its whole body
//! before reading (Python's http.client, many SDKs) then sees "connection reset" instead of
//! the answer already in its receive buffer. Lingering shuts down our sending side (TLS
//! close_notify + FIN) and reads and discards what the client still sends, for a bounded
//! time and byte count, so the client reads the answer and closes first.
//!
//! [`track`] wraps a connection's I/O; when hyper drops it at the end of the connection the
//! wrapper hands the I/O back (unless an upgrade took it), with what was seen on it: whether
//! the client closed its side, and whether it spoke h2 (which ends its streams itself).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Bounds of one lingering close (NGINX: `lingering_timeout 5s`, `lingering_time 30s`).
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// Longest wait for more bytes from the client.
    pub idle: Duration,
    /// Longest time spent lingering in total.
    pub total: Duration,
    /// Most bytes read and discarded.
    pub max_bytes: u64,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            idle: Duration::from_secs(2),
            total: Duration::from_secs(10),
            max_bytes: 64 << 20,
        }
    }
}

/// The connection's I/O, handed back when hyper is done with it.
pub struct Returned<S> {
    pub io: S,
    /// The client closed its sending side (a read returned end of stream).
    pub client_closed: bool,
    /// The connection spoke h2 (its first bytes were the h2 preface).
    pub h2: bool,
}

/// I/O that hands itself back through a channel when dropped.
pub struct Tracked<S> {
    io: Option<S>,
    back: Option<oneshot::Sender<Returned<S>>>,
    client_closed: bool,
    h2: Option<bool>,
}

/// Wraps `io`; the receiver gets it back when the wrapper is dropped.
pub fn track<S>(io: S) -> (Tracked<S>, oneshot::Receiver<Returned<S>>) {
    let (back, returned) = oneshot::channel();
    let tracked = Tracked {
        io: Some(io),
        back: Some(back),
        client_closed: false,
        h2: None,
    };
    (tracked, returned)
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(Returned {
                io,
                client_closed: self.client_closed,
                h2: self.h2.unwrap_or(false),
            });
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection already handed back",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let before = buf.filled().len();
        let room = buf.remaining();
        ready!(Pin::new(io).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            if room > 0 {
                this.client_closed = true;
            }
        } else if this.h2.is_none() {
            this.h2 = Some(read.starts_with(b"PRI "));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

/// Takes the connection back once hyper has finished with it: `None` when it is still in use
/// elsewhere (an upgrade, e.g. a WebSocket, took it).
pub fn take_back<S>(mut returned: oneshot::Receiver<Returned<S>>) -> Option<Returned<S>> {
    returned.try_recv().ok()
}

/// Closes an HTTP/1.1 connection the NGINX way: unless the client already closed (or it was
/// h2), shut down our side and read and discard until the client closes or a bound is hit.
/// Returns the bytes discarded.
pub async fn close<S>(returned: Returned<S>, bounds: Linger) -> u64
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if returned.client_closed || returned.h2 {
        return 0;
    }
    let mut io = returned.io;
    let deadline = Instant::now() + bounds.total;
    if tokio::time::timeout(bounds.idle, io.shutdown())
        .await
        .is_err()
    {
        return 0;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0u64;
    while discarded < bounds.max_bytes {
        let wait = bounds
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n as u64,
            _ => break,
        }
    }
    discarded
}
