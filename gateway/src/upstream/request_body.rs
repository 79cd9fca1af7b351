//! The client's request body on its way upstream: streamed under the route's size limit,
//! handed back whole when a try never sent it, held open for h2 until the answer is out.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::body::IncomingBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// Keeps a client's h2 request body open until the response to it has been sent.
///
/// An h2 stream whose request body is dropped before the response went out is reset with
/// CANCEL, and clients report that instead of the response (curl error 92). Held until the
/// response body is done, the body's drop comes after the response's end, and h2 then ends
/// the stream with RST_STREAM(NO_ERROR) as RFC 9113 §8.1 asks of an early response.
#[derive(Clone, Default)]
pub struct BodyHold(Arc<Mutex<Option<IncomingBody>>>);

impl BodyHold {
    /// Keeps `body` until every clone of this hold is dropped.
    pub fn keep(&self, body: IncomingBody) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
    }

    /// After the response was sent: reads and discards what the client still sends, within
    /// the lingering bounds, then drops the body (RST_STREAM(NO_ERROR) if it is not done).
    /// Clients that treat any reset during an upload as a failure (curl 7.x) then read the
    /// response; a client that keeps sending past the bounds is reset.
    pub fn release(&self) {
        let body = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(mut body), Ok(runtime)) = (body, tokio::runtime::Handle::try_current()) else {
            return;
        };
        runtime.spawn(async move {
            let bounds = service_kit::server::linger::Linger::default();
            let deadline = tokio::time::Instant::now() + bounds.total;
            let mut discarded = 0u64;
            while discarded < bounds.max_bytes && !body.is_end_stream() {
                let wait = bounds
                    .idle
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, http_body_util::BodyExt::frame(&mut body)).await {
                    Ok(Some(Ok(frame))) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    _ => break,
                }
            }
        });
    }
}

/// The body sent upstream: nothing, or the client's body streamed through with a size cap.
/// Kept to a pointer: hyper's dispatch channel preallocates blocks of 32 request envelopes
/// per upstream connection (~10 KB each with the body inline), and with h2 clients there is
/// an upstream connection per stream in flight.
pub enum RequestBody {
    Empty,
    Stream(Box<StreamBody>),
}

/// The most of a body kept to send it again (`RequestBody::record`).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The client's body on its way upstream.
pub struct StreamBody {
    /// Chunks sent once already, going again first (a replayed body), last one first.
    again: Vec<Bytes>,
    /// What has been yielded, while it may have to go again (`None`: not recorded, or past
    /// `REPLAY_LIMIT`, or it had trailers).
    recorded: Option<Recording>,
    body: IncomingBody,
    /// Bytes still allowed (`client_max_body_size`).
    remaining: u64,
    /// Set when the client's body is at fault (too large, or broken).
    fault: Arc<BodyFault>,
    /// Where the client body goes when it exceeds the limit (h2 clients).
    hold: Option<BodyHold>,
}

#[derive(Default)]
struct Recording {
    chunks: Vec<Bytes>,
    bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds client_max_body_size")]
pub struct BodyTooLarge;

/// Why a try failed on the client's side while its body streamed upstream: the upstream
/// server is not to blame for these (no passive-health failure, no 502).
#[derive(Debug, Default)]
pub struct BodyFault {
    /// The client sent more than allowed; the proxy answers 413.
    too_large: AtomicBool,
    /// The client's body broke (bad chunked framing, a reset h2 stream); the proxy answers 400.
    broken: AtomicBool,
}

impl BodyFault {
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

impl RequestBody {
    pub fn limited(
        body: IncomingBody,
        limit: u64,
        hold: Option<BodyHold>,
    ) -> (Self, Arc<BodyFault>) {
        let fault = Arc::new(BodyFault::default());
        (
            RequestBody::Stream(Box::new(StreamBody {
                again: Vec::new(),
                recorded: None,
                body,
                remaining: limit,
                fault: fault.clone(),
                hold,
            })),
            fault,
        )
    }

    /// From now on, keeps what is sent (up to `REPLAY_LIMIT`), for `replay`.
    pub fn record(&mut self) {
        if let RequestBody::Stream(stream) = self {
            stream.recorded = Some(Recording::default());
        }
    }

    /// The body again from its start, for a try on another connection after the server
    /// refused the stream unprocessed: what was recorded first, then the rest of the
    /// client's body. `None` when what was sent was not all recorded.
    pub fn replay(self) -> Option<Self> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Stream(mut stream) => {
                let recorded = stream.recorded.take()?;
                // `again` is a stack (last first): what is still to go again goes under
                // what was sent.
                stream.again.extend(recorded.chunks.into_iter().rev());
                Some(RequestBody::Stream(stream))
            }
        }
    }
}

impl StreamBody {
    fn note_sent(&mut self, frame: &Frame<Bytes>) {
        let Some(recording) = &mut self.recorded else {
            return;
        };
        match frame.data_ref() {
            Some(data) if recording.bytes + data.len() <= REPLAY_LIMIT => {
                recording.bytes += data.len();
                recording.chunks.push(data.clone());
            }
            _ => self.recorded = None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(stream) if !stream.again.is_empty() => {
                // Counted against the limit the first time it went.
                let frame = Frame::data(stream.again.pop().unwrap_or_default());
                stream.note_sent(&frame);
                Poll::Ready(Some(Ok(frame)))
            }
            RequestBody::Stream(stream) => match Pin::new(&mut stream.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > stream.remaining {
                        stream.fault.too_large.store(true, Ordering::Relaxed);
                        if let RequestBody::Stream(stream) =
                            std::mem::replace(this, RequestBody::Empty)
                        {
                            if let Some(hold) = stream.hold {
                                hold.keep(stream.body);
                            }
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    stream.remaining -= len;
                    stream.note_sent(&frame);
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    stream.fault.broken.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(stream) => stream.again.is_empty() && stream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(stream) => {
                let again = stream.again.iter().map(|c| c.len() as u64).sum::<u64>();
                let rest = stream.body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + again);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + again);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// hyper's dispatch channel keeps blocks of 32 request envelopes per upstream connection:
    /// the body inline would add its size 32 times to every connection.
    #[test]
    fn the_upstream_request_body_is_one_pointer() {
        assert_eq!(
            std::mem::size_of::<super::RequestBody>(),
            std::mem::size_of::<usize>()
        );
    }
}
