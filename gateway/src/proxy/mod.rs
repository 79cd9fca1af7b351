//! The request path: request id → path normalization → route → policies → upstream tries →
//! response.
//!
//! - `mod.rs`: [`handle`], the request's head checks, its route, the access log line.
//! - `policies`: allow/deny, bearer token, rate limit, body size, response cache.
//! - `forward`: the upstream tries (server selection, the queue, connection checkout, the
//!   retry rules of `retry`), and the answer: a streamed response or a WebSocket tunnel.
//! - `headers`: the upstream request's target and headers, hash and cookie keys (pure).
//!
//! Retries follow NGINX's `proxy_next_upstream error timeout http_502 http_503 http_504`:
//! a failed try moves to the next server while tries and `next_upstream_timeout` allow. A
//! request whose body was already streamed upstream is never replayed, and non-idempotent
//! methods are retried only when the failure happened before anything was sent.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::body::IncomingBody;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;
use tokio::sync::watch;

use crate::metrics::GatewayMetrics;
use crate::policy::client_ip;
use crate::routing::normalize_path;
use crate::runtime::{RouteTarget, Snapshot};
use crate::upstream::{BodyHold, UpstreamBody};

mod forward;
mod headers;
mod policies;
mod retry;

use headers::X_FORWARDED_FOR;
pub use headers::{cookie, request_host, strip_hop_by_hop};
use policies::apply_policies;

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

/// A response body that keeps the request's [`BodyHold`] (its unread h2 body) until the
/// response has been sent.
pub struct Held<B> {
    body: B,
    hold: Option<BodyHold>,
}

impl<B> Held<B> {
    pub fn new(body: B, hold: Option<BodyHold>) -> Self {
        Held { body, hold }
    }
}

impl<B> Drop for Held<B> {
    fn drop(&mut self) {
        if let Some(hold) = &self.hold {
            hold.release();
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What the listener knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The connection's client: the PROXY header's source when a trusted proxy sent one,
    /// else the peer's address.
    pub conn_client: IpAddr,
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
    /// Whether the access log is on: the server key is copied only then.
    logged: bool,
    server: Option<String>,
    status: Option<u16>,
    tries: u32,
}

/// What the request path needs from the running gateway (`server::Gateway`), so this module
/// does not depend on the server's.
pub trait Host {
    fn metrics(&self) -> &GatewayMetrics;
    /// Flips to true when the gateway drains (WebSocket tunnels then close with 1001).
    fn draining(&self) -> watch::Receiver<bool>;
}

/// One request's context, shared by the policies and the upstream tries.
struct Ctx<'a, H> {
    host: &'a H,
    snapshot: &'a Snapshot,
    client: ClientConn,
    client_ip: IpAddr,
    id: &'a RequestId,
    trace: UpstreamTrace,
}

/// Serves one proxied request against `snapshot`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
pub fn handle<'a, H: Host>(
    host: &'a H,
    snapshot: &'a Snapshot,
    req: Request<IncomingBody>,
    client: ClientConn,
) -> impl Future<Output = Response<ResponseBody>> + 'a {
    async move {
        let started = Instant::now();
        let id = RequestId::from_headers(req.headers());
        // The access log's copies of the request line are made only when it is on.
        let access_log = tracing::enabled!(target: "access", tracing::Level::INFO);
        let request_line = access_log.then(|| (req.method().clone(), req.uri().path().to_string()));
        let mut trace = UpstreamTrace {
            logged: access_log,
            ..UpstreamTrace::default()
        };
        let https = client.scheme == Scheme::Https;
        let client_ip = client_ip::resolve(
            client.conn_client,
            req.headers()
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok()),
            &snapshot.config.client_ip.trusted_proxies,
        );

        let (mut response, target) =
            match check_head(snapshot, &req).and_then(|()| route(snapshot, &req)) {
                Err(err) => (error_response(&err, &id), None),
                Ok((target, path)) => {
                    let mut ctx = Ctx {
                        host,
                        snapshot,
                        client,
                        client_ip,
                        id: &id,
                        trace,
                    };
                    let response = match apply_policies(&mut ctx, target, req, &path).await {
                        Ok(response) => response,
                        Err(err) => error_response(&err, &id),
                    };
                    trace = ctx.trace;
                    (response, Some(target))
                }
            };
        let headers = target.map_or(&snapshot.default_headers, |t| &t.policy.headers);
        headers.apply(response.headers_mut(), https);

        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        // Streamed bodies of unknown length log 0: the line is written at response head time.
        let bytes = content_length(response.headers()).unwrap_or(0);
        match target {
            Some(target) => target.metrics.observe(status, elapsed),
            None => snapshot.unrouted.observe(status, elapsed),
        }
        let Some((method, raw_path)) = request_line else {
            return response;
        };
        tracing::info!(
            target: "access",
            request_id = %id,
            client = %client_ip,
            method = %method,
            path = %raw_path,
            route = target.map_or("none", |t| t.label.as_str()),
            status,
            bytes,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = trace.server.as_deref().unwrap_or("-"),
            upstream_status = trace.status.unwrap_or(0),
            tries = trace.tries,
            "request"
        );
        response
    }
}

/// Request-line and header limits (414, 431), before anything else looks at the request.
fn check_head(snapshot: &Snapshot, req: &Request<IncomingBody>) -> Result<(), ApiError> {
    let limits = &snapshot.config.limits;
    let target_len = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |p| p.as_str().len());
    if target_len > limits.max_uri_length {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request target exceeds {} bytes", limits.max_uri_length),
        ));
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("more than {} header fields", limits.max_headers),
        ));
    }
    let bytes: u64 = headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum();
    if bytes > limits.max_header_bytes.0 {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("headers exceed {} bytes", limits.max_header_bytes.0),
        ));
    }
    Ok(())
}

fn route<'s>(
    snapshot: &'s Snapshot,
    req: &Request<IncomingBody>,
) -> Result<(&'s RouteTarget, String), ApiError> {
    let path = normalize_path(req.uri().path())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", format!("{e}")))?;
    let host = request_host(req);
    let route = snapshot.router.find(host, &path).ok_or_else(no_route)?;
    Ok((&route.target, path))
}

/// 404 for a path no route serves (or an internal one: the same answer, as NGINX gives).
fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no route for this path")
}

/// The `Content-Length` a message declares, if it is a number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {max} bytes"),
    )
}

fn bad_gateway(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
}
