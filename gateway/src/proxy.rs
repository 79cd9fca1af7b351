//! The request path: request id → path normalization → route → upstream tries → response.
//!
//! Retries follow NGINX's `proxy_next_upstream error timeout http_502 http_503 http_504`:
//! a failed try moves to the next server while tries and `next_upstream_timeout` allow. A
//! request whose body was already streamed upstream is never replayed, and non-idempotent
//! methods are retried only when the failure happened before anything was sent.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use crate::balance::{Attempt, Outcome};
use crate::config::HashKey;
use crate::metrics::TryOutcome;
use crate::routing::normalize_path;
use crate::runtime::{RouteTarget, Snapshot};
use crate::upstream::{RequestBody, UpstreamBody};

pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the listener knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub peer: SocketAddr,
    pub scheme: Scheme,
}

/// Renders an error as the JSON contract, with the request id header.
pub fn error_response(err: &ApiError, id: &RequestId) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(
        err.to_json(id.as_str()),
    ))));
    *response.status_mut() = err.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(request_id::HEADER, id.header_value());
    response
}

/// What the access log records about the upstream side of a request.
#[derive(Default)]
struct UpstreamTrace {
    server: Option<String>,
    status: Option<u16>,
    tries: u32,
}

/// Serves one proxied request against `snapshot`.
pub async fn handle(
    snapshot: &Snapshot,
    req: Request<Incoming>,
    client: ClientConn,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let id = RequestId::from_headers(req.headers());
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let mut trace = UpstreamTrace::default();

    let (response, route_label) = match route(snapshot, &req) {
        Err(err) => (error_response(&err, &id), None),
        Ok((target, path)) => {
            let response = match forward(target, req, &path, client, &id, &mut trace).await {
                Ok(response) => response,
                Err(err) => error_response(&err, &id),
            };
            (response, Some(target))
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    match route_label {
        Some(target) => target.metrics.observe(status, elapsed),
        None => snapshot.unrouted.observe(status, elapsed),
    }
    tracing::info!(
        target: "access",
        request_id = %id,
        client = %client.peer.ip(),
        method = %method,
        path = %raw_path,
        route = route_label.map_or("none", |t| t.label.as_str()),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream = trace.server.as_deref().unwrap_or("-"),
        upstream_status = trace.status.unwrap_or(0),
        tries = trace.tries,
        "request"
    );
    response
}

fn route<'s>(
    snapshot: &'s Snapshot,
    req: &Request<Incoming>,
) -> Result<(&'s RouteTarget, String), ApiError> {
    let path = normalize_path(req.uri().path())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", format!("{e}")))?;
    let host = request_host(req);
    let route = snapshot.router.find(host, &path).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no_route", "no route for this path")
    })?;
    Ok((&route.target, path))
}

/// The Host header, or the h2 `:authority`.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

async fn forward(
    target: &RouteTarget,
    req: Request<Incoming>,
    path: &str,
    client: ClientConn,
    id: &RequestId,
    trace: &mut UpstreamTrace,
) -> Result<Response<ResponseBody>, ApiError> {
    let upstream = &target.upstream;
    let (parts, body) = req.into_parts();
    let replayable = body.is_end_stream();
    let mut body = if replayable { None } else { Some(body) };
    let idempotent = is_idempotent(&parts.method);
    let uri = upstream_uri(path, parts.uri.query())?;
    let headers = upstream_headers(&parts, client, id);
    let key = upstream
        .hash_key
        .as_ref()
        .and_then(|k| hash_key(k, &parts.headers, client));

    let max_tries = upstream
        .tries
        .unwrap_or_else(|| upstream.shared.default_tries())
        .max(1);
    let deadline = upstream.next_upstream_timeout.map(|t| Instant::now() + t);
    let mut attempt = Attempt::new();
    let mut last_error = None;

    while (trace.tries as usize) < max_tries {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let Some((mut peer, server)) = upstream.shared.select(&mut attempt, key.as_deref()) else {
            if trace.tries == 0 {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_live_upstream",
                    "no upstream server is available",
                ));
            }
            break;
        };
        if trace.tries > 0 {
            upstream.retries.inc();
        }
        trace.tries += 1;
        trace.server = Some(server.key.clone());

        let mut checkout = match server
            .checkout(&upstream.transport, upstream.shared.idle_total())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request_id = %id, server = %server.key, error = %e, "upstream connect failed");
                peer.set_outcome(Outcome::Failure);
                server.count(
                    if matches!(e, crate::upstream::ConnectError::Timeout { .. }) {
                        TryOutcome::Timeout
                    } else {
                        TryOutcome::ConnectError
                    },
                );
                last_error = Some(bad_gateway("could not connect to an upstream server"));
                continue;
            }
        };

        let try_body = if replayable {
            RequestBody::Empty
        } else {
            match body.take() {
                Some(b) => RequestBody::Stream(b),
                None => break,
            }
        };
        let mut request = Request::new(try_body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers.clone();

        let sent = tokio::time::timeout(
            target.read_timeout,
            send_with_stale_retry(&mut checkout, request, &server, upstream),
        )
        .await;
        match sent {
            Err(_) => {
                peer.set_outcome(Outcome::Failure);
                server.count(TryOutcome::Timeout);
                tracing::warn!(request_id = %id, server = %server.key, timeout_ms = target.read_timeout.as_millis() as u64, "upstream timed out");
                last_error = Some(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream server did not answer in time",
                ));
                if !(idempotent && replayable) {
                    break;
                }
            }
            Ok(Err(unsent)) => {
                peer.set_outcome(Outcome::Failure);
                server.count(TryOutcome::Error);
                tracing::warn!(request_id = %id, server = %server.key, error = %unsent.error, "upstream request failed");
                last_error = Some(bad_gateway("the upstream server failed to answer"));
                match unsent.request {
                    // Nothing reached the server: any request may go to the next one.
                    Some(request) => {
                        if let RequestBody::Stream(b) = request.into_body() {
                            body = Some(b);
                        }
                    }
                    None if idempotent && replayable => {}
                    None => break,
                }
            }
            Ok(Ok(response)) => {
                let status = response.status();
                trace.status = Some(status.as_u16());
                let next_upstream = matches!(status.as_u16(), 502..=504);
                if next_upstream {
                    peer.set_outcome(Outcome::Failure);
                    server.count(TryOutcome::Http5xx);
                    let more = (trace.tries as usize) < max_tries
                        && deadline.is_none_or(|d| Instant::now() < d);
                    if idempotent && replayable && more {
                        last_error = Some(bad_gateway(&format!(
                            "upstream servers answered {}",
                            status.as_u16()
                        )));
                        continue;
                    }
                } else {
                    server.count(TryOutcome::Ok);
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers.insert(request_id::HEADER, id.header_value());
                let body = UpstreamBody::new(
                    incoming,
                    checkout,
                    server,
                    peer,
                    upstream.transport.keepalive,
                );
                return Ok(Response::from_parts(head, Either::Left(body)));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| bad_gateway("no upstream server could take the request")))
}

fn bad_gateway(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
}

struct Unsent {
    error: hyper::Error,
    /// The request, when it never reached the server.
    request: Option<Request<RequestBody>>,
}

/// Sends on a checked-out connection. A reused keep-alive connection that the server closed
/// meanwhile fails before sending; that is not the server's fault, so the request goes once
/// more on a fresh connection to the same server.
async fn send_with_stale_retry(
    checkout: &mut crate::upstream::Checkout,
    request: Request<RequestBody>,
    server: &crate::upstream::ServerConns,
    upstream: &crate::runtime::UpstreamRuntime,
) -> Result<Response<Incoming>, Unsent> {
    match checkout.sender.try_send_request(request).await {
        Ok(response) => Ok(response),
        Err(mut e) => {
            let request = e.take_message();
            match request {
                Some(request) if checkout.reused => {
                    match server
                        .checkout(&upstream.transport, upstream.shared.idle_total())
                        .await
                    {
                        Ok(fresh) if !fresh.reused => {
                            *checkout = fresh;
                            checkout
                                .sender
                                .try_send_request(request)
                                .await
                                .map_err(|mut e| Unsent {
                                    request: e.take_message(),
                                    error: e.into_error(),
                                })
                        }
                        _ => Err(Unsent {
                            error: e.into_error(),
                            request: Some(request),
                        }),
                    }
                }
                request => Err(Unsent {
                    error: e.into_error(),
                    request,
                }),
            }
        }
    }
}

fn upstream_uri(path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    target.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "invalid request target",
        )
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers and any header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(&name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The headers sent upstream: the client's minus hop-by-hop ones, Host preserved (from
/// `:authority` for h2 clients), forwarding headers set, our request id.
fn upstream_headers(parts: &http::request::Parts, client: ClientConn, id: &RequestId) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 6);
    let connection_listed: Vec<&str> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut forwarded_for: Option<String> = None;
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name)
            || connection_listed
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_str()))
        {
            continue;
        }
        if name == X_FORWARDED_FOR {
            if let Ok(v) = value.to_str() {
                forwarded_for = Some(match forwarded_for {
                    Some(prev) => format!("{prev}, {v}"),
                    None => v.to_string(),
                });
            }
            continue;
        }
        if name == X_REAL_IP
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == request_id::HEADER
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let ip = client.peer.ip().to_string();
    let xff = match forwarded_for {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(X_REAL_IP.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client.scheme.as_str()),
    );
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.insert(header::HOST, host);
    }
    headers.insert(request_id::HEADER, id.header_value());
    headers
}

/// The bytes the `hash` algorithm hashes for this request; `None` falls back to round robin.
fn hash_key(key: &HashKey, headers: &HeaderMap, client: ClientConn) -> Option<Vec<u8>> {
    match key {
        HashKey::ClientIp => Some(client.peer.ip().to_string().into_bytes()),
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie(headers, name).map(|v| v.as_bytes().to_vec()),
    }
}

/// The value of cookie `name` from the request's Cookie headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn client() -> ClientConn {
        ClientConn {
            peer: "198.51.100.7:5555".parse().unwrap(),
            scheme: Scheme::Https,
        }
    }

    #[test]
    fn forwarding_headers() {
        let id = RequestId::parse(b"req-1").unwrap();
        let p = parts(
            &[
                ("host", "api.insightserenity.com"),
                ("x-forwarded-for", "203.0.113.1"),
                ("x-real-ip", "6.6.6.6"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("accept", "application/json"),
                ("x-request-id", "client-chosen"),
            ],
            "/api/v1/admin/users",
        );
        let h = upstream_headers(&p, client(), &id);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.7");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.insightserenity.com");
        assert_eq!(h["host"], "api.insightserenity.com");
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["accept"], "application/json");
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
    }

    #[test]
    fn h2_authority_becomes_host() {
        let id = RequestId::generate();
        let p = parts(&[], "https://api.example.com:8443/x");
        let h = upstream_headers(&p, client(), &id);
        assert_eq!(h["host"], "api.example.com:8443");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sid=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sid"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "none"), None);
    }
}
