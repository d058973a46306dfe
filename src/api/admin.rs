//! `/api/admin`: user administration (ADMIN only). Every change is a command whose events name
//! the admin in their metadata.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use super::guard::{Administer, Can};
use super::me::{load_user, with_position, UserView, USER_COLUMNS};
use super::pagination::{self, Page};
use crate::commands::user::{User, UserCommand};
use crate::commands::values::FieldErrors;
use crate::events::user::Role;
use crate::infra::sessions::SessionChange;
use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/users", get(list_users))
        .route("/users/{id}/role", put(change_role))
        .route("/users/{id}/disable", post(disable))
        .route("/users/{id}/enable", post(enable))
        .route("/verifications", get(pending_verifications))
        .route("/verifications/{id}/approve", post(approve_botanist))
        .route("/verifications/{id}/reject", post(reject_botanist))
        .route("/stats", get(stats))
}

#[derive(Debug, Deserialize)]
pub struct UserListParams {
    limit: Option<String>,
    cursor: Option<String>,
    role: Option<String>,
    q: Option<String>,
}

async fn list_users(
    State(app): State<App>,
    _admin: Can<Administer>,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> Result<Json<Page<UserView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    let role = match params.role.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(raw) => errors.check(
            "role",
            Role::parse(raw)
                .map(Role::as_str)
                .ok_or_else(|| "must be USER, BOTANIST, ADMIN or AUDITOR".to_string()),
        ),
    };
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > 254) {
        errors.add("q", "must be at most 254 characters");
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows: Vec<UserView> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users \
          WHERE ($1::text IS NULL OR role = $1) \
            AND ($2::uuid IS NULL OR id < $2) \
            AND ($3::text IS NULL OR email ILIKE $3 OR display_name ILIKE $3) \
          ORDER BY id DESC LIMIT $4"
    ))
    .bind(role)
    .bind(cursor)
    .bind(q.map(pagination::like_pattern))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(rows, limit, |u: &UserView| u.id)?))
}

#[derive(Debug, Deserialize)]
pub struct RoleBody {
    role: Option<String>,
}

/// Accounts that asked to be botanists and wait for an admin, oldest first.
async fn pending_verifications(
    State(app): State<App>,
    _admin: Can<Administer>,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> Result<Json<Page<UserView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows: Vec<UserView> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users \
          WHERE botanist_status = 'pending' AND ($1::uuid IS NULL OR id > $1) \
          ORDER BY id LIMIT $2"
    ))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(rows, limit, |u: &UserView| u.id)?))
}

async fn approve_botanist(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    administer(
        &app,
        &admin,
        meta,
        user_id,
        UserCommand::ApproveBotanist,
        SessionChange::SetRole(Role::Botanist),
    )
    .await
}

async fn reject_botanist(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    administer(
        &app,
        &admin,
        meta,
        user_id,
        UserCommand::RejectBotanist,
        SessionChange::Stamp,
    )
    .await
}

/// The admin dashboard's counts, from the read models. Areas that do not exist yet (sittings,
/// messages, advice) join as their read models land.
async fn stats(
    State(app): State<App>,
    _admin: Can<Administer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by_role: Vec<(String, i64)> =
        sqlx::query_as("SELECT role, count(*) FROM users GROUP BY role ORDER BY role")
            .fetch_all(&app.pool)
            .await?;
    let (disabled, pending, plants, events): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users WHERE status = 'disabled'), \
                (SELECT count(*) FROM users WHERE botanist_status = 'pending'), \
                (SELECT count(*) FROM plants), \
                (SELECT COALESCE(max(global_position), 0) FROM events)",
    )
    .fetch_one(&app.pool)
    .await?;
    let mut users = serde_json::Map::new();
    for role in ["USER", "BOTANIST", "ADMIN", "AUDITOR"] {
        users.insert(role.into(), serde_json::json!(0));
    }
    for (role, count) in by_role {
        users.insert(role, serde_json::json!(count));
    }
    Ok(Json(serde_json::json!({
        "users": users,
        "disabled_users": disabled,
        "pending_botanist_verifications": pending,
        "plants": plants,
        "events": events,
    })))
}

/// Runs an admin command on a user, applies it to their sessions at once (`change`), answers
/// with the user.
async fn administer(
    app: &App,
    admin: &Can<Administer>,
    meta: crate::events::Metadata,
    user_id: Uuid,
    command: UserCommand,
    change: SessionChange,
) -> Result<Response, ApiError> {
    if user_id == admin.user_id {
        return Err(ApiError::conflict(
            "own_account",
            "admins cannot change their own role or status",
        ));
    }
    let committed = app
        .store
        .execute::<User>(&user_id.to_string(), command, &(), &admin.metadata(meta))
        .await?;
    // Sessions change at once, whatever the read models' lag; logins racing with the change
    // see its stamp and look again (identity::login).
    crate::identity::apply_account_change(app, user_id, change, &committed).await?;
    let action = match change {
        SessionChange::RevokeAll => "disable",
        SessionChange::SetRole(_) => "set_role",
        _ => "account_change",
    };
    super::security_log::admin_action(admin.user_id, action, user_id);
    if change == SessionChange::RevokeAll {
        super::security_log::sessions_revoked(user_id, "all", "disabled_by_admin");
    }
    let settled = super::settle(app, "User", &committed).await;
    if !settled {
        return Ok(super::accepted(user_id, &committed));
    }
    let view = load_user(&app.pool, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let position = committed.position.map(|p| p.global_position);
    Ok(Json(with_position(&view, position)).into_response())
}

/// A new role takes effect at the user's next request: their sessions act with it at once.
async fn change_role(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<Response, ApiError> {
    admin.require_recent_authentication()?;
    let role = body
        .role
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| ApiError::invalid("role", "must be USER, BOTANIST, ADMIN or AUDITOR"))?;
    administer(
        &app,
        &admin,
        meta,
        user_id,
        UserCommand::ChangeRole { role },
        SessionChange::SetRole(role),
    )
    .await
}

async fn disable(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    administer(
        &app,
        &admin,
        meta,
        user_id,
        UserCommand::Disable,
        SessionChange::RevokeAll,
    )
    .await
}

async fn enable(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    administer(
        &app,
        &admin,
        meta,
        user_id,
        UserCommand::Enable,
        SessionChange::Stamp,
    )
    .await
}
