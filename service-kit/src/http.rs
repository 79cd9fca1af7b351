//! The middleware every service wraps its router in: request id, `X-Served-By`, metrics,
//! access log, JSON 404 fallback and the body size limit.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::HeaderValue;
use tracing::Instrument;

use crate::error::ApiError;
use crate::json::MAX_BODY_BYTES;
use crate::metrics::{method_label, Metrics};
use crate::request_id::{self, RequestId};

pub const SERVED_BY: &str = "x-served-by";

/// What the middleware needs to know about the service it wraps.
pub struct HttpContext {
    pub metrics: Arc<Metrics>,
    served_by: HeaderValue,
}

impl HttpContext {
    pub fn new(metrics: Arc<Metrics>, instance_id: &str) -> Self {
        let served_by = HeaderValue::from_str(instance_id)
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        HttpContext { metrics, served_by }
    }
}

/// Adds the standard layers and a JSON 404 fallback to a service's routes.
pub fn instrument(routes: Router, ctx: Arc<HttpContext>) -> Router {
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(ctx, observe))
}

async fn not_found(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn observe(State(ctx): State<Arc<HttpContext>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::from_headers(req.headers());
    req.headers_mut()
        .insert(request_id::HEADER, id.header_value());
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id);

    let _in_flight = ctx.metrics.http.start();
    let mut response = id
        .clone()
        .scope(next.run(req))
        .instrument(span.clone())
        .await
        .into_response();
    let headers = response.headers_mut();
    headers.insert(request_id::HEADER, id.header_value());
    headers.insert(SERVED_BY, ctx.served_by.clone());

    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route_label = route.as_deref().unwrap_or("unmatched");
    ctx.metrics
        .http
        .observe(&method, route_label, status, elapsed);
    span.in_scope(|| {
        tracing::info!(
            method = method_label(&method),
            path = %path,
            route = route_label,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        )
    });
    response
}
