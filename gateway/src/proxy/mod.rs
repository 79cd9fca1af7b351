//! The request path: request id → path normalization → route → upstream tries → response.
//!
//! Retries follow NGINX's `proxy_next_upstream error timeout http_502 http_503 http_504`:
//! a failed try moves to the next server while tries and `next_upstream_timeout` allow. A
//! request whose body was already streamed upstream is never replayed, and non-idempotent
//! methods are retried only when the failure happened before anything was sent.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use crate::balance::{Attempt, Outcome};
use crate::config::{any_contains, HashKey};
use crate::metrics::{GatewayMetrics, TryOutcome};
use crate::policy::cache::{self, CachedResponse, ResponseCache};
use crate::policy::rate_limit::Decision;
use crate::policy::{client_ip, websocket, Refusal, RouteCache};
use crate::routing::normalize_path;
use crate::runtime::{RouteTarget, Snapshot};
use crate::upstream::{BodyHold, RequestBody, UpstreamBody};

mod retry;
use retry::{Next, RetryPolicy, TryFailure};
use tokio::sync::watch;

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
pub async fn handle<H: Host>(
    host: &H,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    client: ClientConn,
) -> Response<ResponseBody> {
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

/// Request-line and header limits (414, 431), before anything else looks at the request.
fn check_head(snapshot: &Snapshot, req: &Request<Incoming>) -> Result<(), ApiError> {
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
    req: &Request<Incoming>,
) -> Result<(&'s RouteTarget, String), ApiError> {
    let path = normalize_path(req.uri().path())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", format!("{e}")))?;
    let host = request_host(req);
    let route = snapshot.router.find(host, &path).ok_or_else(no_route)?;
    Ok((&route.target, path))
}

/// 401 for a request without a valid token: the JSON error and an RFC 6750 challenge.
fn unauthorized(
    auth: &service_kit::auth::Auth,
    err: &service_kit::auth::TokenError,
    id: &RequestId,
) -> Response<ResponseBody> {
    use service_kit::auth::TokenError;
    let (status, code) = match err {
        TokenError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    let mut response = error_response(&ApiError::new(status, code, err.to_string()), id);
    let challenge = match err {
        TokenError::Missing => format!("Bearer realm=\"{}\"", auth.audience()),
        _ => format!(
            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
            auth.audience(),
            err.to_string().replace('"', "'")
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// 404 for a path no route serves (or an internal one: the same answer, as NGINX gives).
fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no route for this path")
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

fn rate_limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

/// Rate limit, body size, cache and WebSocket handling around [`forward`].
#[allow(clippy::too_many_arguments)]
async fn apply_policies<H: Host>(
    ctx: &mut Ctx<'_, H>,
    target: &RouteTarget,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let (snapshot, client_ip, id) = (ctx.snapshot, ctx.client_ip, ctx.id);
    let policy = &target.policy;
    match policy.admit(client_ip) {
        Ok(()) => {}
        Err(Refusal::Internal) => return Err(no_route()),
        Err(Refusal::Denied) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this address may not use this path",
            ))
        }
    }
    let req = match &policy.auth {
        Some(auth) => {
            let (parts, body) = req.into_parts();
            let verified =
                service_kit::auth::Auth::token_from(&parts).and_then(|token| auth.verify(&token));
            if let Err(err) = verified {
                return Ok(unauthorized(auth, &err, id));
            }
            Request::from_parts(parts, body)
        }
        None => req,
    };
    let mut allowed = None;
    if let Some(limiter) = &policy.rate_limit {
        if !any_contains(&policy.exempt, client_ip) {
            match limiter.check(client_ip::limit_key(client_ip)) {
                Decision::Allowed {
                    limit,
                    remaining,
                    reset,
                } => allowed = Some((limit, remaining, reset)),
                Decision::Limited {
                    limit,
                    retry_after,
                    reset,
                } => {
                    policy.rate_limited.inc();
                    let mut response = error_response(
                        &ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            format!("rate limit exceeded; retry in {retry_after} s"),
                        ),
                        id,
                    );
                    let headers = response.headers_mut();
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                    rate_limit_headers(headers, limit, 0, reset);
                    return Ok(response);
                }
            }
        }
    }

    let declared = content_length(req.headers());
    if declared.is_some_and(|n| n > policy.max_body) {
        if let Some(hold) = req.extensions().get::<BodyHold>().cloned() {
            hold.keep(req.into_body());
        }
        return Err(too_large(policy.max_body));
    }

    let cache_key = match (&snapshot.cache, policy.cache) {
        (Some(_), Some(_)) => {
            let host = request_host(&req).unwrap_or("").to_string();
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            cache::request_key(req.method(), req.headers(), &host, &pq)
        }
        _ => None,
    };
    if let (Some(cache), Some(key)) = (&snapshot.cache, &cache_key) {
        if let Some(hit) = cache.get(key) {
            ctx.host
                .metrics()
                .cache_requests
                .with_label_values(&["hit"])
                .inc();
            let mut response = Response::new(Either::Right(Full::new(hit.body.clone())));
            *response.status_mut() = hit.status;
            *response.headers_mut() = hit.headers.clone();
            let headers = response.headers_mut();
            headers.insert(
                header::AGE,
                HeaderValue::from(hit.stored.elapsed().as_secs()),
            );
            headers.insert("x-cache", HeaderValue::from_static("HIT"));
            headers.insert(request_id::HEADER, id.header_value());
            return Ok(response);
        }
    }

    let mut response = forward(ctx, target, req, path).await?;

    if let (Some(cache), Some(key), Some(route_cache)) = (&snapshot.cache, cache_key, policy.cache)
    {
        ctx.host
            .metrics()
            .cache_requests
            .with_label_values(&["miss"])
            .inc();
        // Boxed: cached routes are the rare case; their buffering future stays off the
        // common request's.
        response = Box::pin(store_if_cacheable(
            cache,
            key,
            route_cache,
            response,
            target.read_timeout,
        ))
        .await?;
        response
            .headers_mut()
            .insert("x-cache", HeaderValue::from_static("MISS"));
    }
    if let Some((limit, remaining, reset)) = allowed {
        rate_limit_headers(response.headers_mut(), limit, remaining, reset);
    }
    Ok(response)
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

/// Buffers and stores a cacheable response small enough to cache; streams anything else.
async fn store_if_cacheable(
    cache: &ResponseCache,
    key: String,
    route_cache: RouteCache,
    response: Response<ResponseBody>,
    read_timeout: Duration,
) -> Result<Response<ResponseBody>, ApiError> {
    let Some(ttl) = cache::ttl_for(response.status(), response.headers(), route_cache.ttl) else {
        return Ok(response);
    };
    let length = content_length(response.headers());
    if length.is_none_or(|n| n > route_cache.max_object) {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(read_timeout, body.collect())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream body did not arrive in time",
            )
        })?
        .map_err(|_| bad_gateway("the upstream body was cut short"))?
        .to_bytes();
    let mut headers = parts.headers.clone();
    headers.remove(request_id::HEADER);
    cache.insert(
        key,
        CachedResponse {
            status: parts.status,
            headers,
            body: collected.clone(),
            stored: Instant::now(),
            ttl,
        },
    );
    Ok(Response::from_parts(
        parts,
        Either::Right(Full::new(collected)),
    ))
}

/// Sends the request to the route's upstream: picks servers, checks out connections, applies
/// the retry rules (`retry`), and hands a 101 to a WebSocket tunnel.
async fn forward<H: Host>(
    ctx: &mut Ctx<'_, H>,
    target: &RouteTarget,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<ResponseBody>, ApiError> {
    let upstream = &target.upstream;
    let id = ctx.id;
    let (mut parts, body) = req.into_parts();
    let hold = parts.extensions.get::<BodyHold>().cloned();
    let websocket =
        parts.version == Version::HTTP_11 && websocket::is_websocket_upgrade(&parts.headers);
    let whole_body = body.is_end_stream();
    let mut body = if whole_body { None } else { Some(body) };
    let mut exceeded = None;
    let uri = upstream_uri(&parts.uri, path)?;
    let key = upstream
        .hash_key
        .as_ref()
        .and_then(|k| hash_key(k, &parts.headers, ctx.client_ip));
    let sticky = upstream
        .sticky
        .as_ref()
        .filter(|_| target.policy.sticky.applies(websocket));
    let pin = sticky.and_then(|s| cookie(&parts.headers, &s.name).and_then(|v| s.verify(v)));
    // The client's header map becomes the upstream one. It is moved into the last try that
    // can happen and cloned only for tries a retry could follow.
    let mut headers = std::mem::take(&mut parts.headers);
    upstream_headers(&mut headers, &parts.uri, ctx.client, ctx.client_ip, id);
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let mut headers = Some(headers);

    let policy = RetryPolicy {
        max_tries: upstream
            .tries
            .unwrap_or_else(|| upstream.shared.default_tries())
            .max(1),
        deadline: upstream.next_upstream_timeout.map(|t| Instant::now() + t),
        replayable: is_idempotent(&parts.method) && whole_body,
    };
    let mut attempt = Attempt::new();
    let mut last_error = None;

    // The upstream queue: first come, first served. A request arriving while others wait
    // joins behind them instead of taking a freed slot first; it leaves once it has a server.
    let mut seat = None;
    if let Some(queue) = upstream.queue.filter(|_| upstream.shared.has_queue()) {
        queue_turn(upstream, queue, &mut seat).await?;
    }
    while policy.may_start(ctx.trace.tries as usize, Instant::now()) {
        let Some((mut peer, server)) =
            upstream
                .shared
                .select(&mut attempt, key.as_deref(), pin.as_deref())
        else {
            if ctx.trace.tries == 0 {
                if let Some(queue) = upstream.queue.filter(|_| upstream.shared.busy(&attempt)) {
                    queue_turn(upstream, queue, &mut seat).await?;
                    continue;
                }
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_live_upstream",
                    "no upstream server is available",
                ));
            }
            break;
        };
        // It has a server: out of the queue (the next in it is woken).
        drop(seat.take());
        if ctx.trace.tries > 0 {
            upstream.retries.inc();
        }
        ctx.trace.tries += 1;
        let tries = ctx.trace.tries as usize;
        if ctx.trace.logged {
            ctx.trace.server = Some(server.key.clone());
        }

        let checkout = if websocket {
            // An upgraded connection is never pooled: dial a fresh one.
            Box::pin(upstream.transport.connect(server.addr))
                .await
                .map(crate::upstream::Checkout::fresh)
        } else {
            server
                .checkout(&upstream.transport, upstream.shared.idle_total())
                .await
        };
        let mut checkout = match checkout {
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
                match policy.after(TryFailure::Connect, tries, Instant::now()) {
                    Next::Retry => continue,
                    Next::Stop | Next::Deliver => break,
                }
            }
        };

        let try_body = if whole_body {
            RequestBody::Empty
        } else {
            match body.take() {
                Some(b) => {
                    let (limited, flag) =
                        RequestBody::limited(b, target.policy.max_body, hold.clone());
                    exceeded = Some(flag);
                    limited
                }
                // Streamed once already: it cannot go again.
                None => break,
            }
        };
        let try_headers = if policy.keep_copy(tries) {
            headers.clone()
        } else {
            headers.take()
        };
        let Some(try_headers) = try_headers else {
            break;
        };
        let mut request = Request::new(try_body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = try_headers;

        let sent = tokio::time::timeout(
            target.read_timeout,
            send_with_stale_retry(&mut checkout, request, &server, upstream),
        )
        .await;
        // The client's fault, not the server's.
        if exceeded.as_ref().is_some_and(|f| f.too_large()) {
            return Err(too_large(target.policy.max_body));
        }
        if exceeded.as_ref().is_some_and(|f| f.broken()) {
            return Err(ApiError::bad_request(
                "the request body is malformed or was cut short",
            ));
        }
        let failure = match sent {
            Err(_) => {
                peer.set_outcome(Outcome::Failure);
                server.count(TryOutcome::Timeout);
                tracing::warn!(request_id = %id, server = %server.key, timeout_ms = target.read_timeout.as_millis() as u64, "upstream timed out");
                last_error = Some(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the upstream server did not answer in time",
                ));
                TryFailure::Timeout
            }
            Ok(Err(unsent)) => {
                peer.set_outcome(Outcome::Failure);
                server.count(TryOutcome::Error);
                tracing::warn!(request_id = %id, server = %server.key, error = %unsent.error, "upstream request failed");
                last_error = Some(bad_gateway("the upstream server failed to answer"));
                match unsent.request {
                    // Nothing reached the server: the request goes on as it is.
                    Some(request) => {
                        let (head, unsent_body) = request.into_parts();
                        headers = Some(head.headers);
                        body = unsent_body.into_stream();
                        TryFailure::NotSent
                    }
                    None => TryFailure::SentThenFailed,
                }
            }
            Ok(Ok(response)) => {
                let status = response.status();
                ctx.trace.status = Some(status.as_u16());
                if matches!(status.as_u16(), 502..=504) {
                    peer.set_outcome(Outcome::Failure);
                    server.count(TryOutcome::Http5xx);
                    if policy.after(TryFailure::BadStatus, tries, Instant::now()) == Next::Retry {
                        last_error = Some(bad_gateway(&format!(
                            "upstream servers answered {}",
                            status.as_u16()
                        )));
                        continue;
                    }
                } else {
                    server.count(TryOutcome::Ok);
                }
                let set_cookie = sticky
                    .filter(|_| pin.as_deref() != Some(server.key.as_str()))
                    .and_then(|s| HeaderValue::from_str(&s.set_cookie(&server.key)).ok());
                let (mut head, incoming) = if websocket && status == StatusCode::SWITCHING_PROTOCOLS
                {
                    let mut response = response;
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    let client_upgrade = hyper::upgrade::on(Request::from_parts(
                        std::mem::replace(&mut parts, Request::new(()).into_parts().0),
                        (),
                    ));
                    websocket::Tunnel {
                        idle: target.policy.websocket_idle,
                        removed: server.removed(),
                        draining: ctx.host.draining(),
                        open: ctx.host.metrics().websockets.clone(),
                        server: server.key.clone(),
                    }
                    .spawn(client_upgrade, upstream_upgrade, peer);
                    let (mut head, _) = response.into_parts();
                    head.headers.insert(request_id::HEADER, id.header_value());
                    if let Some(cookie) = set_cookie {
                        head.headers.append(header::SET_COOKIE, cookie);
                    }
                    return Ok(Response::from_parts(
                        head,
                        Either::Right(Full::new(Bytes::new())),
                    ));
                } else {
                    response.into_parts()
                };
                strip_hop_by_hop(&mut head.headers);
                head.headers.insert(request_id::HEADER, id.header_value());
                if let Some(cookie) = set_cookie {
                    head.headers.append(header::SET_COOKIE, cookie);
                }
                let body = UpstreamBody::new(
                    incoming,
                    checkout,
                    server,
                    peer,
                    upstream.transport.keepalive,
                );
                return Ok(Response::from_parts(head, Either::Left(body)));
            }
        };
        match policy.after(failure, tries, Instant::now()) {
            Next::Retry => {}
            Next::Stop | Next::Deliver => break,
        }
    }
    Err(last_error.unwrap_or_else(|| bad_gateway("no upstream server could take the request")))
}

/// Waits for this request's turn in the upstream queue, joining it first (its deadline set
/// then) if it is not in it yet.
async fn queue_turn(
    upstream: &crate::runtime::UpstreamRuntime,
    queue: gateway_config::QueueConfig,
    seat: &mut Option<crate::upstream::QueueSeat>,
) -> Result<(), ApiError> {
    let joined = match seat {
        Some(joined) => joined,
        None => seat.insert(
            upstream
                .shared
                .join_queue(
                    queue.size,
                    tokio::time::Instant::now() + queue.timeout.0,
                    &upstream.queued,
                )
                .map_err(|refusal| queue_refused(upstream, refusal))?,
        ),
    };
    joined
        .wait()
        .await
        .map_err(|refusal| queue_refused(upstream, refusal))
}

/// 503 from the upstream queue (counted by reason).
fn queue_refused(
    upstream: &crate::runtime::UpstreamRuntime,
    refusal: crate::upstream::QueueRefusal,
) -> ApiError {
    use crate::upstream::QueueRefusal;
    let (code, message) = match refusal {
        QueueRefusal::Full => {
            upstream.queue_full.inc();
            (
                "upstream_queue_full",
                "every upstream server is busy and the queue is full",
            )
        }
        QueueRefusal::Timeout => {
            upstream.queue_timeout.inc();
            (
                "upstream_queue_timeout",
                "no upstream server freed up in time",
            )
        }
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
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

/// The origin-form target sent upstream: the normalized path and the query. The request's
/// own target is reused when normalization left the path as it was (the common case).
fn upstream_uri(client_uri: &Uri, path: &str) -> Result<Uri, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "invalid request target",
        )
    };
    if client_uri.path() == path {
        if let Some(pq) = client_uri.path_and_query() {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            return Uri::from_parts(parts).map_err(|_| bad());
        }
    }
    let target = match client_uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    target.parse().map_err(|_| bad())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and any header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
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
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Turns the client's headers into the ones sent upstream, in place (no second map): minus
/// hop-by-hop ones and any named in `Connection`, Host preserved (from `:authority` for h2
/// clients), forwarding headers set, our request id.
fn upstream_headers(
    headers: &mut HeaderMap,
    uri: &Uri,
    client: ClientConn,
    client_ip: IpAddr,
    id: &RequestId,
) {
    strip_hop_by_hop(headers);

    let hop = client.conn_client;
    let xff = match headers.get_all(&X_FORWARDED_FOR).iter().next() {
        None => HeaderValue::from_str(&hop.to_string()).ok(),
        Some(_) => {
            let mut joined = String::new();
            for prev in headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(prev) = prev.to_str() {
                    joined.push_str(prev);
                    joined.push_str(", ");
                }
            }
            joined.push_str(&hop.to_string());
            HeaderValue::from_str(&joined).ok()
        }
    };
    match xff {
        Some(v) => {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        None => {
            headers.remove(&X_FORWARDED_FOR);
        }
    }
    match HeaderValue::from_str(&client_ip.to_string()) {
        Ok(v) => {
            headers.insert(X_REAL_IP.clone(), v);
        }
        Err(_) => {
            headers.remove(&X_REAL_IP);
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(client.scheme.as_str()),
    );
    let host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            headers.insert(header::HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    headers.insert(request_id::HEADER, id.header_value());
}

/// The bytes the `hash` algorithm hashes for this request; `None` falls back to round robin.
fn hash_key(key: &HashKey, headers: &HeaderMap, client_ip: IpAddr) -> Option<Vec<u8>> {
    match key {
        HashKey::ClientIp => Some(client_ip.to_string().into_bytes()),
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
            conn_client: "198.51.100.7".parse().unwrap(),
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
        let mut h = p.headers;
        upstream_headers(
            &mut h,
            &p.uri,
            client(),
            "198.51.100.7".parse().unwrap(),
            &id,
        );
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
        let p = parts(&[], "https://api.example.com:8443/x?q=1");
        let mut h = p.headers;
        upstream_headers(
            &mut h,
            &p.uri,
            client(),
            "198.51.100.7".parse().unwrap(),
            &id,
        );
        assert_eq!(h["host"], "api.example.com:8443");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        // The upstream target is origin-form whatever form the client used.
        assert_eq!(upstream_uri(&p.uri, "/x").unwrap(), "/x?q=1");
        assert_eq!(upstream_uri(&p.uri, "/y").unwrap(), "/y?q=1");
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
