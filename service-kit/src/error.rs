//! The one JSON error shape every service and the gateway answer with:
//! `{"error":{"status":404,"code":"not_found","message":"...","request_id":"..."}}`.
//!
//! Internal detail is logged, never sent: `ApiError::internal` keeps the cause for the log
//! and shows the client a generic message.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::request_id::RequestId;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable snake_case code.
    pub code: &'static str,
    /// Human-readable message, safe to show to the client.
    pub message: String,
    /// The offending input field, when there is one.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("{field}: {}", message.into()),
        )
        .with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A server-side fault: the cause goes to the log, the client sees a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The JSON body for this error, naming `request_id`.
    pub fn to_json(&self, request_id: &str) -> String {
        let envelope = Envelope {
            error: Body {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
                request_id,
                field: self.field.as_deref(),
            },
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            format!(
                r#"{{"error":{{"status":{},"code":"internal","message":"error","request_id":""}}}}"#,
                self.status.as_u16()
            )
        })
    }

    /// Renders with an explicit request id (for code outside a request scope, e.g. the gateway).
    pub fn into_response_with_id(self, request_id: &RequestId) -> Response {
        let body = self.to_json(request_id.as_str());
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(crate::request_id::HEADER, request_id.header_value());
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = RequestId::current().unwrap_or_else(RequestId::generate);
        self.into_response_with_id(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_shape() {
        let err = ApiError::not_found("no user 7");
        let v: serde_json::Value = serde_json::from_str(&err.to_json("req-1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"status":404,"code":"not_found","message":"no user 7","request_id":"req-1"}})
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let err = ApiError::validation("email", "must contain @");
        let v: serde_json::Value = serde_json::from_str(&err.to_json("r")).unwrap();
        assert_eq!(v["error"]["status"], 422);
        assert_eq!(v["error"]["field"], "email");
        assert_eq!(v["error"]["message"], "email: must contain @");
    }
}
