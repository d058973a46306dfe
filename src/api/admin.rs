//! `/api/admin`: user administration (ADMIN only). Every change is a command whose events name
//! the admin in their metadata.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use super::guard::{Administer, Can};
use super::me::{load_user, UserView, USER_COLUMNS};
use super::pagination::{self, Page, PageParams};
use crate::commands::user::{User, UserCommand};
use crate::commands::values::FieldErrors;
use crate::events::user::Role;
use crate::infra::sessions::SessionChange;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(change_role))
        .routes(routes!(erase_user))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(pending_verifications))
        .routes(routes!(approve_botanist))
        .routes(routes!(reject_botanist))
        .routes(routes!(stats))
        .merge(super::export::admin_routes())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `USER`, `BOTANIST`, `ADMIN` or `AUDITOR`.
    role: Option<String>,
    /// Search in e-mail addresses and display names (at most 254 characters).
    q: Option<String>,
}

const USER_ID: &str = "The user's id";

/// Every account, newest first.
#[utoipa::path(get, path = "/users", tag = "admin", security(("bearer" = [])), params(UserListParams),
    responses(
        (status = 200, description = "A page of accounts", body = super::docs::Page<UserView>),
        (status = 403, description = "`forbidden`: ADMIN only; `mfa_enrollment_required`", body = ErrorBody),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn list_users(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
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
    // An admin's look at accounts is an access to personal data: recorded (crate::access)
    // before it is served. The search term is sealed under the keys of those it found.
    let q = match q {
        Some(q) => {
            let found: Vec<Uuid> = rows.iter().take(limit as usize).map(|u| u.id).collect();
            Some(crate::access::sealed_term(&app, q, &found).await?)
        }
        None => None,
    };
    let details = crate::access::AccessDetails {
        kind: crate::access::AccessKind::AdminUserSearch,
        subject_id: None,
        reason: None,
        query: serde_json::json!({ "role": role, "q": q, "after": cursor }),
    };
    crate::access::record(&app, &admin.metadata(meta), &details).await?;
    Ok(Json(pagination::page(rows, limit, |u: &UserView| u.id)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RoleBody {
    /// `USER`, `BOTANIST`, `ADMIN` or `AUDITOR`.
    #[schema(required = true, value_type = String, pattern = "^(USER|BOTANIST|ADMIN|AUDITOR)$")]
    role: Option<String>,
}

/// Accounts that asked to be botanists and wait for an admin, oldest first.
#[utoipa::path(get, path = "/verifications", tag = "admin", security(("bearer" = [])), params(PageParams),
    responses(
        (status = 200, description = "A page of accounts waiting", body = super::docs::Page<UserView>),
        (status = 403, description = "`forbidden`: ADMIN only; `mfa_enrollment_required`", body = ErrorBody),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn pending_verifications(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiQuery(params): ApiQuery<PageParams>,
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
    let details = crate::access::AccessDetails {
        kind: crate::access::AccessKind::AdminUserSearch,
        subject_id: None,
        reason: None,
        query: serde_json::json!({ "list": "verifications", "after": cursor }),
    };
    crate::access::record(&app, &admin.metadata(meta), &details).await?;
    let rows: Vec<UserView> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users \
          WHERE botanist_status = 'pending' AND ($1::uuid IS NULL OR id > $1) \
          ORDER BY id LIMIT $2"
    ))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(rows, limit, |u: &UserView| u.id)))
}

/// Grants the BOTANIST role the account asked for.
#[utoipa::path(post, path = "/verifications/{id}/approve", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    responses(
        (status = 200, description = "The account, now BOTANIST", body = Positioned<UserView>),
        (status = 202, description = "Done; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`no_pending_verification`; `own_account`", body = ErrorBody),
    ))]
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

/// Refuses the BOTANIST role the account asked for; it stays USER.
#[utoipa::path(post, path = "/verifications/{id}/reject", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    responses(
        (status = 200, description = "The account", body = Positioned<UserView>),
        (status = 202, description = "Done; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`no_pending_verification`; `own_account`", body = ErrorBody),
    ))]
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

/// The admin dashboard's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminStats {
    /// Accounts by role (`USER`, `BOTANIST`, `ADMIN`, `AUDITOR`).
    users: BTreeMap<String, i64>,
    disabled_users: i64,
    pending_botanist_verifications: i64,
    plants: i64,
    /// Sittings by status (`open`, `accepted`, `in_progress`, `completed`, `cancelled`,
    /// `expired`).
    sittings: BTreeMap<String, i64>,
    conversations: i64,
    messages: i64,
    /// Advice by state (`active`, `withdrawn`, `hidden`).
    advice: BTreeMap<String, i64>,
    /// Verdicts botanists gave on each other's advice (`validated`, `rejected`).
    advice_verdicts: BTreeMap<String, i64>,
    /// The log's last position.
    events: i64,
}

/// The admin dashboard's counts, from the read models.
#[utoipa::path(get, path = "/stats", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts", body = AdminStats),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
    ))]
async fn stats(
    State(app): State<App>,
    _admin: Can<Administer>,
) -> Result<Json<AdminStats>, ApiError> {
    let by_role: Vec<(String, i64)> =
        sqlx::query_as("SELECT role, count(*) FROM users GROUP BY role ORDER BY role")
            .fetch_all(&app.pool)
            .await?;
    let (disabled, pending, plants, events, conversations, messages): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users WHERE status = 'disabled'), \
                (SELECT count(*) FROM users WHERE botanist_status = 'pending'), \
                (SELECT count(*) FROM plants), \
                (SELECT COALESCE(max(global_position), 0) FROM events), \
                (SELECT count(*) FROM messaging.conversations), \
                (SELECT count(*) FROM messaging.messages)",
    )
    .fetch_one(&app.pool)
    .await?;
    let mut users: BTreeMap<String, i64> = ["USER", "BOTANIST", "ADMIN", "AUDITOR"]
        .into_iter()
        .map(|role| (role.to_string(), 0))
        .collect();
    users.extend(by_role);
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM sittings GROUP BY status")
            .fetch_all(&app.pool)
            .await?;
    let mut sittings: BTreeMap<String, i64> = [
        "open",
        "accepted",
        "in_progress",
        "completed",
        "cancelled",
        "expired",
    ]
    .into_iter()
    .map(|status| (status.to_string(), 0))
    .collect();
    sittings.extend(by_status);
    let counts = |sql: &'static str, keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let pool = app.pool.clone();
        async move {
            let found: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(&pool).await?;
            let mut all: BTreeMap<String, i64> = keys.into_iter().map(|k| (k, 0)).collect();
            all.extend(found);
            Ok::<_, sqlx::Error>(all)
        }
    };
    let advice = counts(
        "SELECT state, count(*) FROM advice GROUP BY state",
        &["active", "withdrawn", "hidden"],
    )
    .await?;
    let advice_verdicts = counts(
        "SELECT verdict, count(*) FROM advice_reviews GROUP BY verdict",
        &["validated", "rejected"],
    )
    .await?;
    Ok(Json(AdminStats {
        advice,
        advice_verdicts,
        sittings,
        conversations,
        messages,
        users,
        disabled_users: disabled,
        pending_botanist_verifications: pending,
        plants,
        events,
    }))
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
    Ok(Json(super::positioned(view, &committed)).into_response())
}

/// A new role takes effect at the user's next request: their sessions act with it at once.
/// Needs a login or a TOTP code (`POST /api/me/mfa/verify`) from the last 5 minutes.
#[utoipa::path(put, path = "/users/{id}/role", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    request_body = RoleBody,
    responses(
        (status = 200, description = "The account with its new role", body = Positioned<UserView>),
        (status = 202, description = "Done; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: ADMIN only; `step_up_required`: no login or TOTP code in the last 5 minutes", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`own_account`: admins cannot change their own role", body = ErrorBody),
    ))]
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

/// Disables an account: its sessions are revoked and it cannot log in.
#[utoipa::path(post, path = "/users/{id}/disable", operation_id = "disable_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    responses(
        (status = 200, description = "The account, disabled", body = Positioned<UserView>),
        (status = 202, description = "Done; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`own_account`", body = ErrorBody),
        (status = 422, description = "`nothing_to_change`: already disabled", body = ErrorBody),
    ))]
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

/// Enables a disabled account.
#[utoipa::path(post, path = "/users/{id}/enable", operation_id = "enable_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    responses(
        (status = 200, description = "The account, enabled", body = Positioned<UserView>),
        (status = 202, description = "Done; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`own_account`", body = ErrorBody),
        (status = 422, description = "`nothing_to_change`: already enabled", body = ErrorBody),
    ))]
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

/// GDPR erasure of an account, on the person's request or a legal one: as `DELETE /api/me` does
/// for oneself. Needs a login or a TOTP code from the last 5 minutes.
#[utoipa::path(delete, path = "/users/{id}", operation_id = "erase_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = USER_ID)),
    responses(
        (status = 204, description = "Erased"),
        (status = 403, description = "`forbidden`: ADMIN only; `step_up_required`: no login or TOTP code in the last 5 minutes", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "`own_account`: use `DELETE /api/me`; `sitting_in_progress`: the user owns or sits a running sitting", body = ErrorBody),
        (status = 503, description = "`erasure_settling`: the sittings it closed are not shown yet; try again", body = ErrorBody),
    ))]
async fn erase_user(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    if user_id == admin.user_id {
        return Err(ApiError::conflict(
            "own_account",
            "admins erase their own account with DELETE /api/me",
        ));
    }
    admin.require_recent_authentication()?;
    let committed =
        crate::identity::erasure::erase(&app, user_id, admin.actor(), &admin.metadata(meta))
            .await?;
    super::security_log::admin_action(admin.user_id, "erase", user_id);
    super::security_log::sessions_revoked(user_id, "all", "erased_by_admin");
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
