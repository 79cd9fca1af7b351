//! Active health checks: one task per server probes `path` every `interval` over a fresh
//! connection (same transport as traffic: TLS, client certificate) and feeds the result
//! through rise/fall hysteresis (`balance::HealthTracker`) into the shared pool state.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::task::JoinSet;

use crate::balance::{HealthTracker, PeerState, Transition};
use crate::config::HealthCheckConfig;
use crate::runtime::{Snapshot, UpstreamRuntime};
use crate::upstream::RequestBody;

/// The probe tasks of one snapshot; dropping it stops them.
pub struct HealthChecks {
    _tasks: JoinSet<()>,
}

impl HealthChecks {
    pub fn start(snapshot: &Snapshot) -> HealthChecks {
        let mut tasks = JoinSet::new();
        for upstream in snapshot.upstreams.values() {
            let Some(check) = upstream.health_check.clone() else {
                continue;
            };
            let states = upstream.shared.snapshot();
            for (key, addr) in upstream.shared.server_keys() {
                let healthy = !states
                    .iter()
                    .any(|s| s.peer.key == key && s.peer.state == PeerState::Unhealthy);
                tasks.spawn(probe_loop(
                    upstream.clone(),
                    check.clone(),
                    key,
                    addr,
                    healthy,
                ));
            }
        }
        HealthChecks { _tasks: tasks }
    }
}

async fn probe_loop(
    upstream: Arc<UpstreamRuntime>,
    check: HealthCheckConfig,
    key: String,
    addr: SocketAddr,
    healthy: bool,
) {
    let mut tracker = HealthTracker::starting(check.rise, check.fall, healthy);
    let mut ticker = tokio::time::interval(check.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = tokio::time::timeout(check.timeout.0, probe(&upstream, &check, addr)).await;
        let ok = matches!(result, Ok(Ok(status)) if status.as_u16() == check.expect_status);
        if let Some(transition) = tracker.observe(ok) {
            let healthy = transition == Transition::Up;
            upstream.shared.set_healthy(&key, healthy);
            let detail = match &result {
                Ok(Ok(status)) => format!("status {}", status.as_u16()),
                Ok(Err(e)) => e.clone(),
                Err(_) => "timed out".to_string(),
            };
            if healthy {
                tracing::info!(upstream = %upstream.shared.name, server = %key, "health check: server is up");
            } else {
                tracing::warn!(upstream = %upstream.shared.name, server = %key, %detail, "health check: server is down");
            }
        }
    }
}

async fn probe(
    upstream: &UpstreamRuntime,
    check: &HealthCheckConfig,
    addr: SocketAddr,
) -> Result<StatusCode, String> {
    let mut sender = upstream
        .transport
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let host = match &upstream.transport.server_name {
        Some(name) => name.to_str().to_string(),
        None => addr.to_string(),
    };
    let request = Request::get(check.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "insightserenity-gateway-health")
        .body(RequestBody::Empty)
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read (and discard) the body so the server sees a complete exchange.
    let _ = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_else(|_| Bytes::new());
    Ok(status)
}
