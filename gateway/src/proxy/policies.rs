//! The route's edge policies around [`forward`]: allow and deny lists, the bearer token,
//! the rate limit, the body size limit and the response cache.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::body::IncomingBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use service_kit::request_id::{self, RequestId};
use service_kit::ApiError;

use super::forward::forward;
use super::{
    bad_gateway, content_length, error_response, no_route, request_host, too_large, Ctx, Host,
    ResponseBody,
};
use crate::config::any_contains;
use crate::policy::cache::{self, CachedResponse, ResponseCache};
use crate::policy::rate_limit::Decision;
use crate::policy::{client_ip, Refusal, RouteCache};
use crate::runtime::RouteTarget;
use crate::upstream::BodyHold;

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

fn rate_limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

/// Rate limit, body size, cache and the other policies around [`forward`].
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
pub(super) fn apply_policies<'a, 'c, H: Host>(
    ctx: &'a mut Ctx<'c, H>,
    target: &'a RouteTarget,
    req: Request<IncomingBody>,
    path: &'a str,
) -> impl Future<Output = Result<Response<ResponseBody>, ApiError>> + use<'a, 'c, H> {
    async move {
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
                let verified = service_kit::auth::Auth::token_from(&parts)
                    .and_then(|token| auth.verify(&token));
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

        if let (Some(cache), Some(key), Some(route_cache)) =
            (&snapshot.cache, cache_key, policy.cache)
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
