//! The customer API's OpenAPI 3.1 document, generated from the handlers' annotations
//! (`#[utoipa::path]`) and types (`ToSchema`), plus service-kit's conventions (bearer scheme,
//! 401/500 on every operation). Checked in as `customer-services/openapi.json`; the unit test
//! below fails when that file is stale.

use axum::extract::State;
use service_kit::auth::Claims;
use service_kit::health::Liveness;
use service_kit::openapi::{Conventions, Document};
use utoipa::OpenApi;

use crate::{consultations, notifications, reports, SharedState};

/// Where the document is served (behind the token, like every `/api/v1` route).
pub const PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "InsightSerenity customer API",
        description = "Consultations, reports and the change feed. Every operation needs a \
                       bearer token for the audience `customer-services`: customer tokens \
                       (`client` claim) see and change only their own consultations; staff \
                       tokens (`role` claim) see everything."
    ),
    paths(
        consultations::list,
        consultations::create,
        consultations::get_one,
        consultations::update,
        consultations::delete,
        reports::generate,
        notifications::subscribe,
        health,
        openapi_json,
    ),
    modifiers(&Conventions),
    tags(
        (name = "consultations", description = "Consultations CRUD"),
        (name = "reports", description = "The slow summary report"),
        (name = "notifications", description = "The change feed (WebSocket)"),
        (name = "meta", description = "Liveness and this document"),
    )
)]
pub struct ApiDoc;

/// The rendered document.
pub fn document() -> Result<Document, serde_json::Error> {
    Document::new(&ApiDoc::openapi())
}

/// Liveness behind the token (the unauthenticated `/health` is for probes, not the API).
#[utoipa::path(get, path = "/api/v1/health", tag = "meta", operation_id = "health",
    responses((status = 200, description = "The process is up", body = Liveness)))]
#[allow(dead_code)] // documents service-kit's handler
fn health() {}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document",
        content_type = "application/json", body = Object)))]
#[allow(dead_code)] // documents `serve`
fn openapi_json() {}

/// Any valid token may read the document.
pub async fn serve(State(state): State<SharedState>, _claims: Claims) -> Document {
    state.document.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_is_checked_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let doc = document().expect("render");
        if let Err(why) = service_kit::openapi::check_in(
            &doc,
            &path,
            "UPDATE_OPENAPI=1 cargo test -p customer-services openapi",
        ) {
            panic!("{why}");
        }
    }
}
