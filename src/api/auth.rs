//! `POST /api/auth/register`, `/login`, `/refresh`, `/logout`, e-mail verification and password
//! reset.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::me::{load_user, UserView};
use super::security_log;
use super::session_cookie;
use super::token::AuthUser;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{DisplayName, Email, FieldErrors, Password};
use crate::events::store::CommandError;
use crate::events::user::Role;
use crate::identity::{self, IdentityError, RefreshToken, Registration};
use crate::infra::sessions::SessionChange;
use crate::infra::tokens::Purpose;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(verify_email))
        .routes(routes!(request_password_reset))
        .routes(routes!(confirm_password_reset))
        .routes(routes!(logout))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterBody {
    #[schema(required = true, value_type = String, format = Email, max_length = 254)]
    email: Option<String>,
    /// At least 12 characters, and not easily guessed (zxcvbn score 3 or more).
    #[schema(required = true, value_type = String, min_length = 12, max_length = 128)]
    password: Option<String>,
    #[schema(required = true, value_type = String, min_length = 1, max_length = 80)]
    display_name: Option<String>,
    /// Asks for the BOTANIST role, granted when an admin verifies the account.
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

/// Creates an account (role USER) and mails a verification link.
#[utoipa::path(post, path = "/register", tag = "auth", request_body = RegisterBody,
    responses(
        (status = 201, description = "The new account", body = Positioned<UserView>),
        (status = 202, description = "Registered; the read model is catching up", body = Pending),
        (status = 409, description = "`email_taken`", body = ErrorBody),
    ))]
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
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(view, &committed)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginBody {
    #[schema(required = true, value_type = String)]
    email: Option<String>,
    #[schema(required = true, value_type = String)]
    password: Option<String>,
    /// A code from the authenticator app, or a recovery code, for accounts with TOTP.
    totp_code: Option<String>,
}

/// Opens a session: an access token (short-lived JWT) and a refresh token.
#[utoipa::path(post, path = "/login", tag = "auth", request_body = LoginBody,
    responses(
        (status = 200, description = "The session's tokens and the account", body = TokenPair),
        (status = 401, description = "`invalid_credentials`; `mfa_required` when the account has TOTP and no code came; `mfa_invalid`", body = ErrorBody),
        (status = 403, description = "`account_disabled`", body = ErrorBody),
        (status = 429, description = "`too_many_password_attempts`: too many wrong passwords for this address lately, from anywhere; `mfa_locked` (right password): too many wrong codes in a row, every code is refused for a while; `rate_limited`. Each with `Retry-After` (seconds)", body = ErrorBody),
    ))]
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
                IdentityError::MfaLocked { .. } => "mfa_locked",
                IdentityError::PasswordAttemptsExceeded { .. } => "too_many_password_attempts",
                _ => "error",
            };
            security_log::login_failed(&email_hash, reason);
            return Err(err.into());
        }
    };
    security_log::login_succeeded(session.user_id, session.refresh.session_id);
    let user = load_user(&app.pool, session.user_id).await?;
    let pair = token_pair(&app, session.user_id, session.role, &session.refresh, user)?;
    Ok(with_cookie(&app, session.role, pair))
}

/// The pair as JSON, and its refresh token in the browser's cookie ([`session_cookie`]).
fn with_cookie(app: &App, role: Role, pair: TokenPair) -> Response {
    let (idle, _) = app.sessions.lifetimes().of(role);
    let mut response = Json(&pair).into_response();
    session_cookie::set(response.headers_mut(), &pair.refresh_token, idle);
    response
}

/// The tokens of a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// Send as `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Single use: `POST /api/auth/refresh` answers a new pair, and reusing an old one revokes
    /// the session.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds the access token is valid for.
    expires_in: u64,
    /// The account (at login only).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserView>,
}

fn token_pair(
    app: &App,
    user_id: Uuid,
    role: Role,
    refresh: &RefreshToken,
    user: Option<UserView>,
) -> anyhow::Result<TokenPair> {
    Ok(TokenPair {
        access_token: app.jwt.issue(user_id, role, refresh.session_id)?,
        refresh_token: refresh.encode(),
        token_type: "Bearer".into(),
        expires_in: app.jwt.ttl_secs(),
        user,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshBody {
    /// The refresh token. A browser may send `{}` instead: its session cookie
    /// (`__Host-arosaje_refresh`, set at login, HttpOnly) then brings the token.
    #[schema(value_type = String)]
    refresh_token: Option<String>,
}

/// Rotates the refresh token of a session and issues a new access token; reusing an old refresh
/// token revokes the session. The token comes from the body or, when the body has none, from
/// the browser's session cookie; the answer renews that cookie too.
#[utoipa::path(post, path = "/refresh", tag = "auth", request_body = RefreshBody,
    responses(
        (status = 200, description = "A new pair; the old refresh token no longer works. The browser's session cookie is renewed", body = TokenPair),
        (status = 401, description = "`invalid_refresh_token`, or `refresh_token_reused` (the session is revoked); the session cookie is cleared", body = ErrorBody),
        (status = 422, description = "`validation_failed`: no `refresh_token` in the body and no session cookie", body = ErrorBody),
    ))]
async fn refresh(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let Some(raw) = body
        .refresh_token
        .or_else(|| session_cookie::read(&headers))
    else {
        return Err(ApiError::invalid("refresh_token", "is required"));
    };
    let refreshed = match identity::refresh(&app, &raw).await {
        Ok(refreshed) => refreshed,
        Err(err) => {
            let mut response = ApiError::from(err).into_response();
            if response.status() == StatusCode::UNAUTHORIZED
                || response.status() == StatusCode::FORBIDDEN
            {
                session_cookie::clear(response.headers_mut());
            }
            return Ok(response);
        }
    };
    let pair = token_pair(
        &app,
        refreshed.user_id,
        refreshed.role,
        &refreshed.refresh,
        None,
    )?;
    Ok(with_cookie(&app, refreshed.role, pair))
}

/// Ends the current session.
#[utoipa::path(post, path = "/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "The session is revoked and the browser's session cookie cleared")))]
async fn logout(State(app): State<App>, auth: AuthUser) -> Result<Response, ApiError> {
    app.sessions.revoke(auth.user_id, auth.session_id).await?;
    security_log::sessions_revoked(auth.user_id, "one", "logout");
    let mut response = StatusCode::NO_CONTENT.into_response();
    session_cookie::clear(response.headers_mut());
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenBody {
    /// The token from the link's fragment (`#token=...`).
    #[schema(required = true, value_type = String)]
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
#[utoipa::path(post, path = "/verify-email", tag = "auth", request_body = TokenBody,
    responses(
        (status = 204, description = "The address is verified"),
        (status = 400, description = "`invalid_token`: the link is invalid or has expired", body = ErrorBody),
    ))]
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

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetRequestBody {
    #[schema(required = true, value_type = String, format = Email)]
    email: Option<String>,
}

/// A short answer for requests whose outcome is not told.
#[derive(Debug, Serialize, ToSchema)]
pub struct Notice {
    /// `accepted`.
    status: String,
    message: String,
}

/// Mails a reset link. Always 202, whether or not the address has an account: nothing is
/// revealed.
#[utoipa::path(post, path = "/password-reset", tag = "auth", request_body = ResetRequestBody,
    responses((status = 202, description = "If the address has an account, a link is on its way", body = Notice)))]
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
    let notice = Notice {
        status: "accepted".into(),
        message: "if this address has an account, a reset link is on its way".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(notice)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetConfirmBody {
    /// The token from the link's fragment (`#token=...`).
    #[schema(required = true, value_type = String)]
    token: Option<String>,
    #[schema(required = true, value_type = String, min_length = 12, max_length = 128)]
    new_password: Option<String>,
}

/// Sets a new password from a reset link; every session of the account is revoked.
#[utoipa::path(post, path = "/password-reset/confirm", tag = "auth", request_body = ResetConfirmBody,
    responses(
        (status = 204, description = "The password is changed; every session is revoked"),
        (status = 400, description = "`invalid_token`: the link is invalid, used or expired", body = ErrorBody),
    ))]
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
