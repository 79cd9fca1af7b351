//! The sending half of an upstream connection, HTTP/1.1 or HTTP/2, and the shape an
//! HTTP/2 request takes (pure).
//!
//! The proxy builds every upstream request as HTTP/1.1 does: origin-form target, `Host`
//! header. An HTTP/2 connection sends it in absolute form instead (`:scheme` from the
//! transport, `:authority` from `Host`), as RFC 9113 §8.3.1 asks of a client that generates
//! HTTP/2 requests; `Host` is then dropped rather than sent twice.

use http::header;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};

use super::RequestBody;

/// A request handed back by a connection that could not send it.
type Unsent = TrySendError<Request<RequestBody>>;

/// The sending half of one upstream connection.
pub enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(Http2Sender),
}

/// An HTTP/2 connection's sending half: cheap to clone, shared by every request that the
/// connection carries at once.
#[derive(Clone)]
pub struct Http2Sender {
    pub(super) send: http2::SendRequest<RequestBody>,
    pub(super) scheme: Scheme,
    /// `:authority` for a request without a Host header: the server's address.
    pub(super) authority: Authority,
}

impl Sender {
    /// The connection is gone: nothing more can be sent on it.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.send.is_closed(),
        }
    }

    /// The connection can take a request now.
    pub fn is_ready(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => s.send.is_ready(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Sends `request`; a request the connection could not send comes back in the error.
    pub async fn try_send_request(
        &mut self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Unsent> {
        match self {
            Sender::Http1(s) => s.try_send_request(request).await,
            Sender::Http2(s) => {
                as_http2(&mut request, &s.scheme, &s.authority);
                s.send.try_send_request(request).await
            }
        }
    }

    /// Sends `request` (health checks: nothing to retry).
    pub async fn send_request(
        &mut self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.try_send_request(request)
            .await
            .map_err(TrySendError::into_error)
    }
}

/// Rewrites an HTTP/1.1-shaped request for HTTP/2: absolute target with `scheme` and the
/// Host header's authority (`fallback` without one, or with one that is no valid authority),
/// Host removed. A request already in that shape (handed back unsent, going again) is left
/// as it is.
pub fn as_http2(request: &mut Request<RequestBody>, scheme: &Scheme, fallback: &Authority) {
    *request.version_mut() = Version::HTTP_2;
    if request.uri().authority().is_some() {
        return;
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
    fn without_a_usable_host_the_server_address_is_the_authority() {
        let fallback = Authority::from_static("10.0.0.5:8443");
        for host in [None, Some("bad host")] {
            let mut r = request("/x", host);
            as_http2(&mut r, &Scheme::HTTP, &fallback);
            assert_eq!(r.uri(), "http://10.0.0.5:8443/x", "{host:?}");
        }
    }
}
