//! The admin API's OpenAPI 3.1 document, generated from the handlers' annotations
//! (`#[utoipa::path]`) and types (`ToSchema`), plus service-kit's conventions (bearer scheme,
//! 401/500 on every operation). Checked in as `admin-server/openapi.json`; the unit test below
//! fails when that file is stale.

use axum::extract::State;
use service_kit::auth::{self, Claims};
use service_kit::health::Liveness;
use service_kit::openapi::{Conventions, Document, ErrorResponse};
use service_kit::ApiError;
use utoipa::OpenApi;

use crate::users;
use crate::SharedState;

/// Where the document is served (behind the token, like every `/api/v1/admin` route).
pub const PATH: &str = "/api/v1/admin/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "InsightSerenity admin API",
        description = "Users and stats. Every operation needs a staff bearer token (`role` claim) \
                       for the audience `admin-server`; customer tokens get 403."
    ),
    paths(
        users::list,
        users::create,
        users::get_one,
        users::update,
        users::delete,
        users::stats,
        health,
        openapi_json,
    ),
    modifiers(&Conventions),
    tags(
        (name = "users", description = "Users CRUD"),
        (name = "stats", description = "Counts"),
        (name = "meta", description = "Liveness and this document"),
    )
)]
pub struct ApiDoc;

/// The rendered document.
pub fn document() -> Result<Document, serde_json::Error> {
    Document::new(&ApiDoc::openapi())
}

/// Liveness behind the token (the unauthenticated `/health` is for probes, not the API).
#[utoipa::path(get, path = "/api/v1/admin/health", tag = "meta", operation_id = "health",
    responses((status = 200, description = "The process is up", body = Liveness)))]
#[allow(dead_code)] // documents service-kit's handler
fn health() {}

/// This document.
#[utoipa::path(get, path = "/api/v1/admin/openapi.json", tag = "meta", operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
            body = Object),
        (status = 403, description = "Not a staff token", body = ErrorResponse),
    ))]
#[allow(dead_code)] // documents `serve`
fn openapi_json() {}

pub async fn serve(State(state): State<SharedState>, claims: Claims) -> Result<Document, ApiError> {
    claims.require_role(auth::Role::Viewer, "reading the API description")?;
    Ok(state.document.clone())
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
            "UPDATE_OPENAPI=1 cargo test -p admin-server openapi",
        ) {
            panic!("{why}");
        }
    }
}
