//! The customer API: consultations CRUD, slow report generation and a WebSocket of
//! consultation changes, over a store (SQLite or PostgreSQL) shared by all replicas.
//!
//! Every `/api/v1/...` route (the health alias too) needs a bearer token
//! (`service_kit::auth`): customer tokens (claim `client`) see and change only their own
//! consultations and events, staff tokens (claim `role`) see everything; the rules are in
//! `consultations`, `reports` and `notifications`.
//!
//! The OpenAPI document ([`openapi`]) is served at `/api/v1/openapi.json`, behind the same
//! token (any), and checked in as `customer-services/openapi.json`.

pub mod consultations;
pub mod notifications;
pub mod openapi;
pub mod reports;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use service_kit::auth::Auth;
use service_kit::boot::{AppContext, BootError, ServiceInfo};
use service_kit::health::{standard_routes, Endpoints, Lifecycle};

use crate::notifications::Notifier;
use crate::store::ConsultationStore;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "customer-services",
    version: env!("CARGO_PKG_VERSION"),
    store_file: DB_FILE,
};

pub const DEFAULT_PORT: u16 = 3001;

/// Database file inside `--data-dir`.
pub const DB_FILE: &str = "customer.sqlite";

/// Flags of this service beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// How long generating a report takes (the seed's slow "generate reports" request).
    #[arg(long, env = "REPORT_DURATION", default_value = "5s", value_parser = service_kit::settings::parse_duration)]
    pub report_duration: Duration,

    /// Longest report a request may ask for with `duration_ms` (longer asks are a 422).
    #[arg(long, env = "REPORT_MAX_DURATION", default_value = "60s", value_parser = service_kit::settings::parse_duration)]
    pub report_max_duration: Duration,

    /// How often the change feed polls the shared database for other replicas' writes.
    #[arg(long, env = "NOTIFY_POLL", default_value = "250ms", value_parser = service_kit::settings::parse_duration)]
    pub notify_poll: Duration,
}

pub struct AppState {
    pub store: ConsultationStore,
    pub instance_id: String,
    pub lifecycle: Lifecycle,
    pub notifier: Notifier,
    pub report_duration: Duration,
    pub report_max_duration: Duration,
    /// This API's OpenAPI document, rendered once.
    pub document: service_kit::openapi::Document,
}

pub type SharedState = Arc<AppState>;

/// The store `--database-url` names (default: [`DB_FILE`] in `--data-dir`).
async fn open_store(ctx: &AppContext) -> Result<ConsultationStore, BootError> {
    use service_kit::store::StoreTarget;
    let (target, metrics) = service_kit::boot::store_target(ctx)?;
    let opened = match target {
        StoreTarget::Sqlite(path) => ConsultationStore::open_sqlite(&path, metrics),
        StoreTarget::Postgres(settings) => {
            ConsultationStore::open_postgres(&settings, metrics).await
        }
    };
    opened.map_err(|e| BootError::Runtime(e.to_string()))
}

/// Opens the store, starts the change feed and returns the service's routes.
pub async fn build(ctx: AppContext, options: Options) -> Result<Router, BootError> {
    let auth = Auth::start(&ctx.auth, INFO.name).map_err(|e| BootError::Config(e.to_string()))?;
    let store = open_store(&ctx).await?;
    let notifier = Notifier::start(store.clone(), options.notify_poll)
        .await
        .map_err(|e| BootError::Runtime(e.to_string()))?;
    let standard = standard_routes(
        Endpoints {
            info: INFO,
            instance_id: ctx.instance_id.clone(),
            lifecycle: ctx.lifecycle.clone(),
            metrics: ctx.metrics,
            checks: vec![("store", store.ready_check())],
        },
        &["/api/v1/health"],
    );
    let state = Arc::new(AppState {
        store,
        instance_id: ctx.instance_id,
        lifecycle: ctx.lifecycle,
        notifier,
        report_duration: options.report_duration,
        report_max_duration: options.report_max_duration,
        document: openapi::document().map_err(|e| BootError::Runtime(e.to_string()))?,
    });
    Ok(auth
        .protect(routes(state).merge(standard.api))
        .merge(standard.internal))
}

/// The customer API routes (without the auth layer: [`build`] adds it).
pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route(
            "/api/v1/consultations",
            get(consultations::list).post(consultations::create),
        )
        .route(
            "/api/v1/consultations/{id}",
            get(consultations::get_one)
                .patch(consultations::update)
                .delete(consultations::delete),
        )
        .route("/api/v1/reports", post(reports::generate))
        .route(openapi::PATH, get(openapi::serve))
        .route("/api/v1/notifications", get(notifications::subscribe))
        .with_state(state)
}
