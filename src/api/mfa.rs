//! `/api/me/mfa/totp`: enrol an authenticator app, confirm it, remove it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiJson, RequestMeta};
use super::security_log;
use super::token::AuthUser;
use crate::identity::mfa;
use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/totp", post(start).delete(disable))
        .route("/totp/confirm", post(confirm))
        .route("/verify", post(verify))
}

/// Step-up: a fresh code proves the user is still there; sensitive actions then pass for a few
/// minutes.
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

/// `{secret, otpauth_url}`: type the secret or scan the URL, then confirm with a code.
async fn start(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(auth.user_id)
        .fetch_optional(&app.pool)
        .await?;
    let account = email.ok_or(ApiError::NotFound("user"))?;
    let enrolment = mfa::start(&app, auth.user_id, &account, &auth.metadata(meta)).await?;
    super::settle(&app, "User", &enrolment.committed).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "secret": enrolment.secret,
            "otpauth_url": enrolment.otpauth_url,
            "version": enrolment.committed.version,
            "position": enrolment.committed.position.map(|p| p.global_position),
        })),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CodeBody {
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
async fn confirm(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({
        "recovery_codes": codes,
        "version": committed.version,
        "position": committed.position.map(|p| p.global_position),
    })))
}

/// Turns TOTP off, given a current code or a recovery code; the owner is mailed.
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
