//! The upstream tries of one request: server selection (with the hash key and the sticky
//! pin), the upstream queue, connection checkout, sending, the retry rules of `retry`, and
//! the answer: a streamed response, or a 101 handed to a WebSocket tunnel.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::body::IncomingBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::upgrade::OnUpgrade;
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use super::headers::{cookie, hash_key, strip_hop_by_hop, upstream_headers, upstream_uri};
use super::retry::{Next, RetryPolicy, TryFailure};
use super::{bad_gateway, too_large, Ctx, Host, ResponseBody};
use crate::balance::{Attempt, Outcome};
use crate::metrics::TryOutcome;
use crate::policy::sticky::StickyCookie;
use crate::policy::websocket;
use crate::runtime::{RouteTarget, UpstreamRuntime};
use crate::upstream::{
    BodyFault, BodyHold, Checkout, ConnectError, PeerGuard, QueueRefusal, QueueSeat, RequestBody,
    SendFailure, ServerConns, UpstreamBody,
};

/// Sends the request to the route's upstream, trying servers until one answers or the retry
/// rules say stop.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
pub(super) fn forward<'a, 'c, H: Host>(
    ctx: &'a mut Ctx<'c, H>,
    target: &'a RouteTarget,
    req: Request<IncomingBody>,
    path: &'a str,
) -> impl Future<Output = Result<Response<ResponseBody>, ApiError>> + use<'a, 'c, H> {
    async move {
        let upstream = &target.upstream;
        let websocket = is_websocket(&req);
        let rules = Rules::of(target, &req, ctx.client_ip, websocket);
        let mut out = Outgoing::new(ctx, req, path, websocket)?;
        let mut attempt = Attempt::new();
        let mut last_error = None;

        // The upstream queue: first come, first served. A request arriving while others wait
        // joins behind them instead of taking a freed slot first; it leaves once it has a server.
        let mut seat = None;
        if let Some(queue) = upstream.queue.filter(|_| upstream.shared.has_queue()) {
            queue_turn(upstream, queue, &mut seat).await?;
        }
        while rules
            .retry
            .may_start(ctx.trace.tries as usize, Instant::now())
        {
            let Some((peer, server)) =
                upstream
                    .shared
                    .select(&mut attempt, rules.key.as_deref(), rules.pin.as_deref())
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
            if ctx.trace.logged {
                ctx.trace.server = Some(server.key.clone());
            }
            match try_server(ctx, target, &rules, &mut out, peer, server).await? {
                Tried::Answered(response) => return Ok(response),
                Tried::Spent => break,
                Tried::Failed { next, error } => {
                    last_error = Some(error);
                    if next != Next::Retry {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| bad_gateway("no upstream server could take the request")))
    }
}

/// What holds for every try of one request.
struct Rules<'t> {
    retry: RetryPolicy,
    /// The bytes the `hash` algorithm hashes.
    key: Option<Vec<u8>>,
    sticky: Option<&'t StickyCookie>,
    /// The server the sticky cookie names, if its signature holds.
    pin: Option<String>,
}

impl<'t> Rules<'t> {
    fn of(
        target: &'t RouteTarget,
        req: &Request<IncomingBody>,
        client_ip: std::net::IpAddr,
        websocket: bool,
    ) -> Self {
        let upstream = &target.upstream;
        let sticky = upstream
            .sticky
            .as_ref()
            .filter(|_| target.policy.sticky.applies(websocket));
        Rules {
            retry: RetryPolicy {
                max_tries: upstream
                    .tries
                    .unwrap_or_else(|| upstream.shared.default_tries())
                    .max(1),
                deadline: upstream.next_upstream_timeout.map(|t| Instant::now() + t),
                replayable: is_idempotent(req.method()) && req.body().is_end_stream(),
                refusable: upstream.transport.protocol != gateway_config::UpstreamProtocol::Http1
                    && !websocket,
            },
            key: upstream
                .hash_key
                .as_ref()
                .and_then(|k| hash_key(k, req.headers(), client_ip)),
            sticky,
            pin: sticky.and_then(|s| cookie(req.headers(), &s.name).and_then(|v| s.verify(v))),
        }
    }

    /// The `Set-Cookie` that pins the client to `server`, unless its cookie already does.
    fn set_cookie(&self, server: &str) -> Option<HeaderValue> {
        self.sticky
            .filter(|_| self.pin.as_deref() != Some(server))
            .and_then(|s| HeaderValue::from_str(&s.set_cookie(server)).ok())
    }
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && websocket::is_websocket_upgrade(req.headers())
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request as it goes upstream, kept across tries: what a try hands back unsent (the
/// headers, the body) goes into the next one.
struct Outgoing {
    method: Method,
    uri: Uri,
    /// The upstream headers; `None` once moved into a try no retry can follow.
    headers: Option<HeaderMap>,
    /// The client's body (none: it was whole, empty, at the head). Taken by the try that
    /// streams it; a streamed body cannot go again.
    body: Option<IncomingBody>,
    /// A body a try handed back (never sent, or refused unprocessed and replayable): the
    /// next try sends it as it is.
    resend: Option<RequestBody>,
    whole_body: bool,
    hold: Option<BodyHold>,
    /// The client's side of a WebSocket upgrade.
    upgrade: Option<OnUpgrade>,
    /// The limit and framing watch of the body being streamed.
    fault: Option<Arc<BodyFault>>,
}

impl Outgoing {
    fn new<H>(
        ctx: &Ctx<'_, H>,
        mut req: Request<IncomingBody>,
        path: &str,
        websocket: bool,
    ) -> Result<Self, ApiError> {
        let upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let uri = upstream_uri(&parts.uri, path)?;
        // The client's header map becomes the upstream one (no second map).
        let mut headers = std::mem::take(&mut parts.headers);
        upstream_headers(&mut headers, &parts.uri, ctx.client, ctx.client_ip, ctx.id);
        if upgrade.is_some() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let whole_body = body.is_end_stream();
        Ok(Outgoing {
            method: parts.method,
            uri,
            headers: Some(headers),
            body: (!whole_body).then_some(body),
            resend: None,
            whole_body,
            hold: parts.extensions.remove::<BodyHold>(),
            upgrade,
            fault: None,
        })
    }

    /// The request for try number `tries`, or `None` when it cannot be sent again. The
    /// headers are cloned only for a try that a retry could follow.
    fn for_try(
        &mut self,
        retry: &RetryPolicy,
        tries: usize,
        max_body: u64,
    ) -> Option<Request<RequestBody>> {
        let mut body = if let Some(body) = self.resend.take() {
            body
        } else if self.whole_body {
            RequestBody::Empty
        } else {
            let (limited, fault) =
                RequestBody::limited(self.body.take()?, max_body, self.hold.clone());
            self.fault = Some(fault);
            limited
        };
        let headers = if retry.keep_copy(tries) {
            // An HTTP/2 server may refuse the stream unprocessed: the body is then sent again
            // from what this try records of it.
            if retry.refusable {
                body.record();
            }
            self.headers.clone()
        } else {
            self.headers.take()
        }?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }

    /// Takes back a request that never reached the server.
    fn unsent(&mut self, request: Request<RequestBody>) {
        let (head, body) = request.into_parts();
        self.headers = Some(head.headers);
        if let RequestBody::Stream(_) = body {
            self.resend = Some(body);
        }
    }

    /// The client's fault, if its body broke the limit or its framing.
    fn client_fault(&self, max_body: u64) -> Option<ApiError> {
        let fault = self.fault.as_ref()?;
        if fault.too_large() {
            return Some(too_large(max_body));
        }
        fault
            .broken()
            .then(|| ApiError::bad_request("the request body is malformed or was cut short"))
    }
}

/// How one try ended.
// Returned once per try and taken apart at once: boxing the response would cost every
// request an allocation to save a move.
#[allow(clippy::large_enum_variant)]
enum Tried {
    /// The response for the client.
    Answered(Response<ResponseBody>),
    /// It failed; `next` says whether another server is tried.
    Failed { next: Next, error: ApiError },
    /// Nothing more can be sent: the body went with an earlier try.
    Spent,
}

/// One try against `server`. `Err` ends the request with the client's fault.
async fn try_server<H: Host>(
    ctx: &mut Ctx<'_, H>,
    target: &RouteTarget,
    rules: &Rules<'_>,
    out: &mut Outgoing,
    mut peer: PeerGuard,
    server: Arc<ServerConns>,
) -> Result<Tried, ApiError> {
    let upstream = &target.upstream;
    let (id, tries) = (ctx.id, ctx.trace.tries as usize);
    let failed = |peer: &mut PeerGuard, failure, error| {
        peer.set_outcome(Outcome::Failure);
        Tried::Failed {
            next: rules.retry.after(failure, tries, Instant::now()),
            error,
        }
    };

    let checkout = if out.upgrade.is_some() {
        // An upgraded connection is never pooled: dial a fresh one.
        Box::pin(upstream.transport.connect_http1(server.addr))
            .await
            .map(Checkout::fresh)
    } else {
        server
            .checkout(&upstream.transport, upstream.shared.idle_total())
            .await
    };
    let mut checkout = match checkout {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(request_id = %id, server = %server.key, error = %e, "upstream connect failed");
            server.count(if matches!(e, ConnectError::Timeout { .. }) {
                TryOutcome::Timeout
            } else {
                TryOutcome::ConnectError
            });
            let error = bad_gateway("could not connect to an upstream server");
            return Ok(failed(&mut peer, TryFailure::Connect, error));
        }
    };
    let max_body = target.policy.max_body;
    let Some(request) = out.for_try(&rules.retry, tries, max_body) else {
        return Ok(Tried::Spent);
    };

    let sent = tokio::time::timeout(
        target.read_timeout,
        send_with_stale_retry(&mut checkout, request, &server, upstream),
    )
    .await;
    if let Some(fault) = out.client_fault(max_body) {
        return Err(fault);
    }
    let response = match sent {
        Err(_) => {
            server.count(TryOutcome::Timeout);
            tracing::warn!(request_id = %id, server = %server.key, timeout_ms = target.read_timeout.as_millis() as u64, "upstream timed out");
            let error = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream server did not answer in time",
            );
            return Ok(failed(&mut peer, TryFailure::Timeout, error));
        }
        Ok(Err(unsent)) => {
            let failure = match (unsent.request, unsent.refused) {
                // The server refused it unprocessed: the kept head and the replayed body go
                // on. Not a server failure (passive health, the error ratio, a warning): a
                // server recycling or draining its connections does this while it is well
                // (NGINX's `NGX_PEER_NEXT`).
                (None, Some(body)) if out.headers.is_some() => {
                    server.count(TryOutcome::Refused);
                    tracing::info!(request_id = %id, server = %server.key, error = %unsent.error, "upstream refused the request unprocessed");
                    out.resend = Some(body);
                    return Ok(Tried::Failed {
                        next: rules
                            .retry
                            .after(TryFailure::NotSent, tries, Instant::now()),
                        error: bad_gateway("the upstream server refused the request"),
                    });
                }
                // Nothing reached the server: the request goes on as it is.
                (Some(request), _) => {
                    out.unsent(request);
                    TryFailure::NotSent
                }
                (None, _) => TryFailure::SentThenFailed,
            };
            server.count(TryOutcome::Error);
            tracing::warn!(request_id = %id, server = %server.key, error = %unsent.error, "upstream request failed");
            let error = bad_gateway("the upstream server failed to answer");
            return Ok(failed(&mut peer, failure, error));
        }
        Ok(Ok(response)) => response,
    };

    let status = response.status();
    ctx.trace.status = Some(status.as_u16());
    if matches!(status.as_u16(), 502..=504) {
        server.count(TryOutcome::Http5xx);
        let error = bad_gateway(&format!("upstream servers answered {}", status.as_u16()));
        if let tried @ Tried::Failed {
            next: Next::Retry, ..
        } = failed(&mut peer, TryFailure::BadStatus, error)
        {
            return Ok(tried);
        }
    } else {
        server.count(TryOutcome::Ok);
    }

    let set_cookie = rules.set_cookie(&server.key);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = out.upgrade.take() {
            let tunnel = websocket::Tunnel {
                idle: target.policy.websocket_idle,
                removed: server.removed(),
                draining: ctx.host.draining(),
                open: ctx.host.metrics().websockets.clone(),
                server: server.key.clone(),
            };
            let mut head = tunnel.switch(client_upgrade, response, peer);
            client_head(&mut head.headers, id, set_cookie);
            return Ok(Tried::Answered(Response::from_parts(
                head,
                Either::Right(Full::new(Bytes::new())),
            )));
        }
    }
    let (mut head, incoming) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    client_head(&mut head.headers, id, set_cookie);
    let body = UpstreamBody::new(
        incoming,
        checkout,
        server,
        peer,
        upstream.transport.keepalive,
    );
    Ok(Tried::Answered(Response::from_parts(
        head,
        Either::Left(body),
    )))
}

/// What the gateway adds to the upstream's response head: our request id, the sticky cookie.
fn client_head(headers: &mut HeaderMap, id: &RequestId, set_cookie: Option<HeaderValue>) {
    headers.insert(request_id::HEADER, id.header_value());
    if let Some(cookie) = set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
}

/// Waits for this request's turn in the upstream queue, joining it first (its deadline set
/// then) if it is not in it yet.
async fn queue_turn(
    upstream: &UpstreamRuntime,
    queue: gateway_config::QueueConfig,
    seat: &mut Option<QueueSeat>,
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
fn queue_refused(upstream: &UpstreamRuntime, refusal: QueueRefusal) -> ApiError {
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

/// Sends on a checked-out connection. A reused keep-alive connection that the server closed
/// meanwhile fails before sending; that is not the server's fault, so the request goes once
/// more on a fresh connection to the same server.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
fn send_with_stale_retry<'a>(
    checkout: &'a mut Checkout,
    request: Request<RequestBody>,
    server: &'a ServerConns,
    upstream: &'a UpstreamRuntime,
) -> impl Future<Output = Result<Response<IncomingBody>, SendFailure>> + 'a {
    async move {
        let mut first = match checkout.sender.try_send_request(request).await {
            Ok(response) => return Ok(response),
            Err(failure) => failure,
        };
        if !checkout.reused {
            return Err(first);
        }
        let Some(request) = first.request.take() else {
            return Err(first);
        };
        // A shared HTTP/2 connection that failed is not handed out again.
        server.forget(checkout);
        match server
            .checkout(&upstream.transport, upstream.shared.idle_total())
            .await
        {
            Ok(fresh) if !fresh.reused => {
                *checkout = fresh;
                checkout.sender.try_send_request(request).await
            }
            _ => Err(SendFailure {
                error: first.error,
                request: Some(request),
                refused: None,
            }),
        }
    }
}
