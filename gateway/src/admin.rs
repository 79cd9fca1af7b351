//! The internal admin listener (plain HTTP): metrics, liveness, readiness, upstream state and
//! reload. Not on the request path; axum keeps it short.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use service_kit::ApiError;

use crate::balance::PeerState;
use crate::server::Gateway;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/upstreams", get(upstreams))
        .route("/-/reload", post(reload))
        .route("/-/ha", get(ha))
        .route("/-/ha/drop-adverts", post(drop_adverts))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no admin endpoint {}", uri.path()))
        })
        .with_state(gateway)
}

async fn healthy() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.lifecycle.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "draining"})),
        )
            .into_response()
    } else {
        let certificate = gw.snapshot.load().certs.current().map(|c| c.source);
        let mut body = json!({"ready": true});
        if let Some(source) = certificate {
            body["certificate"] = json!(source.as_str());
        }
        if certificate == Some(crate::certs::CertSource::SelfSigned) {
            body["warning"] =
                json!("serving a self-signed stand-in until the ACME CA issues the certificate");
        }
        Json(body).into_response()
    }
}

fn state_name(state: &PeerState) -> &'static str {
    match state {
        PeerState::Up => "up",
        PeerState::Down => "down",
        PeerState::Unhealthy => "unhealthy",
        PeerState::Failed { .. } => "failed",
        PeerState::Full => "full",
    }
}

async fn upstreams(State(gw): State<Arc<Gateway>>) -> Json<Value> {
    let snapshot = gw.snapshot.load();
    let now = Instant::now();
    let mut out = serde_json::Map::new();
    for (name, upstream) in &snapshot.upstreams {
        let config = snapshot.config.upstreams.get(name);
        let servers: Vec<Value> = upstream
            .shared
            .snapshot()
            .into_iter()
            .map(|s| {
                let p = &s.peer;
                let failed_for_ms = match p.state {
                    PeerState::Failed { until } => {
                        until.saturating_duration_since(now).as_millis() as u64
                    }
                    _ => 0,
                };
                json!({
                    "server": p.key,
                    "backup": p.backup,
                    "state": state_name(&p.state),
                    "weight": p.weight,
                    "effective_weight": p.effective_weight,
                    "current_weight": p.current_weight,
                    "active": p.conns,
                    "idle": s.idle,
                    "http2_connections": s.http2,
                    "picked_protocol": s.picked,
                    "max_conns": p.max_conns,
                    "fails": p.fails,
                    "max_fails": p.max_fails,
                    "fail_timeout_ms": p.fail_timeout.as_millis() as u64,
                    "out_for_ms": failed_for_ms,
                })
            })
            .collect();
        out.insert(
            name.clone(),
            json!({
                "algorithm": config.map(|c| c.algorithm.as_str()),
                "keepalive": upstream.transport.keepalive,
                "protocol": upstream.transport.protocol,
                "servers": servers,
            }),
        );
    }
    Json(json!({ "upstreams": out }))
}

async fn ha(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.ha() {
        Some(node) => Json(node.status()).into_response(),
        None => ApiError::not_found("HA is not configured ([ha] section)").into_response(),
    }
}

/// Test hook (only with GATEWAY_HA_TEST_HOOKS=1): `?enabled=true` drops adverts both ways,
/// simulating a partition; `?enabled=false` heals it.
async fn drop_adverts(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if std::env::var("GATEWAY_HA_TEST_HOOKS").as_deref() != Ok("1") {
        return ApiError::not_found("no admin endpoint /-/ha/drop-adverts").into_response();
    }
    let Some(node) = gw.ha() else {
        return ApiError::not_found("HA is not configured").into_response();
    };
    let enabled = q.get("enabled").map(String::as_str) == Some("true");
    node.drop_adverts(enabled);
    Json(json!({"dropping": enabled})).into_response()
}

async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.reload("admin api").await {
        Ok(()) => Json(json!({"status": "reloaded"})).into_response(),
        Err(e) => ApiError::new(StatusCode::BAD_REQUEST, "config_rejected", e).into_response(),
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    refresh_gauges(&gw);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        service_kit::metrics::render(&gw.metrics.registry),
    )
        .into_response()
}

/// Per-server gauges are rebuilt at scrape time so servers removed by a reload disappear.
fn refresh_gauges(gw: &Gateway) {
    let m = &gw.metrics;
    m.server_up.reset();
    m.server_active.reset();
    m.server_idle.reset();
    m.server_http2.reset();
    for (worker, open) in gw.worker_connections().into_iter().enumerate() {
        m.worker_connections
            .with_label_values(&[&worker.to_string()])
            .set(open as i64);
    }
    let snapshot = gw.snapshot.load();
    if let Some(cache) = &snapshot.cache {
        m.cache_bytes.set(cache.weighted_size() as i64);
    }
    for (name, upstream) in &snapshot.upstreams {
        for s in upstream.shared.snapshot() {
            let labels = [name.as_str(), s.peer.key.as_str()];
            m.server_up.with_label_values(&labels).set(i64::from(
                s.peer.state == PeerState::Up || s.peer.state == PeerState::Full,
            ));
            m.server_active
                .with_label_values(&labels)
                .set(s.peer.conns as i64);
            m.server_idle.with_label_values(&labels).set(s.idle as i64);
            m.server_http2
                .with_label_values(&labels)
                .set(s.http2 as i64);
        }
    }
}
