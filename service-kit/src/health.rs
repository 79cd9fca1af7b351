//! Liveness and readiness state shared by a server's handlers and its accept loop.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use serde::Serialize;

/// Whether the process is draining, and since when it runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    draining: Arc<watch::Sender<bool>>,
    started: Instant,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Lifecycle {
            draining: Arc::new(watch::Sender::new(false)),
            started: Instant::now(),
        }
    }

    /// Flips readiness to "not ready"; the accept loop calls this on SIGTERM.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A receiver that sees `true` once draining has begun.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Resolves once draining has begun: long-lived streams (WebSockets) use it to close cleanly.
    pub async fn drain_started(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// The `/health` body: the process is up and answering.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Liveness<'a> {
    pub status: &'static str,
    pub service: &'a str,
    pub instance: &'a str,
    pub version: &'a str,
    pub uptime_seconds: u64,
}

/// The `/ready` body; `ready == false` goes out with status 503.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub status: &'static str,
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Readiness {
    /// Ready only when not draining and every check passes.
    pub fn evaluate(lifecycle: &Lifecycle, mut checks: Vec<Check>) -> Self {
        checks.insert(
            0,
            Check {
                name: "accepting",
                ok: !lifecycle.is_draining(),
                detail: lifecycle.is_draining().then(|| "draining".to_string()),
            },
        );
        let ready = checks.iter().all(|c| c.ok);
        Readiness {
            status: if ready { "ready" } else { "not_ready" },
            ready,
            checks,
        }
    }
}

/// A readiness check: `Ok` when the dependency is usable, `Err(detail)` otherwise.
pub type ReadyCheck = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Longest a readiness check may take before it counts as failed.
pub const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the standard `/health`, `/ready` and `/metrics` endpoints report.
pub struct Endpoints {
    pub info: crate::boot::ServiceInfo,
    pub instance_id: String,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub checks: Vec<(&'static str, ReadyCheck)>,
}

/// `/health`, `/ready` and `/metrics`, plus `/health` again at each of `health_aliases`
/// (e.g. `/api/v1/admin/health`, reachable through the gateway's admin route).
pub fn standard_routes(endpoints: Endpoints, health_aliases: &[&str]) -> StandardRoutes {
    use axum::routing::get;
    let endpoints = Arc::new(endpoints);
    let internal = axum::Router::new()
        .route("/health", get(liveness))
        .route("/ready", get(readiness))
        .route("/metrics", get(metrics))
        .with_state(endpoints.clone())
        .merge(crate::assets::routes());
    let mut api = axum::Router::new();
    for alias in health_aliases {
        api = api.route(alias, get(liveness));
    }
    StandardRoutes {
        internal,
        api: api.with_state(endpoints),
    }
}

/// The standard routes in two parts: what probes and scrapes use directly (no credential;
/// the gateway keeps them off public routes), and the API's own liveness alias, which goes
/// behind the API's authentication like every other `/api/v1/...` route.
pub struct StandardRoutes {
    pub internal: axum::Router,
    pub api: axum::Router,
}

async fn liveness(
    axum::extract::State(e): axum::extract::State<Arc<Endpoints>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!(Liveness {
        status: "ok",
        service: e.info.name,
        instance: &e.instance_id,
        version: e.info.version,
        uptime_seconds: e.lifecycle.uptime_seconds(),
    }))
}

async fn readiness(
    axum::extract::State(e): axum::extract::State<Arc<Endpoints>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut checks = Vec::with_capacity(e.checks.len());
    for (name, check) in &e.checks {
        let outcome = tokio::time::timeout(READY_CHECK_TIMEOUT, check()).await;
        let detail = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(detail)) => Some(detail),
            Err(_) => Some("timed out".to_string()),
        };
        checks.push(Check {
            name,
            ok: detail.is_none(),
            detail,
        });
    }
    let report = Readiness::evaluate(&e.lifecycle, checks);
    let status = if report.ready {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics(
    axum::extract::State(e): axum::extract::State<Arc<Endpoints>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.metrics.render(),
    )
        .into_response()
}
