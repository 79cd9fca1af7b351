//! Users CRUD and stats handlers: input validation and HTTP mapping only; SQL is in `store`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use service_kit::auth::{self, Claims};
use service_kit::json::{ApiJson, ApiPath, ApiQuery, PageRequest};
use service_kit::openapi::ErrorResponse;
use service_kit::ApiError;
use utoipa::{IntoParams, ToSchema};

use crate::store::{NewUser, Role, User, UserChanges};
use crate::{conflict_or, SharedState};

/// A new user. Surrounding spaces are trimmed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// A plausible address (one `@`, a dotted domain), unique regardless of case.
    #[schema(format = Email, min_length = 1, max_length = 254, example = "ada@insightserenity.com")]
    email: String,
    #[schema(min_length = 1, max_length = 100, example = "Ada Lovelace")]
    name: String,
    /// Creating an admin needs an admin token.
    role: Role,
}

/// Changes to a user: at least one field. Changing `role` needs an admin token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(format = Email, min_length = 1, max_length = 254, nullable = false)]
    email: Option<String>,
    #[schema(min_length = 1, max_length = 100, nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    role: Option<Role>,
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
    /// Only users with this role.
    role: Option<Role>,
}

/// `GET /api/v1/admin/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub users: UserCounts,
    /// The replica that answered.
    pub instance: String,
    pub uptime_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserCounts {
    pub total: i64,
    /// Users per role (roles without users are left out).
    pub by_role: BTreeMap<String, i64>,
}

/// The `{id}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserId {
    /// The user's id.
    pub id: i64,
}

/// A plausible address: one `@`, non-empty local part, a dotted domain, no spaces, ≤ 254 bytes.
pub fn validate_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let invalid = |why: &str| ApiError::validation("email", why.to_string());
    if email.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if email.len() > 254 {
        return Err(invalid("must be at most 254 characters"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("must contain @"));
    };
    if local.is_empty() || domain.contains('@') {
        return Err(invalid(
            "must have exactly one @ after a non-empty local part",
        ));
    }
    let labels_ok = domain.split('.').count() >= 2
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    if !labels_ok {
        return Err(invalid("must have a domain such as example.com"));
    }
    Ok(email.to_string())
}

pub fn validate_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::validation("name", "must not be empty"));
    }
    if name.chars().count() > 100 {
        return Err(ApiError::validation(
            "name",
            "must be at most 100 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

/// Creates a user.
#[utoipa::path(post, path = "/api/v1/admin/users", operation_id = "create_user", tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = User,
            headers(("Location" = String, description = "The new user's URL"))),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 403, description = "Needs operator (admin to create an admin)", body = ErrorResponse),
        (status = 409, description = "The email is taken", body = ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = ErrorResponse),
        (status = 415, description = "Not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field (named in `field`)", body = ErrorResponse),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    claims: Claims,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    claims.require_role(auth::Role::Operator, "creating a user")?;
    if body.role == Role::Admin {
        claims.require_role(auth::Role::Admin, "creating an admin")?;
    }
    let new = NewUser {
        email: validate_email(&body.email)?,
        name: validate_name(&body.name)?,
        role: body.role,
    };
    let email = new.email.clone();
    let user = state
        .store
        .create(new)
        .await
        .map_err(|e| conflict_or(e, &format!("a user with email {email} already exists")))?;
    let location = format!("/api/v1/admin/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    )
        .into_response())
}

/// Lists users, newest id last.
#[utoipa::path(get, path = "/api/v1/admin/users", operation_id = "list_users", tag = "users",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of users", body = service_kit::json::Page<User>),
        (status = 400, description = "Malformed or unknown query parameter", body = ErrorResponse),
        (status = 403, description = "Not a staff token", body = ErrorResponse),
        (status = 422, description = "limit or offset out of range", body = ErrorResponse),
    ))]
pub async fn list(
    State(state): State<SharedState>,
    claims: Claims,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    claims.require_role(auth::Role::Viewer, "reading users")?;
    let page = PageRequest::new(query.limit, query.offset)?;
    let page = state.store.list(query.role, page).await?;
    Ok(Json(page).into_response())
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", operation_id = "get_user", tag = "users",
    params(UserId),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "id is not an integer", body = ErrorResponse),
        (status = 403, description = "Not a staff token", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
    ))]
pub async fn get_one(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    claims.require_role(auth::Role::Viewer, "reading users")?;
    match state.store.get(id).await? {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(ApiError::not_found(format!("no user with id {id}"))),
    }
}

/// Changes a user's email, name or role.
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", operation_id = "update_user", tag = "users",
    params(UserId),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "Malformed JSON, or id is not an integer", body = ErrorResponse),
        (status = 403, description = "Needs operator (admin to change a role)", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
        (status = 409, description = "The email is taken", body = ErrorResponse),
        (status = 413, description = "Body over 1 MiB", body = ErrorResponse),
        (status = 415, description = "Not application/json", body = ErrorResponse),
        (status = 422, description = "Invalid field (named in `field`), or no field given", body = ErrorResponse),
    ))]
pub async fn update(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Response, ApiError> {
    claims.require_role(auth::Role::Operator, "updating a user")?;
    if body.role.is_some() {
        claims.require_role(auth::Role::Admin, "changing a role")?;
    }
    if body.email.is_none() && body.name.is_none() && body.role.is_none() {
        return Err(ApiError::validation(
            "body",
            "give at least one of email, name, role",
        ));
    }
    let changes = UserChanges {
        email: body.email.as_deref().map(validate_email).transpose()?,
        name: body.name.as_deref().map(validate_name).transpose()?,
        role: body.role,
    };
    let email = changes.email.clone().unwrap_or_default();
    match state
        .store
        .update(id, changes)
        .await
        .map_err(|e| conflict_or(e, &format!("a user with email {email} already exists")))?
    {
        Some(user) => Ok(Json(user).into_response()),
        None => Err(ApiError::not_found(format!("no user with id {id}"))),
    }
}

/// Deletes a user.
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}", operation_id = "delete_user", tag = "users",
    params(UserId),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "id is not an integer", body = ErrorResponse),
        (status = 403, description = "Needs admin", body = ErrorResponse),
        (status = 404, description = "No such user", body = ErrorResponse),
    ))]
pub async fn delete(
    State(state): State<SharedState>,
    claims: Claims,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    claims.require_role(auth::Role::Admin, "deleting a user")?;
    if state.store.delete(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no user with id {id}")))
    }
}

/// User counts per role.
#[utoipa::path(get, path = "/api/v1/admin/stats", operation_id = "get_stats", tag = "stats",
    responses(
        (status = 200, description = "Counts", body = Stats),
        (status = 403, description = "Not a staff token", body = ErrorResponse),
    ))]
pub async fn stats(State(state): State<SharedState>, claims: Claims) -> Result<Response, ApiError> {
    claims.require_role(auth::Role::Viewer, "reading stats")?;
    let by_role = state.store.count_by_role().await?;
    let total: i64 = by_role.iter().map(|(_, n)| n).sum();
    let by_role = by_role
        .into_iter()
        .map(|(role, n)| (role.as_str().to_string(), n))
        .collect();
    Ok(Json(Stats {
        users: UserCounts { total, by_role },
        instance: state.instance_id.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        for ok in [
            "a@b.co",
            " ops@insightserenity.com ",
            "x.y+z@sub.example.org",
        ] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "no-at", "@b.co", "a@b", "a@@b.co", "a b@c.co", "a@b..co", "a\t@b.co",
        ] {
            let err = validate_email(bad).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("email"), "{bad:?}");
        }
    }

    #[test]
    fn name_validation() {
        assert_eq!(validate_name("  Ada  ").unwrap(), "Ada");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"n".repeat(101)).is_err());
        assert!(validate_name(&"é".repeat(100)).is_ok());
    }
}
