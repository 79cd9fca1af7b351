//! Bodies as they come off and go onto the wire, on either side of the gateway: a body read
//! from an HTTP/1.1 (hyper) or HTTP/2 (`h2`) stream, and the pipe that writes a body to an
//! HTTP/2 stream as the peer's flow control allows.
//!
//! The client's request body and the upstream's response body are the same type: both are
//! read from a connection the gateway holds, with either protocol.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A protocol error from either side's HTTP/1.1 or HTTP/2 implementation.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
}

/// A body read from a connection, HTTP/1.1 or HTTP/2.
pub enum IncomingBody {
    Http1(hyper::body::Incoming),
    /// Each chunk read gives its bytes back to the stream's and the connection's flow-control
    /// windows at once: the body is not buffered here, it goes on to the other side.
    Http2(H2Body),
}

/// An HTTP/2 stream's body, with what its `content-length` says is still to come (`h2`
/// itself refuses a body that disagrees with it).
pub struct H2Body {
    stream: h2::RecvStream,
    remaining: Option<u64>,
}

impl IncomingBody {
    /// An HTTP/2 stream's body; `headers` are its message's, for the length it announces.
    pub fn http2(stream: h2::RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        IncomingBody::Http2(H2Body { stream, remaining })
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        match self.get_mut() {
            IncomingBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(WireError::from),
            IncomingBody::Http2(body) => match body.stream.poll_data(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = body.stream.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut body.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => match body.stream.poll_trailers(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(Some(trailers))) => {
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Poll::Ready(Ok(None)) => Poll::Ready(None),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            IncomingBody::Http1(body) => body.is_end_stream(),
            IncomingBody::Http2(body) => body.stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            IncomingBody::Http1(body) => body.size_hint(),
            IncomingBody::Http2(H2Body {
                remaining: Some(n), ..
            }) => SizeHint::with_exact(*n),
            IncomingBody::Http2(_) => SizeHint::default(),
        }
    }
}

/// How a pipe to an HTTP/2 stream ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeEnd {
    /// The body failed; the stream was reset.
    Body,
    /// The peer reset the stream or the connection went away; the body was dropped unread.
    Peer,
}

/// Writes `body` to an HTTP/2 stream whose head has gone out, as the peer's flow control
/// allows, trailers included. A body that fails resets the stream with `on_error`; a peer
/// that resets it stops the pipe at once, even while the body has nothing to give (the
/// caller drops the body, which cancels whatever produces it).
///
/// `B: Unpin` so the body is polled where it lies: pinning it here would move it into a
/// second slot of this future, which the h2 server keeps once per stream in flight.
pub async fn pipe<B>(
    mut body: B,
    mut stream: h2::SendStream<Bytes>,
    on_error: h2::Reason,
) -> Result<(), PipeEnd>
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let frame = std::future::poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(PipeEnd::Peer));
            }
            std::pin::Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => {
                return stream
                    .send_data(Bytes::new(), true)
                    .map_err(|_| PipeEnd::Peer)
            }
            Some(Err(_)) => {
                stream.send_reset(on_error);
                return Err(PipeEnd::Body);
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => return stream.send_trailers(trailers).map_err(|_| PipeEnd::Peer),
                Err(_) => continue,
            },
        };
        let end = body.is_end_stream();
        if data.is_empty() {
            if end {
                return stream.send_data(data, true).map_err(|_| PipeEnd::Peer);
            }
            continue;
        }
        // h2 queues what it is given: capacity is asked for the chunk in hand only (never
        // ahead of the body, which could pin the connection's window for a stream that then
        // has nothing to send), and the chunk goes out in the pieces granted.
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // The stream was reset or the connection is gone.
                _ => return Err(PipeEnd::Peer),
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            let last = end && data.is_empty();
            stream.send_data(chunk, last).map_err(|_| PipeEnd::Peer)?;
        }
        if end {
            return Ok(());
        }
    }
}
