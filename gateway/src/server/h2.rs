//! h2 clients, served with the `h2` crate directly: every stream's handler runs on the
//! connection's own task.
//!
//! hyper's h2 server spawns a task per stream: each request's future moves into a new task,
//! and every frame it sends wakes the connection's task from another one. Here the streams
//! are a `FuturesUnordered` polled by the connection task between its reads and writes: a
//! response written by a stream is flushed by the same poll that produced it, and a stream
//! costs no spawn (`bench/PROFILE.md`, "h2 served from the connection task").
//!
//! What hyper's server did for us and is done here instead: the settings (windows, frame and
//! send-buffer sizes, header list limit, concurrent streams), keep-alive pings, a graceful
//! shutdown (GOAWAY, streams in flight finish), a stream reset by the client dropping its
//! handler (which cancels the upstream request), and on each response the connection-specific
//! fields removed, `date` added and `content-length` set from an exact body size.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::body::{pipe, IncomingBody};
use crate::keepalive::KeepAlive;

/// Flow-control windows, per stream and per connection (hyper's defaults, 1 MiB).
const WINDOW: u32 = 1024 * 1024;
/// The largest frame we accept (the protocol's default).
const MAX_FRAME: u32 = 16 * 1024;
/// Bytes a stream may queue for sending beyond what the client's window lets out.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client may make us reset for its errors before we close the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// What the client is told and held to.
pub(super) struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// A ping goes out this often, and the connection is closed when its answer takes
    /// longer; zero turns pings off.
    pub keepalive: Duration,
}

/// Serves an h2 connection whose preface is next on `io`, each stream answered by
/// `handler`, until the client closes it, it fails, or `wind_down` fires and the streams in
/// flight are done.
pub(super) async fn serve<T, H, F, B>(
    io: T,
    settings: Settings,
    mut handler: H,
    wind_down: &Notify,
) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<IncomingBody>) -> F,
    F: Future<Output = Response<B>> + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let mut wind_down = pin!(wind_down.notified());
    let mut conn = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut keepalive = conn
        .ping_pong()
        .filter(|_| !settings.keepalive.is_zero())
        .map(|ping| KeepAlive::new(ping, settings.keepalive, settings.keepalive));
    let mut streams = FuturesUnordered::new();
    let mut winding_down = false;
    poll_fn(|cx| {
        if !winding_down && wind_down.as_mut().poll(cx).is_ready() {
            winding_down = true;
            conn.graceful_shutdown();
        }
        if let Some(keepalive) = &mut keepalive {
            if keepalive.poll_timed_out(cx) {
                tracing::debug!("h2 client missed a keep-alive ping; connection closed");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            }
        }
        loop {
            // Streams first: what they write goes out with the connection's poll below.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let (head, body) = request.into_parts();
                    let body = IncomingBody::http2(body, &head.headers);
                    let response = handler(Request::from_parts(head, body));
                    streams.push(stream(response, respond));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// One stream: its response, unless the client resets the stream first (the handler is
/// then dropped, and the upstream request with it), then the response's body.
async fn stream<F, B>(mut response: F, mut respond: h2::server::SendResponse<Bytes>)
where
    F: Future<Output = Response<B>> + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    // The handler (boxed, several KB) is dropped as soon as it has answered, not kept while the
    // body streams.
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = Pin::new(&mut response).poll(cx) {
            return Poll::Ready(Some(response));
        }
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    // The head goes out from a plain function: its locals take no room in this future,
    // which the connection keeps once per stream in flight.
    if let Some((body, stream)) = response.and_then(|response| send_head(response, respond)) {
        let _ = pipe(body, stream, h2::Reason::INTERNAL_ERROR).await;
    }
}

/// Sends a response's head; the body and the stream to write it to, unless the head ended
/// the stream or could not be sent (the stream is then reset).
fn send_head<B>(
    response: Response<B>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Option<(B, h2::SendStream<Bytes>)>
where
    B: Body<Data = Bytes>,
{
    let (mut head, body) = response.into_parts();
    let end = body.is_end_stream();
    as_http2(
        &mut head.headers,
        (!end).then(|| body.size_hint().exact()).flatten(),
    );
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(stream) if !end => Some((body, stream)),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "h2 response head not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// Connection-specific fields, which an h2 message must not carry (RFC 9113 §8.2.2).
static CONNECTION_FIELDS: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A response head made fit for h2: connection-specific fields (and those `Connection`
/// names) and `TE` removed, `date` added when missing, `content-length` set from an exact
/// body size when missing.
fn as_http2(headers: &mut HeaderMap, exact_length: Option<u64>) {
    if let Some(listed) = headers.get(header::CONNECTION).cloned() {
        if let Ok(listed) = listed.to_str() {
            for name in listed.split(',') {
                headers.remove(name.trim());
            }
        }
    }
    for name in &CONNECTION_FIELDS {
        headers.remove(name);
    }
    headers.remove(header::TE);
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date::now());
    }
    if let Some(length) = exact_length {
        if !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
}

/// The `date` field, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::HeaderValue;

    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }

    pub fn now() -> HeaderValue {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let formatted = httpdate::fmt_http_date(now);
                // An HTTP date is ASCII: always a valid field value.
                if let Ok(value) = HeaderValue::from_str(&formatted) {
                    *cached = (second, value);
                }
            }
            cached.1.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_is_made_fit_for_h2() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        as_http2(&mut headers, Some(12));
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "date", "x-kept"]);
        assert_eq!(headers["content-length"], "12");
        assert!(httpdate::parse_http_date(headers["date"].to_str().unwrap()).is_ok());
    }

    #[test]
    fn fields_already_set_are_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "date",
            HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        headers.insert("content-length", HeaderValue::from_static("3"));
        as_http2(&mut headers, Some(3));
        assert_eq!(headers["date"], "Tue, 01 Dec 2026 10:00:00 GMT");
        assert_eq!(headers["content-length"], "3");

        let mut headers = HeaderMap::new();
        as_http2(&mut headers, None);
        assert!(!headers.contains_key("content-length"));
    }
}
