//! `POST /api/v1/reports`: the seed's slow "generate reports" request.
//!
//! It deliberately takes `--report-duration` (default 5 s; a request may ask for its own
//! `duration_ms`, up to a minute) so that least-connections balancing, upstream read timeouts
//! and graceful drain have a long request to work with.
//!
//! A report aggregates every client's consultations, so it is for staff tokens only (any
//! role); a customer token gets 403.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use service_kit::auth::{Claims, Role};
use service_kit::json::parse_json;
use service_kit::ApiError;

use crate::store::now_rfc3339;
use crate::SharedState;

pub const MAX_DURATION_MS: u64 = 60_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// Only `consultations_summary` exists today.
    kind: Option<String>,
    duration_ms: Option<u64>,
}

pub async fn generate(
    State(state): State<SharedState>,
    claims: Claims,
    body: Bytes,
) -> Result<Response, ApiError> {
    claims.require_role(Role::Viewer, "generating a report")?;
    let request: ReportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReportRequest::default()
    } else {
        parse_json(&body)?
    };
    let kind = request.kind.as_deref().unwrap_or("consultations_summary");
    if kind != "consultations_summary" {
        return Err(ApiError::validation(
            "kind",
            "must be consultations_summary",
        ));
    }
    let duration = match request.duration_ms {
        Some(ms) if ms > MAX_DURATION_MS => {
            return Err(ApiError::validation(
                "duration_ms",
                format!("must be at most {MAX_DURATION_MS}"),
            ))
        }
        Some(ms) => Duration::from_millis(ms),
        None => state.report_duration,
    };
    let started = now_rfc3339();
    tokio::time::sleep(duration).await;
    let (by_status, upcoming) = state.store.summary().await?;
    let total: i64 = by_status.iter().map(|(_, n)| n).sum();
    let by_status: serde_json::Map<String, serde_json::Value> = by_status
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), n.into()))
        .collect();
    Ok(Json(serde_json::json!({
        "report": {
            "kind": kind,
            "generated_by": state.instance_id,
            "started_at": started,
            "finished_at": now_rfc3339(),
            "duration_ms": duration.as_millis() as u64,
            "consultations": { "total": total, "by_status": by_status, "upcoming": upcoming },
        }
    }))
    .into_response())
}
