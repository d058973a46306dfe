//! `POST /api/auth/register`, `/login`, `/logout`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::me::{load_user, with_position};
use super::security_log;
use super::token::AuthUser;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{DisplayName, Email, FieldErrors, Password};
use crate::events::store::CommandError;
use crate::events::user::Role;
use crate::identity::{self, IdentityError, RefreshToken, Registration};
use crate::infra::sessions::SessionChange;
use crate::infra::tokens::Purpose;
use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/refresh", post(refresh))
        .route("/verify-email", post(verify_email))
        .route("/password-reset", post(request_password_reset))
        .route("/password-reset/confirm", post(confirm_password_reset))
        .route("/logout", post(logout))
}

#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    email: Option<String>,
    password: Option<String>,
    display_name: Option<String>,
    #[serde(default)]
    botanist: bool,
}

fn required<'a>(
    errors: &mut FieldErrors,
    field: &str,
    value: &'a Option<String>,
) -> Option<&'a str> {
    if value.is_none() {
        errors.add(field, "is required");
    }
    value.as_deref()
}

async fn register(
    State(app): State<App>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let email = required(&mut errors, "email", &body.email)
        .and_then(|v| errors.check("email", Email::parse(v)));
    let password = required(&mut errors, "password", &body.password).and_then(|v| {
        let context = [
            body.email.as_deref().unwrap_or(""),
            body.display_name.as_deref().unwrap_or(""),
        ];
        errors.check("password", Password::parse(v, &context))
    });
    let display_name = required(&mut errors, "display_name", &body.display_name)
        .and_then(|v| errors.check("display_name", DisplayName::parse(v)));
    let (Some(email), Some(password), Some(display_name)) = (email, password, display_name) else {
        return Err(ApiError::Validation(errors));
    };
    super::limits::limit_email(&app, "register", &app.email_index.hash(&email)).await?;
    let metadata = crate::events::Metadata {
        actor_role: Role::User.as_str().into(),
        ..meta
    };
    let registration = Registration {
        email,
        password,
        display_name,
        botanist: body.botanist,
    };
    let (user_id, committed) = identity::register_user(&app, registration, metadata).await?;
    if !super::settle(&app, "User", &committed).await {
        return Ok(super::accepted(user_id, &committed));
    }
    let view = load_user(&app.pool, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let position = committed.position.map(|p| p.global_position);
    Ok((StatusCode::CREATED, Json(with_position(&view, position))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LoginBody {
    email: Option<String>,
    password: Option<String>,
    /// A code from the authenticator app, or a recovery code, for accounts with TOTP.
    totp_code: Option<String>,
}

async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let email = required(&mut errors, "email", &body.email);
    let password = required(&mut errors, "password", &body.password);
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Validation(errors));
    };
    // An address that cannot exist costs the same password check as a wrong password.
    let Ok(email) = Email::parse(email) else {
        identity::passwords::verify_password(
            password.to_string(),
            identity::passwords::dummy_hash(),
        )
        .await?;
        security_log::login_failed(&[], "invalid_credentials");
        return Err(IdentityError::InvalidCredentials.into());
    };
    let email_hash = app.email_index.hash(&email);
    super::limits::limit_email(&app, "login", &email_hash).await?;
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(200).collect());
    let session = match identity::login(
        &app,
        &email,
        password.to_string(),
        body.totp_code.as_deref(),
        user_agent,
        &meta,
    )
    .await
    {
        Ok(session) => session,
        Err(err) => {
            let reason = match &err {
                IdentityError::InvalidCredentials => "invalid_credentials",
                IdentityError::AccountDisabled => "account_disabled",
                IdentityError::Settling => "account_settling",
                IdentityError::MfaRequired => "mfa_required",
                IdentityError::MfaInvalid => "mfa_invalid",
                _ => "error",
            };
            security_log::login_failed(&email_hash, reason);
            return Err(err.into());
        }
    };
    security_log::login_succeeded(session.user_id, session.refresh.session_id);
    let user = load_user(&app.pool, session.user_id).await?;
    Ok(Json(token_pair(
        &app,
        session.user_id,
        session.role,
        &session.refresh,
        user,
    )?)
    .into_response())
}

fn token_pair(
    app: &App,
    user_id: Uuid,
    role: Role,
    refresh: &RefreshToken,
    user: Option<super::me::UserView>,
) -> anyhow::Result<serde_json::Value> {
    let mut body = json!({
        "access_token": app.jwt.issue(user_id, role, refresh.session_id)?,
        "refresh_token": refresh.encode(),
        "token_type": "Bearer",
        "expires_in": app.jwt.ttl_secs(),
    });
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    Ok(body)
}

#[derive(Debug, Deserialize)]
pub struct RefreshBody {
    refresh_token: Option<String>,
}

/// Rotates the refresh token of a session and issues a new access token (see
/// [`identity::refresh`]).
async fn refresh(
    State(app): State<App>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let Some(raw) = body.refresh_token else {
        return Err(ApiError::invalid("refresh_token", "is required"));
    };
    let refreshed = identity::refresh(&app, &raw).await?;
    Ok(Json(token_pair(
        &app,
        refreshed.user_id,
        refreshed.role,
        &refreshed.refresh,
        None,
    )?)
    .into_response())
}

async fn logout(State(app): State<App>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    app.sessions.revoke(auth.user_id, auth.session_id).await?;
    security_log::sessions_revoked(auth.user_id, "one", "logout");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct TokenBody {
    token: Option<String>,
}

/// A token naming an account that does not exist is as invalid as a forged one.
fn token_command_error(err: CommandError<crate::commands::user::UserError>) -> ApiError {
    match err {
        CommandError::Domain(crate::commands::user::UserError::NotFound) => invalid_action_token(),
        other => other.into(),
    }
}

fn invalid_action_token() -> ApiError {
    ApiError::BadRequest {
        code: "invalid_token",
        message: "this link is invalid or has expired".into(),
    }
}

/// The link mailed at registration.
async fn verify_email(
    State(app): State<App>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<StatusCode, ApiError> {
    let token = body
        .token
        .ok_or_else(|| ApiError::invalid("token", "is required"))?;
    let (user_id, _) = app
        .tokens
        .verify(Purpose::VerifyEmail, &token)
        .ok_or_else(invalid_action_token)?;
    let metadata = crate::events::Metadata {
        actor_id: Some(user_id),
        actor_role: "USER".into(),
        ..meta
    };
    let committed = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::VerifyEmail,
            &(),
            &metadata,
        )
        .await
        .map_err(token_command_error)?;
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct ResetRequestBody {
    email: Option<String>,
}

/// Always 202, whether or not the address has an account: nothing is revealed.
async fn request_password_reset(
    State(app): State<App>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<ResetRequestBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let email = required(&mut errors, "email", &body.email)
        .and_then(|v| errors.check("email", Email::parse(v)));
    let Some(email) = email else {
        return Err(ApiError::Validation(errors));
    };
    let email_hash = app.email_index.hash(&email);
    super::limits::limit_email(&app, "password-reset", &email_hash).await?;
    let account: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE email_hash = $1 AND status = 'active'")
            .bind(&email_hash)
            .fetch_optional(&app.pool)
            .await?;
    if let Some(user_id) = account {
        // In the background, so the answer takes the same time either way.
        let app = app.clone();
        let metadata = crate::events::Metadata {
            actor_id: None,
            actor_role: "ANONYMOUS".into(),
            ..meta
        };
        tokio::spawn(async move {
            let outcome = app
                .store
                .execute::<User>(
                    &user_id.to_string(),
                    UserCommand::RequestPasswordReset,
                    &(),
                    &metadata,
                )
                .await;
            if let Err(err) = outcome {
                tracing::warn!(%user_id, error = %err, "password reset request not recorded");
            }
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "message": "if this address has an account, a reset link is on its way"})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ResetConfirmBody {
    token: Option<String>,
    new_password: Option<String>,
}

/// Sets a new password from a reset link; every session of the account is revoked.
async fn confirm_password_reset(
    State(app): State<App>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<ResetConfirmBody>,
) -> Result<StatusCode, ApiError> {
    let mut errors = FieldErrors::new();
    let token = required(&mut errors, "token", &body.token).map(str::to_string);
    let password = required(&mut errors, "new_password", &body.new_password)
        .and_then(|v| errors.check("new_password", Password::parse(v, &[])));
    let (Some(token), Some(password)) = (token, password) else {
        return Err(ApiError::Validation(errors));
    };
    let (user_id, generation) = app
        .tokens
        .verify(Purpose::ResetPassword, &token)
        .ok_or_else(invalid_action_token)?;
    let password_hash = identity::passwords::hash_password(password).await?;
    let password_hash = identity::passwords::seal_hash(&app, user_id, password_hash).await?;
    let metadata = crate::events::Metadata {
        actor_id: Some(user_id),
        actor_role: "USER".into(),
        ..meta
    };
    let command = UserCommand::ResetPassword {
        generation,
        password_hash,
    };
    let committed = app
        .store
        .execute::<User>(&user_id.to_string(), command, &(), &metadata)
        .await
        .map_err(token_command_error)?;
    // Every session goes at once (including a thief's), and a login racing with the change
    // against a read model that still has the old password is refused.
    identity::apply_account_change(&app, user_id, SessionChange::RevokeAll, &committed).await?;
    security_log::password_changed(user_id, "reset");
    security_log::sessions_revoked(user_id, "all", "password_reset");
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT)
}
