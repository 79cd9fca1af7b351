//! OpenAPI documents of the backends (feature `openapi`): what every service's document shares.
//!
//! Each service derives its own `utoipa::OpenApi` from its handlers' `#[utoipa::path]`
//! annotations and adds [`Conventions`] as a modifier, which brings the parts that come from
//! service-kit rather than from the service: the `bearer` security scheme (an Ed25519 JWT,
//! see `auth`) required by every operation, and the responses every authenticated route can
//! give — 401 (no or bad token) and 500 — in the shared error shape ([`ErrorResponse`]).
//! Handlers list their own error statuses (`body = ErrorResponse`).
//!
//! [`Document`] serves the rendered document; [`check_in`] compares it with the copy checked
//! into a service's crate so a change to the API shows up in review.

use std::path::Path;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

/// Name of the security scheme every operation requires.
pub const SECURITY_SCHEME: &str = "bearer";

/// Environment variable that makes [`check_in`] rewrite the checked-in document.
pub const UPDATE_ENV: &str = "UPDATE_OPENAPI";

/// The body of every error response: `{"error":{...}}` (see `error::ApiError`).
#[derive(Debug, ToSchema)]
#[schema(title = "Error response")]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status of the response, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// Stable, machine-readable snake_case code such as `not_found` or `validation_failed`.
    pub code: String,
    /// Human-readable message, safe to show.
    pub message: String,
    /// The request's id (also in the `X-Request-ID` response header).
    pub request_id: String,
    /// The offending input field, on validation failures.
    #[schema(nullable = false)]
    pub field: Option<String>,
}

/// A modifier adding service-kit's part of every backend's document (see the module docs).
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An EdDSA (Ed25519) JWT whose `aud` names this service, with `exp` and \
                         exactly one of `role` (staff) or `client` (customer).",
                    ))
                    .build(),
            ),
        );
        let mut schemas = vec![(ErrorResponse::name().into_owned(), ErrorResponse::schema())];
        ErrorResponse::schemas(&mut schemas);
        components.schemas.extend(schemas);
        openapi.security = Some(vec![SecurityRequirement::new(
            SECURITY_SCHEME,
            Vec::<String>::new(),
        )]);

        let common = [
            ("401", "No token, or a token that is invalid, expired or for another service (`WWW-Authenticate: Bearer ...`)."),
            ("500", "Internal error (the cause is logged, not sent)."),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in common {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description).into());
                }
            }
        }
    }
}

/// A response carrying [`ErrorResponse`].
pub fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorResponse::name())))
                .build(),
        )
        .build()
}

/// A rendered document, served as `application/json`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Document(Arc<str>);

impl Document {
    /// Renders `openapi` as pretty JSON with a final newline (the checked-in form).
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Result<Document, serde_json::Error> {
        let mut json = openapi.to_pretty_json()?;
        json.push('\n');
        Ok(Document(json.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl IntoResponse for Document {
    fn into_response(self) -> Response {
        (
            [(http::header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

/// Compares `document` with the checked-in file at `path`. With `UPDATE_OPENAPI` set it
/// rewrites the file instead. `Err` says what differs and how to regenerate (`regenerate`: the
/// command, e.g. `UPDATE_OPENAPI=1 cargo test -p admin-server openapi`).
pub fn check_in(document: &Document, path: &Path, regenerate: &str) -> Result<(), String> {
    if std::env::var_os(UPDATE_ENV).is_some() {
        return std::fs::write(path, document.as_str())
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    if checked_in == document.as_str() {
        return Ok(());
    }
    let line = checked_in
        .lines()
        .zip(document.as_str().lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| {
            checked_in
                .lines()
                .count()
                .min(document.as_str().lines().count())
        });
    Err(format!(
        "{} differs from the document the code generates (first difference at line {}); \
         regenerate it with `{regenerate}` and commit it",
        path.display(),
        line + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(utoipa::OpenApi)]
    #[openapi(modifiers(&Conventions))]
    struct Empty;

    #[test]
    fn conventions_add_the_scheme_and_error_schema() {
        use utoipa::OpenApi;
        let doc: serde_json::Value =
            serde_json::from_str(Document::new(&Empty::openapi()).unwrap().as_str()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let scheme = &doc["components"]["securitySchemes"][SECURITY_SCHEME];
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(scheme["bearerFormat"], "JWT");
        assert_eq!(doc["security"][0][SECURITY_SCHEME], serde_json::json!([]));
        let detail = &doc["components"]["schemas"]["ErrorDetail"];
        assert_eq!(
            detail["required"],
            serde_json::json!(["status", "code", "message", "request_id"])
        );
    }
}
