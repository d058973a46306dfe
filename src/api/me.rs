//! `GET/PATCH/DELETE /api/me`: the caller's own profile, and the erasure of their account.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Page, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::token::AuthUser;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{optional_text, DisplayName, FieldErrors, Password};
use crate::events::double_option;
use crate::events::user::ProfileChanges;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me, erase_me))
        .routes(routes!(list_sessions, revoke_other_sessions))
        .routes(routes!(change_password))
        .routes(routes!(revoke_session))
        .merge(super::export::me_routes())
        .merge(super::sittings::me_routes())
}

/// One signed-in device.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    id: Uuid,
    created_at: DateTime<Utc>,
    last_seen_at: Option<DateTime<Utc>>,
    user_agent: Option<String>,
    /// The session of the token making this request.
    current: bool,
}

/// The caller's sessions (one page: a user has few).
#[utoipa::path(get, path = "/sessions", tag = "me", security(("bearer" = [])),
    responses((status = 200, description = "The caller's sessions", body = Page<SessionView>)))]
async fn list_sessions(
    State(app): State<App>,
    auth: AuthUser,
) -> Result<Json<Page<SessionView>>, ApiError> {
    let items: Vec<SessionView> = app
        .sessions
        .list(auth.user_id)
        .await?
        .into_iter()
        .map(|(id, info)| SessionView {
            id,
            created_at: info.created_at,
            last_seen_at: info.last_seen_at,
            user_agent: info.user_agent,
            current: id == auth.session_id,
        })
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

/// Ends one of the caller's sessions (a lost phone).
#[utoipa::path(delete, path = "/sessions/{sid}", tag = "me", security(("bearer" = [])),
    params(("sid" = Uuid, Path, description = "The session's id, from `GET /api/me/sessions`")),
    responses(
        (status = 204, description = "The session is revoked"),
        (status = 404, description = "No such session of the caller's", body = ErrorBody),
    ))]
async fn revoke_session(
    State(app): State<App>,
    auth: AuthUser,
    super::extract::ApiPath(session_id): super::extract::ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if app.sessions.revoke(auth.user_id, session_id).await? {
        super::security_log::sessions_revoked(auth.user_id, "one", "revoked_by_user");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("session"))
    }
}

/// "Log out everywhere else": every session of the caller but this one ends.
#[utoipa::path(delete, path = "/sessions", tag = "me", security(("bearer" = [])),
    responses((status = 204, description = "Every other session is revoked")))]
async fn revoke_other_sessions(
    State(app): State<App>,
    auth: AuthUser,
) -> Result<StatusCode, ApiError> {
    app.sessions
        .revoke_others(auth.user_id, auth.session_id)
        .await?;
    super::security_log::sessions_revoked(auth.user_id, "others", "logout_elsewhere");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordBody {
    #[schema(required = true, value_type = String)]
    current_password: Option<String>,
    #[schema(required = true, value_type = String, min_length = 12, max_length = 128)]
    new_password: Option<String>,
}

/// The current password, then the new one; the other sessions end and the owner is mailed.
#[utoipa::path(post, path = "/password", tag = "me", security(("bearer" = [])),
    request_body = ChangePasswordBody,
    responses(
        (status = 204, description = "Changed; the other sessions are revoked"),
        (status = 422, description = "`validation_failed`: `current_password` is wrong, or `new_password` is too weak", body = ErrorBody),
        (status = 429, description = "`too_many_password_attempts`: too many wrong passwords for this account lately (`Retry-After`); or `rate_limited`", body = ErrorBody),
    ))]
async fn change_password(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<ChangePasswordBody>,
) -> Result<StatusCode, ApiError> {
    let mut errors = FieldErrors::new();
    if body.current_password.is_none() {
        errors.add("current_password", "is required");
    }
    let new = match body.new_password.as_deref() {
        None => {
            errors.add("new_password", "is required");
            None
        }
        Some(new) if body.current_password.as_deref() == Some(new) => {
            errors.add("new_password", "must differ from the current password");
            None
        }
        Some(new) => errors.check("new_password", Password::parse(new, &[])),
    };
    let (Some(current), Some(new)) = (body.current_password, new) else {
        return Err(ApiError::Validation(errors));
    };
    let committed = crate::identity::passwords::change_password(
        &app,
        auth.user_id,
        auth.session_id,
        current,
        new,
        &auth.metadata(meta),
    )
    .await?;
    super::security_log::password_changed(auth.user_id, "changed_by_user");
    super::security_log::sessions_revoked(auth.user_id, "others", "password_changed");
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A user as the read model knows them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    /// `USER`, `BOTANIST`, `ADMIN` or `AUDITOR`.
    pub role: String,
    /// `active` or `disabled`.
    pub status: String,
    pub email_verified: bool,
    /// Whether logins need a TOTP code.
    pub mfa_enabled: bool,
    pub botanist_requested: bool,
    /// `none`, `pending`, `approved` or `rejected`.
    pub botanist_status: String,
    pub phone: Option<String>,
    pub city: Option<String>,
    pub bio: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The account's version (its event count).
    pub version: i64,
}

/// The columns of a [`UserView`].
pub const USER_COLUMNS: &str = "id, email, display_name, role, status, email_verified, \
     mfa_enabled, botanist_requested, botanist_status, phone, city, bio, created_at, updated_at, version";

pub async fn load_user(pool: &PgPool, id: Uuid) -> Result<Option<UserView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The caller's account.
#[utoipa::path(get, path = "", tag = "me", security(("bearer" = [])),
    responses((status = 200, description = "The caller's account", body = UserView)))]
async fn get_me(State(app): State<App>, auth: AuthUser) -> Result<Json<UserView>, ApiError> {
    load_user(&app.pool, auth.user_id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("user"))
}

/// Only the fields sent change; `null` clears a field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateProfileBody {
    /// Cannot be cleared (`null` is refused).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 80)]
    display_name: Option<Option<String>>,
    /// Digits, spaces and `+ - ( ) .`; at least 6 digits.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 30)]
    phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100)]
    city: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 1000)]
    bio: Option<Option<String>>,
}

fn phone(value: Option<&str>) -> Result<Option<String>, String> {
    let text = optional_text(value, 30)?;
    if let Some(phone) = &text {
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        let allowed = phone
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        if !allowed || digits < 6 {
            return Err("must be a phone number (digits, spaces, + - ( ) .)".into());
        }
    }
    Ok(text)
}

/// Changes the caller's profile.
#[utoipa::path(patch, path = "", tag = "me", security(("bearer" = [])),
    request_body = UpdateProfileBody,
    responses(
        (status = 200, description = "The account as changed", body = Positioned<UserView>),
        (status = 202, description = "Changed; the read model is catching up", body = Pending),
        (status = 422, description = "`validation_failed`, or `nothing_to_change`", body = ErrorBody),
    ))]
async fn update_me(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<UpdateProfileBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let display_name = match body.display_name {
        None => None,
        Some(None) => {
            errors.add("display_name", "cannot be cleared");
            None
        }
        Some(Some(v)) => errors.check("display_name", DisplayName::parse(&v)),
    };
    let phone = body
        .phone
        .map(|v| errors.check("phone", phone(v.as_deref())))
        .map(|v| v.flatten());
    let city = body.city.map(|v| {
        errors
            .check("city", optional_text(v.as_deref(), 100))
            .flatten()
    });
    let bio = body.bio.map(|v| {
        errors
            .check("bio", optional_text(v.as_deref(), 1000))
            .flatten()
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let cipher = app.keys.cipher(auth.user_id).await?;
    let seal = |v: Option<Option<String>>| v.map(|v| v.map(|s| cipher.seal(&s)));
    let changes = ProfileChanges {
        display_name: display_name.map(|d| cipher.seal(d.as_str())),
        phone: seal(phone),
        city: seal(city),
        bio: seal(bio),
    };
    let committed = app
        .store
        .execute::<User>(
            &auth.user_id.to_string(),
            UserCommand::UpdateProfile { changes },
            &(),
            &auth.metadata(meta),
        )
        .await?;
    if !super::settle(&app, "User", &committed).await {
        return Ok(super::accepted(auth.user_id, &committed));
    }
    let view = load_user(&app.pool, auth.user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(super::positioned(view, &committed)).into_response())
}

/// GDPR erasure of the caller's account ("droit à l'oubli"): their open and accepted sittings are
/// cancelled, their applications withdrawn, their data key deleted (everything of theirs in the
/// log becomes unreadable for good), their plants, photos and profile removed, their messages
/// shown as from a deleted user, and every session ended. Needs a login or a TOTP code from the
/// last 5 minutes. Refused while they own or sit a running sitting.
#[utoipa::path(delete, path = "", operation_id = "erase_me", tag = "me", security(("bearer" = [])),
    responses(
        (status = 204, description = "Erased"),
        (status = 403, description = "`step_up_required`: no login or TOTP code in the last 5 minutes", body = ErrorBody),
        (status = 409, description = "`sitting_in_progress`: the caller owns or sits a running sitting", body = ErrorBody),
        (status = 503, description = "`erasure_settling`: the sittings it closed are not shown yet; try again", body = ErrorBody),
    ))]
async fn erase_me(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, ApiError> {
    auth.require_recent_authentication()?;
    let committed =
        crate::identity::erasure::erase(&app, auth.user_id, auth.actor(), &auth.metadata(meta))
            .await?;
    super::security_log::sessions_revoked(auth.user_id, "all", "erased");
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
