//! The admin API: users and stats over a store (SQLite or PostgreSQL) shared by all replicas.
//!
//! Routes are built by [`build`]; the shared boot sequence (service-kit) adds request ids,
//! metrics, logs and the JSON 404 fallback around them. Every `/api/v1/admin/...` route (the
//! health alias too) needs a staff bearer token (`service_kit::auth`):
//!
//! | action | needs |
//! |---|---|
//! | list / get users, stats | any role (viewer, support, operator, admin) |
//! | create a user, update name or email | operator or admin |
//! | create an admin, change a role, delete | admin |
//!
//! Customer tokens (claim `client`) get 403 everywhere.
//!
//! The OpenAPI document ([`openapi`]) is served at `/api/v1/admin/openapi.json`, behind the
//! same token (any staff role), and checked in as `admin-server/openapi.json`.

pub mod openapi;
pub mod store;
pub mod users;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use service_kit::auth::Auth;
use service_kit::boot::{AppContext, BootError, ServiceInfo};
use service_kit::health::{standard_routes, Endpoints};
use service_kit::ApiError;

use crate::store::UserStore;

pub const INFO: ServiceInfo = ServiceInfo {
    name: "admin-server",
    version: env!("CARGO_PKG_VERSION"),
    store_file: DB_FILE,
};

pub const DEFAULT_PORT: u16 = 3002;

/// Database file inside `--data-dir`.
pub const DB_FILE: &str = "admin.sqlite";

pub struct AppState {
    pub store: UserStore,
    pub instance_id: String,
    pub started: std::time::Instant,
    /// This API's OpenAPI document, rendered once.
    pub document: service_kit::openapi::Document,
}

pub type SharedState = Arc<AppState>;

/// Opens the store and returns the service's routes.
pub async fn build(ctx: AppContext) -> Result<Router, BootError> {
    let auth = Auth::start(&ctx.auth, INFO.name).map_err(|e| BootError::Config(e.to_string()))?;
    let store = open_store(&ctx).await?;
    let standard = standard_routes(
        Endpoints {
            info: INFO,
            instance_id: ctx.instance_id.clone(),
            lifecycle: ctx.lifecycle,
            metrics: ctx.metrics,
            checks: vec![("store", store.ready_check())],
        },
        &["/api/v1/admin/health"],
    );
    let document = openapi::document().map_err(|e| BootError::Runtime(e.to_string()))?;
    let state = Arc::new(AppState {
        store,
        instance_id: ctx.instance_id.clone(),
        started: std::time::Instant::now(),
        document,
    });
    Ok(auth
        .protect(routes(state).merge(standard.api))
        .merge(standard.internal))
}

/// The store `--database-url` names (default: [`DB_FILE`] in `--data-dir`).
async fn open_store(ctx: &AppContext) -> Result<UserStore, BootError> {
    use service_kit::store::StoreTarget;
    let (target, metrics) = service_kit::boot::store_target(ctx)?;
    let opened = match target {
        StoreTarget::Sqlite(path) => UserStore::open_sqlite(&path, metrics),
        StoreTarget::Postgres(settings) => UserStore::open_postgres(&settings, metrics).await,
    };
    opened.map_err(|e| BootError::Runtime(e.to_string()))
}

/// The admin API routes (without the auth layer: [`build`] adds it).
pub fn routes(state: SharedState) -> Router {
    Router::new()
        .route(openapi::PATH, get(openapi::serve))
        .route("/api/v1/admin/stats", get(users::stats))
        .route("/api/v1/admin/users", get(users::list).post(users::create))
        .route(
            "/api/v1/admin/users/{id}",
            get(users::get_one)
                .patch(users::update)
                .delete(users::delete),
        )
        .with_state(state)
}

/// Converts store failures into JSON errors, mapping a UNIQUE conflict to 409.
pub(crate) fn conflict_or(err: service_kit::store::StoreError, what: &str) -> ApiError {
    if err.is_constraint() {
        ApiError::conflict(what.to_string())
    } else {
        err.into()
    }
}
