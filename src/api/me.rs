//! `GET/PATCH /api/me`: the caller's own profile.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::token::AuthUser;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{optional_text, DisplayName, FieldErrors, Password};
use crate::events::double_option;
use crate::events::user::ProfileChanges;
use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/", get(get_me).patch(update_me))
        .route(
            "/sessions",
            get(list_sessions).delete(revoke_other_sessions),
        )
        .route("/password", axum::routing::post(change_password))
        .route("/sessions/{sid}", axum::routing::delete(revoke_session))
}

#[derive(Debug, Serialize)]
struct SessionView {
    id: Uuid,
    created_at: DateTime<Utc>,
    last_seen_at: Option<DateTime<Utc>>,
    user_agent: Option<String>,
    /// The session of the token making this request.
    current: bool,
}

async fn list_sessions(
    State(app): State<App>,
    auth: AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(
        serde_json::json!({ "items": items, "next_cursor": null }),
    ))
}

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

#[derive(Debug, Deserialize)]
pub struct ChangePasswordBody {
    current_password: Option<String>,
    new_password: Option<String>,
}

/// `POST /api/me/password`: the current password, then the new one; other sessions end.
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
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: String,
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

/// Body with the aggregate's version and the log position that produced it.
pub fn with_position<T: Serialize>(view: &T, position: Option<i64>) -> serde_json::Value {
    let mut body = serde_json::to_value(view).unwrap_or_default();
    body["position"] = serde_json::json!(position);
    body
}

async fn get_me(State(app): State<App>, auth: AuthUser) -> Result<Json<UserView>, ApiError> {
    load_user(&app.pool, auth.user_id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("user"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileBody {
    display_name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    city: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
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

async fn update_me(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<UpdateProfileBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let display_name = body
        .display_name
        .as_deref()
        .and_then(|v| errors.check("display_name", DisplayName::parse(v)));
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
    let cipher = app
        .keys
        .cipher(auth.user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
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
    let position = committed.position.map(|p| p.global_position);
    Ok((StatusCode::OK, Json(with_position(&view, position))).into_response())
}
