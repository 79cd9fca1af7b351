//! The upstream response body on its way to the client; the connection goes back to its
//! server's idle cache once the body was read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{Checkout, PeerGuard, Sender, ServerConns, StreamCount, UpstreamShared};
use crate::body::{IncomingBody, WireError};

/// The upstream response body streamed to the client. When it has been read to the end the
/// connection goes back to the cache; when it is dropped the balancer is told the request
/// ended (least_conn counts requests until their body is done, as NGINX does).
pub struct UpstreamBody {
    inner: IncomingBody,
    checkin: Option<Checkin>,
    finished: bool,
    _peer: PeerGuard,
}

struct Checkin {
    sender: Sender,
    generation: u64,
    server: Arc<ServerConns>,
    shared: Arc<UpstreamShared>,
    limit: usize,
    /// HTTP/2: the stream, counted on its shared connection until the body ends or is
    /// dropped.
    _stream: Option<StreamCount>,
}

impl UpstreamBody {
    pub fn new(
        inner: IncomingBody,
        checkout: Checkout,
        server: Arc<ServerConns>,
        peer: PeerGuard,
        keepalive: usize,
    ) -> Self {
        let shared = peer.shared.clone();
        UpstreamBody {
            inner,
            checkin: Some(Checkin {
                sender: checkout.sender,
                generation: checkout.generation,
                server,
                shared,
                limit: keepalive,
                _stream: checkout.stream,
            }),
            finished: false,
            _peer: peer,
        }
    }

    fn give_back(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.server
                .checkin(c.sender, c.generation, c.limit, c.shared.idle_total());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                self.finished = true;
                self.give_back();
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken connection is never reused.
                self.checkin = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.finished || self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
