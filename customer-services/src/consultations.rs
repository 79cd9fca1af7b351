//! Consultations CRUD handlers: validation, authorization and HTTP mapping; SQL is in `store`.
//!
//! Who may do what (the token's claims, see `service_kit::auth`):
//!
//! | token | list / get | create / update | delete |
//! |---|---|---|---|
//! | customer (`client` claim) | its own consultations only | its own only (`client` must be its own) | its own only |
//! | staff viewer | all | 403 | 403 |
//! | staff support | all | all | 403 |
//! | staff operator, admin | all | all | all |
//!
//! A customer asking for another client's consultation gets 404, as if it did not exist (so
//! ids of other clients' consultations are not confirmed); creating one for, or moving one to,
//! another client is 403.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use service_kit::auth::{forbidden, Claims, Principal, Role};
use service_kit::json::{ApiJson, ApiPath, ApiQuery, Page, PageRequest};
use service_kit::openapi::ErrorResponse;
use service_kit::ApiError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::store::{Changes, Consultation, NewConsultation, Status};
use crate::SharedState;

/// A new consultation. Surrounding spaces are trimmed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsultation {
    /// The client it is for; a customer token may only name its own.
    #[schema(min_length = 1, max_length = 200, example = "acme")]
    client: String,
    #[schema(min_length = 1, max_length = 500, example = "Quarterly review")]
    topic: String,
    /// RFC 3339 timestamp (stored in UTC).
    #[schema(example = "2027-01-15T09:30:00Z")]
    scheduled_at: String,
    /// Default `scheduled`.
    #[schema(nullable = false)]
    status: Option<Status>,
}

/// Changes to a consultation: at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConsultation {
    /// Moving it to another client needs a staff token.
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    client: Option<String>,
    #[schema(min_length = 1, max_length = 500, nullable = false)]
    topic: Option<String>,
    /// RFC 3339 timestamp.
    #[schema(nullable = false)]
    scheduled_at: Option<String>,
    #[schema(nullable = false)]
    status: Option<Status>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<i64>,
    /// Items to skip.
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
    /// Only consultations with this status.
    status: Option<Status>,
}

/// The `{id}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConsultationId {
    /// The consultation's id.
    pub id: i64,
}

fn text(field: &str, raw: &str, max: usize) -> Result<String, ApiError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

/// An RFC 3339 timestamp, stored normalized to UTC so stored values sort in time order.
pub fn scheduled_at(raw: &str) -> Result<String, ApiError> {
    let parsed = OffsetDateTime::parse(raw.trim(), &Rfc3339).map_err(|_| {
        ApiError::validation(
            "scheduled_at",
            "must be an RFC 3339 timestamp such as 2027-01-15T09:30:00Z",
        )
    })?;
    parsed
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|_| ApiError::validation("scheduled_at", "is out of range"))
}

/// The client a request is limited to: `Some` for a customer token, `None` for staff.
fn owner(claims: &Claims) -> Option<String> {
    claims.client().map(str::to_string)
}

/// Customers may write their own consultations; staff need support or higher.
fn require_write(claims: &Claims, client: Option<&str>) -> Result<(), ApiError> {
    match claims.principal() {
        Principal::Customer(own) => match client {
            Some(other) if other != own => Err(forbidden(format!(
                "a customer token for {own:?} cannot write consultations of another client"
            ))),
            _ => Ok(()),
        },
        Principal::Staff(_) => claims.require_role(Role::Support, "changing consultations"),
    }
}

/// Creates a consultation.
#[utoipa::path(post, path = "/api/v1/consultations", tag = "consultations",
    operation_id = "create_consultation",
    request_body = CreateConsultation,
    responses(
        (status = 201, description = "Created", body = Consultation,
            headers(("Location" = String, description = "The new consultation's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 403, description = "Another client's (customer token), or a staff viewer", body = ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = ErrorResponse),
        (status = 415, description = "Not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field (named in `field`)", body = ErrorResponse),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    claims: Claims,
    ApiJson(body): ApiJson<CreateConsultation>,
) -> Result<Response, ApiError> {
    let client = text("client", &body.client, 200)?;
    require_write(&claims, Some(&client))?;
    let new = NewConsultation {
        client,
        topic: text("topic", &body.topic, 500)?,
        scheduled_at: scheduled_at(&body.scheduled_at)?,
        status: body.status.unwrap_or(Status::Scheduled),
    };
    let consultation = state.store.create(new).await?;
    let location = format!("/api/v1/consultations/{}", consultation.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(consultation),
    )
        .into_response())
}

/// Lists consultations (a customer token: its own only), by id.
#[utoipa::path(get, path = "/api/v1/consultations", tag = "consultations",
    operation_id = "list_consultations",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of consultations", body = Page<Consultation>),
        (status = 400, description = "Malformed or unknown query parameter", body = ErrorResponse),
        (status = 422, description = "limit or offset out of range", body = ErrorResponse),
    ))]
pub async fn list(
    State(state): State<SharedState>,
    claims: Claims,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let page = PageRequest::new(query.limit, query.offset)?;
    Ok(Json(state.store.list(query.status, owner(&claims), page).await?).into_response())
}

/// One consultation (another client's is 404 to a customer token).
#[utoipa::path(get, path = "/api/v1/consultations/{id}", tag = "consultations",
    operation_id = "get_consultation",
    params(ConsultationId),
    responses(
        (status = 200, description = "The consultation", body = Consultation),
        (status = 400, description = "id is not an integer", body = ErrorResponse),
        (status = 404, description = "No such consultation (or another client's)", body = ErrorResponse),
    ))]
pub async fn get_one(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    match state.store.get(id, owner(&claims)).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError::not_found(format!("no consultation with id {id}"))),
    }
}

/// Changes a consultation.
#[utoipa::path(patch, path = "/api/v1/consultations/{id}", tag = "consultations",
    operation_id = "update_consultation",
    params(ConsultationId),
    request_body = UpdateConsultation,
    responses(
        (status = 200, description = "The updated consultation", body = Consultation),
        (status = 400, description = "Malformed JSON, or id is not an integer", body = ErrorResponse),
        (status = 403, description = "Moving it to another client (customer token), or a staff viewer", body = ErrorResponse),
        (status = 404, description = "No such consultation (or another client's)", body = ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = ErrorResponse),
        (status = 415, description = "Not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field (named in `field`), or no field given", body = ErrorResponse),
    ))]
pub async fn update(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<UpdateConsultation>,
) -> Result<Response, ApiError> {
    let changes = Changes {
        client: body
            .client
            .as_deref()
            .map(|v| text("client", v, 200))
            .transpose()?,
        topic: body
            .topic
            .as_deref()
            .map(|v| text("topic", v, 500))
            .transpose()?,
        scheduled_at: body.scheduled_at.as_deref().map(scheduled_at).transpose()?,
        status: body.status,
    };
    if changes.client.is_none()
        && changes.topic.is_none()
        && changes.scheduled_at.is_none()
        && changes.status.is_none()
    {
        return Err(ApiError::validation(
            "body",
            "give at least one of client, topic, scheduled_at, status",
        ));
    }
    require_write(&claims, changes.client.as_deref())?;
    match state.store.update(id, changes, owner(&claims)).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError::not_found(format!("no consultation with id {id}"))),
    }
}

/// Deletes a consultation.
#[utoipa::path(delete, path = "/api/v1/consultations/{id}", tag = "consultations",
    operation_id = "delete_consultation",
    params(ConsultationId),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "id is not an integer", body = ErrorResponse),
        (status = 403, description = "Staff below operator", body = ErrorResponse),
        (status = 404, description = "No such consultation (or another client's)", body = ErrorResponse),
    ))]
pub async fn delete(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    if claims.client().is_none() {
        claims.require_role(Role::Operator, "deleting consultations")?;
    }
    if state.store.delete(id, owner(&claims)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no consultation with id {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_at_is_normalized_to_utc() {
        assert_eq!(
            scheduled_at("2027-01-15T10:30:00+01:00").unwrap(),
            "2027-01-15T09:30:00Z"
        );
        for bad in ["tomorrow", "2027-13-01T00:00:00Z", "2027-01-15", ""] {
            assert_eq!(
                scheduled_at(bad).unwrap_err().field.as_deref(),
                Some("scheduled_at")
            );
        }
    }
}
