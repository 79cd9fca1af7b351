//! `POST /api/v1/reports`: the seed's slow "generate reports" request.
//!
//! It deliberately takes `--report-duration` (default 5 s; a request may ask for its own
//! `duration_ms`, up to `--report-max-duration`, default a minute) so that least-connections balancing, upstream read timeouts
//! and graceful drain have a long request to work with.
//!
//! A report aggregates every client's consultations, so it is for staff tokens only (any
//! role); a customer token gets 403.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use service_kit::auth::{Claims, Role};
use service_kit::json::parse_json;
use service_kit::openapi::ErrorResponse;
use service_kit::ApiError;
use utoipa::ToSchema;

use crate::store::now_rfc3339;
use crate::SharedState;

/// What to generate; an empty body (or `null`) asks for the defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// Only `consultations_summary` exists today (the default).
    #[schema(nullable = false, example = "consultations_summary")]
    kind: Option<String>,
    /// How long generating takes, in ms (default: the server's `--report-duration`); at most
    /// the server's `--report-max-duration` (a minute by default), 422 beyond.
    #[schema(nullable = false, maximum = 60000)]
    duration_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportResponse {
    pub report: Report,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    pub kind: String,
    /// The replica that generated it.
    pub generated_by: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC.
    pub finished_at: String,
    pub duration_ms: u64,
    pub consultations: Summary,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub total: i64,
    /// Consultations per status (statuses without any are left out).
    pub by_status: BTreeMap<String, i64>,
    /// Scheduled consultations still to come.
    pub upcoming: i64,
}

/// Generates the consultations summary, slowly (staff tokens only).
#[utoipa::path(post, path = "/api/v1/reports", tag = "reports", operation_id = "generate_report",
    request_body(content = Option<ReportRequest>, content_type = "application/json",
        description = "Optional; an empty body or `null` means the defaults"),
    responses(
        (status = 200, description = "The report", body = ReportResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 403, description = "A customer token", body = ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = ErrorResponse),
        (status = 422, description = "Invalid field (named in `field`)", body = ErrorResponse),
    ))]
pub async fn generate(
    State(state): State<SharedState>,
    claims: Claims,
    body: Bytes,
) -> Result<Response, ApiError> {
    claims.require_role(Role::Viewer, "generating a report")?;
    // An empty body and `null` both ask for the defaults.
    let request: ReportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReportRequest::default()
    } else {
        parse_json::<Option<ReportRequest>>(&body)?.unwrap_or_default()
    };
    let kind = request
        .kind
        .unwrap_or_else(|| "consultations_summary".to_string());
    if kind != "consultations_summary" {
        return Err(ApiError::validation(
            "kind",
            "must be consultations_summary",
        ));
    }
    let duration = match request.duration_ms {
        Some(ms) if u128::from(ms) > state.report_max_duration.as_millis() => {
            return Err(ApiError::validation(
                "duration_ms",
                format!("must be at most {}", state.report_max_duration.as_millis()),
            ))
        }
        Some(ms) => Duration::from_millis(ms),
        None => state.report_duration,
    };
    let started = now_rfc3339();
    tokio::time::sleep(duration).await;
    let (by_status, upcoming) = state.store.summary().await?;
    let total: i64 = by_status.iter().map(|(_, n)| n).sum();
    let by_status = by_status
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n))
        .collect();
    Ok(Json(ReportResponse {
        report: Report {
            kind,
            generated_by: state.instance_id.clone(),
            started_at: started,
            finished_at: now_rfc3339(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            consultations: Summary {
                total,
                by_status,
                upcoming,
            },
        },
    })
    .into_response())
}
