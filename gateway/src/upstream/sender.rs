//! The sending half of an upstream connection, HTTP/1.1 or HTTP/2, and the shape an
//! HTTP/2 request takes (pure).
//!
//! The proxy builds every upstream request as HTTP/1.1 does: origin-form target, `Host`
//! header. An HTTP/2 connection sends it in absolute form instead (`:scheme` from the
//! transport, `:authority` from `Host`), as RFC 9113 §8.3.1 asks of a client that generates
//! HTTP/2 requests; `Host` is then dropped rather than sent twice.
//!
//! HTTP/1.1 goes through hyper's client. HTTP/2 drives the `h2` crate's `SendRequest` from
//! the request's own task: hyper's h2 client would pass each request through a channel to a
//! dispatch task that spawns a task per request to await its response (`bench/PROFILE.md`,
//! "h2 with HTTP/2 upstreams"); here the connection's task wakes the request's task directly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::client::conn::http1;

use super::RequestBody;
use crate::body::{IncomingBody, WireError};

/// A request a connection could not carry: the error, and the request when none of it was
/// sent (it may go again as it is), or the body to send again when the server refused the
/// request unprocessed (the head went; the caller kept a copy if it wants one).
pub struct SendFailure {
    pub error: WireError,
    pub request: Option<Request<RequestBody>>,
    pub refused: Option<RequestBody>,
}

/// The sending half of one upstream connection.
pub enum Sender {
    Http1(Http1Sender),
    Http2(Http2Sender),
}

/// An HTTP/1.1 connection's sending half.
pub struct Http1Sender {
    pub(super) send: http1::SendRequest<RequestBody>,
    /// Asked before the connection is reused (`None`: not probed).
    pub(super) liveness: Option<super::liveness::Liveness>,
}

/// An HTTP/2 connection's sending half: cheap to clone, shared by every request that the
/// connection carries at once.
#[derive(Clone)]
pub struct Http2Sender {
    pub(super) send: h2::client::SendRequest<Bytes>,
    pub(super) scheme: Scheme,
    /// `:authority` for a request without a Host header: the server's address.
    pub(super) authority: Authority,
    /// Cleared when the connection's task ends.
    pub(super) open: Arc<AtomicBool>,
}

impl Sender {
    /// The connection is gone: nothing more can be sent on it.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.send.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// The connection can take a request now: for HTTP/1.1, hyper's dispatch waits for one
    /// and the server has not closed the socket meanwhile (`liveness`).
    pub fn is_ready(&self) -> bool {
        match self {
            Sender::Http1(s) => {
                s.send.is_ready() && s.liveness.as_ref().is_none_or(|l| l.idle_and_open())
            }
            Sender::Http2(s) => !s.is_closed(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Sends `request`; a request the connection could not send comes back in the error.
    /// (Not an `async fn`: one keeps its arguments twice in its future, as arguments and as
    /// locals; an `async move` block uses them where they are. The request path's functions
    /// are written this way, see ARCHITECTURE.md on future sizes.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub fn try_send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<IncomingBody>, SendFailure>> + '_ {
        async move {
            match self {
                Sender::Http1(s) => match s.send.try_send_request(request).await {
                    Ok(response) => Ok(response.map(IncomingBody::Http1)),
                    Err(mut e) => Err(SendFailure {
                        request: e.take_message(),
                        error: e.into_error().into(),
                        refused: None,
                    }),
                },
                Sender::Http2(s) => s.send(request).await,
            }
        }
    }

    /// Sends `request` (health checks: nothing to retry).
    pub async fn send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<IncomingBody>, WireError> {
        self.try_send_request(request).await.map_err(|f| f.error)
    }
}

impl Http2Sender {
    pub fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Relaxed)
    }

    /// Streams the server takes at once on this connection (its latest
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; unlimited when it names none).
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    fn send(
        &mut self,
        mut request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<IncomingBody>, SendFailure>> + '_ {
        async move {
            // A connection that failed comes back here, before the request is taken: it goes
            // back to the caller whole. Polled on this checkout's own handle: `ready()` would
            // take a clone, and each clone and drop of one takes the connection's lock.
            if let Err(error) = std::future::poll_fn(|cx| self.send.poll_ready(cx)).await {
                return Err(SendFailure {
                    error: error.into(),
                    request: Some(request),
                    refused: None,
                });
            }
            let send = &mut self.send;
            as_http2(&mut request, &self.scheme, &self.authority);
            let (head, mut body) = request.into_parts();
            let end = body.is_end_stream();
            let sent = |error: h2::Error| SendFailure {
                error: error.into(),
                request: None,
                refused: None,
            };
            let (response, stream) = send
                .send_request(Request::from_parts(head, ()), end)
                .map_err(sent)?;
            // The body comes back from its pipe when it is done (recorded for a replay if the
            // caller asked, `RequestBody::record`).
            let (body, piped) = if end {
                (Some(body), None)
            } else {
                let (back, piped) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let _ = crate::body::pipe(&mut body, stream, h2::Reason::CANCEL).await;
                    let _ = back.send(body);
                });
                (None, Some(piped))
            };
            let response = match response.await {
                Ok(response) => response,
                Err(error) if refused_unprocessed(&error) => {
                    // No more streams on a connection that is going away.
                    if error.is_go_away() {
                        self.open.store(false, Ordering::Relaxed);
                    }
                    let refused = match piped {
                        None => body,
                        Some(piped) => piped.await.ok().and_then(RequestBody::replay),
                    };
                    return Err(SendFailure {
                        error: error.into(),
                        request: None,
                        refused,
                    });
                }
                Err(error) => return Err(sent(error)),
            };
            let (head, body) = response.into_parts();
            let body = IncomingBody::http2(body, &head.headers);
            Ok(Response::from_parts(head, body))
        }
    }
}

/// The server did not process the stream, so the request may go again whatever its
/// method (RFC 9113 §8.7): it reset it with REFUSED_STREAM, or its GOAWAY named a last
/// stream below it (`h2` fails exactly those streams with the GOAWAY's error).
fn refused_unprocessed(error: &h2::Error) -> bool {
    error.is_remote()
        && (error.is_go_away()
            || (error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// Connection-specific fields, which HTTP/2 forbids (RFC 9113 §8.2.2).
const CONNECTION_FIELDS: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Rewrites an HTTP/1.1-shaped request for HTTP/2: absolute target with `scheme` and the
/// Host header's authority (`fallback` without one, or with one that is no valid authority),
/// Host and the connection-specific fields removed (`TE` kept only as `trailers`). A request already in that shape (handed back unsent, going again) is left
/// as it is.
pub fn as_http2(request: &mut Request<RequestBody>, scheme: &Scheme, fallback: &Authority) {
    *request.version_mut() = Version::HTTP_2;
    if request.uri().authority().is_some() {
        return;
    }
    let headers = request.headers_mut();
    for name in &CONNECTION_FIELDS {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
    let authority = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| fallback.clone());
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set: `from_parts` cannot fail.
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::Empty);
        *r.uri_mut() = uri.parse().unwrap();
        if let Some(host) = host {
            r.headers_mut().insert(header::HOST, host.parse().unwrap());
        }
        r
    }

    #[test]
    fn host_becomes_the_authority() {
        let fallback = Authority::from_static("10.0.0.5:8443");
        let mut r = request("/api/v1/users?page=2", Some("api.example.com"));
        as_http2(&mut r, &Scheme::HTTPS, &fallback);
        assert_eq!(r.uri(), "https://api.example.com/api/v1/users?page=2");
        assert_eq!(r.version(), Version::HTTP_2);
        assert!(!r.headers().contains_key(header::HOST));

        // Going again (handed back unsent): unchanged.
        as_http2(&mut r, &Scheme::HTTP, &fallback);
        assert_eq!(r.uri(), "https://api.example.com/api/v1/users?page=2");
    }

    #[test]
    fn connection_specific_fields_are_dropped() {
        let fallback = Authority::from_static("10.0.0.5:8443");
        let mut r = request("/x", Some("api.example.com"));
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ] {
            r.headers_mut().insert(name, value.parse().unwrap());
        }
        as_http2(&mut r, &Scheme::HTTPS, &fallback);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);

        let mut r = request("/x", None);
        r.headers_mut().insert("te", "trailers".parse().unwrap());
        as_http2(&mut r, &Scheme::HTTPS, &fallback);
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn without_a_usable_host_the_server_address_is_the_authority() {
        let fallback = Authority::from_static("10.0.0.5:8443");
        for host in [None, Some("bad host")] {
            let mut r = request("/x", host);
            as_http2(&mut r, &Scheme::HTTP, &fallback);
            assert_eq!(r.uri(), "http://10.0.0.5:8443/x", "{host:?}");
        }
    }
}
