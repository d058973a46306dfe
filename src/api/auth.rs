//! `POST /api/auth/register`, `/login`, `/logout`.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
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
use super::token::AuthUser;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::{DisplayName, Email, FieldErrors, Password};
use crate::events::store::CommandError;
use crate::events::user::Role;
use crate::infra::sessions::SessionInfo;
use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/logout", post(logout))
}

/// argon2id with the crate's defaults, which are OWASP's recommendation (m = 19 MiB, t = 2, p = 1).
fn argon2() -> Argon2<'static> {
    Argon2::default()
}

/// Hashes off the async runtime: argon2 is deliberately slow.
pub async fn hash_password(password: Password) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

async fn verify_password(password: String, hash: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        Ok(argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// A hash to verify against when the e-mail is unknown, so both failures take the same time.
fn dummy_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(b"no such account, same cost", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
    .clone()
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
    let password = required(&mut errors, "password", &body.password)
        .and_then(|v| errors.check("password", Password::parse(v)));
    let display_name = required(&mut errors, "display_name", &body.display_name)
        .and_then(|v| errors.check("display_name", DisplayName::parse(v)));
    let (Some(email), Some(password), Some(display_name)) = (email, password, display_name) else {
        return Err(ApiError::Validation(errors));
    };

    let password_hash = hash_password(password).await?;
    let user_id = Uuid::now_v7();
    let email_hash = app.email_index.hash(&email);
    let metadata = crate::events::Metadata {
        actor_id: Some(user_id),
        actor_role: Role::User.as_str().into(),
        ..meta
    };

    // The claim on the e-mail hash, the user's data key and the first event commit together.
    let mut tx = app.pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO email_claims (email_hash, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&email_hash)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "email_taken",
            "an account with this e-mail address already exists",
        ));
    }
    let cipher = app
        .keys
        .create_in(&mut tx, user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let command = UserCommand::RegisterUser {
        email: cipher.seal(email.as_str()),
        display_name: cipher.seal(display_name.as_str()),
        password_hash,
        botanist_requested: body.botanist,
    };
    let committed = app
        .store
        .execute_new_in::<User>(&mut tx, &user_id.to_string(), command, &(), &metadata)
        .await
        .map_err(|err| match err {
            // A concurrent registration of the same address lost the race on the claim.
            CommandError::Conflict => ApiError::conflict(
                "email_taken",
                "an account with this e-mail address already exists",
            ),
            other => other.into(),
        })?;
    tx.commit().await.map_err(|err| {
        if crate::events::store::is_unique_violation(&err) {
            ApiError::conflict(
                "email_taken",
                "an account with this e-mail address already exists",
            )
        } else {
            err.into()
        }
    })?;
    app.store.appended("User");

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
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "invalid e-mail or password")
}

async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let email = required(&mut errors, "email", &body.email);
    let password = required(&mut errors, "password", &body.password);
    let (Some(email), Some(password)) = (email, password) else {
        return Err(ApiError::Validation(errors));
    };
    let account: Option<(Uuid, String, String)> = match Email::parse(email) {
        Ok(email) => {
            sqlx::query_as("SELECT id, password_hash, role FROM users WHERE email_hash = $1")
                .bind(app.email_index.hash(&email))
                .fetch_optional(&app.pool)
                .await?
        }
        Err(_) => None,
    };
    let hash = account
        .as_ref()
        .map(|a| a.1.clone())
        .unwrap_or_else(dummy_hash);
    let verified = verify_password(password.to_string(), hash).await?;
    let Some((user_id, _, role)) = account.filter(|_| verified) else {
        return Err(invalid_credentials());
    };
    let role =
        Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role} in read model"))?;

    let session_id = Uuid::new_v4();
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(200).collect());
    app.sessions
        .create(
            user_id,
            session_id,
            &SessionInfo {
                created_at: chrono::Utc::now(),
                user_agent,
            },
        )
        .await?;
    let token = app.jwt.issue(user_id, role, session_id)?;
    let user = load_user(&app.pool, user_id).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": app.jwt.ttl_secs(),
        "user": user,
    }))
    .into_response())
}

async fn logout(State(app): State<App>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    app.sessions.revoke(auth.user_id, auth.session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
