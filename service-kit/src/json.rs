//! Extractors whose rejections are our JSON errors, naming the offending field.
//!
//! axum's own `Json`, `Path` and `Query` reject with plain text; these wrap them so every bad
//! input gets `{"error":{...}}` with the right status: 400 malformed, 415 wrong content type,
//! 413 too large, 422 well-formed JSON with missing, unknown or invalid fields.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body any service accepts (the gateway enforces its own limit in front).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A JSON request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    } else {
        ApiError::bad_request(format!(
            "could not read request body: {}",
            rejection.body_text()
        ))
    }
}

/// Parses a JSON document into `T`, classifying failures as 400 (syntax) or 422 (shape).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => {
            let message = strip_position(&err.to_string());
            let field = if path == "." || path.is_empty() {
                backticked(&message).unwrap_or_else(|| "body".to_string())
            } else {
                path.to_string()
            };
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{field}: {message}"),
            )
            .with_field(field)
        }
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {err}"),
        ),
    }
}

/// serde_json appends " at line L column C"; the field name says more to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The first `name` in a serde message such as "missing field `email`".
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Largest page a list endpoint returns, and the default page size.
pub const MAX_PAGE: i64 = 100;
pub const DEFAULT_PAGE: i64 = 20;

/// Validated `limit`/`offset` of a list request (422 naming the field when out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub offset: i64,
}

impl PageRequest {
    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        let offset = offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::validation("offset", "must not be negative"));
        }
        Ok(PageRequest { limit, offset })
    }
}

/// One page of a list, with the total across pages.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items across all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// Path parameters; a malformed one (e.g. a non-numeric id) is a 400 JSON error.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; malformed or unknown ones are a 400 JSON error.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct User {
        email: String,
        role: Role,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Role {
        Admin,
    }

    fn err(body: &str) -> ApiError {
        parse_json::<User>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn classifies_json_failures() {
        let cases = [
            ("{", 400, None),
            ("not json", 400, None),
            (r#"{"email":"a@b.c","role":"admin"} trailing"#, 400, None),
            (r#"{"role":"admin"}"#, 422, Some("email")),
            (r#"{"email":"a@b.c","role":"admin","x":1}"#, 422, Some("x")),
            (r#"{"email":"a@b.c","role":"king"}"#, 422, Some("role")),
            (r#"{"email":5,"role":"admin"}"#, 422, Some("email")),
        ];
        for (body, status, field) in cases {
            let e = err(body);
            assert_eq!(e.status.as_u16(), status, "{body}: {e}");
            assert_eq!(e.field.as_deref(), field, "{body}: {e}");
        }
    }

    #[test]
    fn accepts_valid_documents() {
        let user: User = parse_json(br#"{"email":"a@b.c","role":"admin"}"#).unwrap();
        assert_eq!(user.email, "a@b.c");
    }
}
