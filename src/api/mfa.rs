//! `/api/me/mfa/totp`: enrol an authenticator app (with the current password), confirm it,
//! remove it; `/api/me/mfa/verify`: step-up. Every route that takes a code answers 429
//! `mfa_locked` while the account's second factor is locked (too many wrong codes in a row).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::docs::ErrorBody;
use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::security_log;
use super::token::AuthUser;
use crate::identity::mfa;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(start, disable))
        .routes(routes!(confirm))
        .routes(routes!(verify))
}

/// Step-up: a fresh code proves the user is still there; sensitive actions (a role change) then
/// pass for 5 minutes.
#[utoipa::path(post, path = "/verify", operation_id = "verify_totp", tag = "me", security(("bearer" = [])),
    request_body = CodeBody,
    responses(
        (status = 204, description = "Verified: sensitive actions pass for 5 minutes"),
        (status = 401, description = "`mfa_invalid`", body = ErrorBody),
        (status = 409, description = "`mfa_not_enabled`", body = ErrorBody),
        (status = 429, description = "`mfa_locked`: too many wrong codes in a row; every code is refused until `Retry-After` (seconds) has passed; or `rate_limited`", body = ErrorBody),
    ))]
async fn verify(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<StatusCode, ApiError> {
    let code = code(&body)?;
    let verified = mfa::step_up(
        &app,
        auth.user_id,
        auth.session_id,
        code,
        &auth.metadata(meta),
    )
    .await;
    if let Err(err) = verified {
        security_log::mfa_failed(auth.user_id, "step_up");
        return Err(err.into());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A TOTP enrolment: type the secret or scan the URL into an authenticator app.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// Base32.
    secret: String,
    /// `otpauth://totp/...`, for a QR code.
    otpauth_url: String,
    version: i64,
    position: Option<i64>,
}

/// TOTP turned on: the recovery codes, each good for one login, shown this once
/// (24 random symbols each, as `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`; dashes and case do not matter).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    recovery_codes: Vec<String>,
    version: i64,
    position: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StartTotpBody {
    /// The account's current password: a session alone does not enrol an app.
    #[schema(required = true, value_type = String, min_length = 1)]
    current_password: Option<String>,
}

/// Starts enrolling an authenticator app, given the current password; confirm with a code from
/// it. Neither step counts as a fresh login for sensitive actions (step-up).
#[utoipa::path(post, path = "/totp", operation_id = "start_totp", tag = "me", security(("bearer" = [])),
    request_body = StartTotpBody,
    responses(
        (status = 201, description = "The secret to enrol", body = TotpEnrolment),
        (status = 409, description = "`mfa_already_enabled`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `current_password` is missing or wrong", body = ErrorBody),
        (status = 429, description = "`too_many_password_attempts`: too many wrong passwords for this account lately (`Retry-After`); or `rate_limited`", body = ErrorBody),
    ))]
async fn start(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<StartTotpBody>,
) -> Result<(StatusCode, Json<TotpEnrolment>), ApiError> {
    let current_password = body
        .current_password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::invalid("current_password", "is required"))?;
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(auth.user_id)
        .fetch_optional(&app.pool)
        .await?;
    let account = email.ok_or(ApiError::NotFound("user"))?;
    let enrolment = mfa::start(
        &app,
        auth.user_id,
        &account,
        current_password,
        &auth.metadata(meta),
    )
    .await?;
    super::settle(&app, "User", &enrolment.committed).await;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrolment {
            secret: enrolment.secret,
            otpauth_url: enrolment.otpauth_url,
            version: enrolment.committed.version,
            position: enrolment.committed.position.map(|p| p.global_position),
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeBody {
    /// A 6-digit code from the authenticator app, or (to remove TOTP) a recovery code.
    #[schema(required = true, value_type = String, min_length = 1)]
    code: Option<String>,
}

fn code(body: &CodeBody) -> Result<&str, ApiError> {
    body.code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::invalid("code", "is required"))
}

/// A code from the app turns TOTP on; the answer carries the recovery codes, shown this once.
/// The owner is mailed.
#[utoipa::path(post, path = "/totp/confirm", operation_id = "confirm_totp", tag = "me", security(("bearer" = [])),
    request_body = CodeBody,
    responses(
        (status = 200, description = "TOTP is on", body = RecoveryCodes),
        (status = 401, description = "`mfa_invalid`", body = ErrorBody),
        (status = 409, description = "`no_pending_enrolment` or `mfa_already_enabled`", body = ErrorBody),
        (status = 429, description = "`mfa_locked`: too many wrong codes in a row; every code is refused until `Retry-After` (seconds) has passed; or `rate_limited`", body = ErrorBody),
    ))]
async fn confirm(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let code = code(&body)?;
    let confirmed = mfa::confirm(
        &app,
        auth.user_id,
        auth.session_id,
        code,
        &auth.metadata(meta),
    )
    .await;
    let (codes, committed) = match confirmed {
        Ok(done) => done,
        Err(err) => {
            security_log::mfa_failed(auth.user_id, "confirm");
            return Err(err.into());
        }
    };
    security_log::mfa_changed(auth.user_id, "enabled");
    super::settle(&app, "User", &committed).await;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
        version: committed.version,
        position: committed.position.map(|p| p.global_position),
    }))
}

/// Turns TOTP off, given a current code or a recovery code; the owner is mailed.
#[utoipa::path(delete, path = "/totp", operation_id = "disable_totp", tag = "me", security(("bearer" = [])),
    request_body = CodeBody,
    responses(
        (status = 204, description = "TOTP is off"),
        (status = 401, description = "`mfa_invalid`", body = ErrorBody),
        (status = 409, description = "`mfa_not_enabled`", body = ErrorBody),
        (status = 429, description = "`mfa_locked`: too many wrong codes in a row; every code is refused until `Retry-After` (seconds) has passed; or `rate_limited`", body = ErrorBody),
    ))]
async fn disable(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<StatusCode, ApiError> {
    let code = code(&body)?;
    let committed = match mfa::disable(&app, auth.user_id, code, &auth.metadata(meta)).await {
        Ok(committed) => committed,
        Err(err) => {
            security_log::mfa_failed(auth.user_id, "disable");
            return Err(err.into());
        }
    };
    security_log::mfa_changed(auth.user_id, "disabled");
    super::settle(&app, "User", &committed).await;
    Ok(StatusCode::NO_CONTENT)
}
