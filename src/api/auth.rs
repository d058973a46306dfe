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
use crate::events::store::Committed;
use crate::events::user::Role;
use crate::infra::sessions::{Rotation, SessionInfo};
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

/// A validated registration.
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub display_name: DisplayName,
    pub botanist: bool,
}

fn email_taken() -> ApiError {
    ApiError::conflict(
        "email_taken",
        "an account with this e-mail address already exists",
    )
}

/// Registers a user: the claim on the e-mail hash, the user's data key and the first event commit
/// together. Shared by the HTTP endpoint and `arosaje admin create`.
pub async fn register_user(
    app: &App,
    registration: Registration,
    metadata: crate::events::Metadata,
) -> Result<(Uuid, Committed), ApiError> {
    let password_hash = hash_password(registration.password).await?;
    let user_id = Uuid::now_v7();
    let email_hash = app.email_index.hash(&registration.email);
    let metadata = crate::events::Metadata {
        actor_id: metadata.actor_id.or(Some(user_id)),
        ..metadata
    };

    let mut tx = app.pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO email_claims (email_hash, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&email_hash)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Err(email_taken());
    }
    let cipher = app
        .keys
        .create_in(&mut tx, user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let command = UserCommand::RegisterUser {
        email: cipher.seal(registration.email.as_str()),
        display_name: cipher.seal(registration.display_name.as_str()),
        password_hash,
        botanist_requested: registration.botanist,
    };
    let committed = app
        .store
        .execute_new_in::<User>(&mut tx, &user_id.to_string(), command, &(), &metadata)
        .await
        .map_err(|err| match err {
            // A concurrent registration of the same address lost the race on the claim.
            CommandError::Conflict => email_taken(),
            other => other.into(),
        })?;
    tx.commit().await.map_err(|err| {
        if crate::events::store::is_unique_violation(&err) {
            email_taken()
        } else {
            err.into()
        }
    })?;
    app.store.appended("User");
    Ok((user_id, committed))
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
    let (user_id, committed) = register_user(&app, registration, metadata).await?;
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
    let account: Option<(Uuid, String, String, String)> = match Email::parse(email) {
        Ok(email) => {
            let email_hash = app.email_index.hash(&email);
            super::limits::limit_email(&app, "login", &email_hash).await?;
            sqlx::query_as(
                "SELECT id, password_hash, role, status FROM users WHERE email_hash = $1",
            )
            .bind(&email_hash)
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
    let Some((user_id, _, role, status)) = account.filter(|_| verified) else {
        return Err(invalid_credentials());
    };
    if status != "active" {
        return Err(account_disabled());
    }
    let role =
        Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role} in read model"))?;

    let session_id = Uuid::new_v4();
    let refresh = RefreshToken::new(user_id, session_id);
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(200).collect());
    let now = chrono::Utc::now();
    app.sessions
        .create(
            user_id,
            session_id,
            &SessionInfo {
                created_at: now,
                last_seen_at: Some(now),
                user_agent,
                refresh_hash: Some(refresh.hash()),
            },
        )
        .await?;
    // An admin may have disabled the account while we verified the password.
    let user = load_user(&app.pool, user_id).await?;
    if user.as_ref().is_some_and(|u| u.status != "active") {
        app.sessions.revoke(user_id, session_id).await?;
        return Err(account_disabled());
    }
    Ok(Json(token_pair(&app, user_id, role, &refresh, user)?).into_response())
}

fn account_disabled() -> ApiError {
    ApiError::Forbidden {
        code: "account_disabled",
        message: "this account is disabled".into(),
    }
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

/// A refresh token: `{user_id}.{session_id}.{secret}`. Only a hash of the secret is stored.
pub struct RefreshToken {
    pub user_id: Uuid,
    pub session_id: Uuid,
    secret: String,
}

impl RefreshToken {
    fn new(user_id: Uuid, session_id: Uuid) -> Self {
        use base64::Engine;
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self {
            user_id,
            session_id,
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    fn parse(token: &str) -> Option<Self> {
        let mut parts = token.trim().splitn(3, '.');
        let user_id = parts.next()?.parse().ok()?;
        let session_id = parts.next()?.parse().ok()?;
        let secret = parts.next().filter(|s| (20..=100).contains(&s.len()))?;
        Some(Self {
            user_id,
            session_id,
            secret: secret.to_string(),
        })
    }

    fn encode(&self) -> String {
        format!("{}.{}.{}", self.user_id, self.session_id, self.secret)
    }

    fn hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.secret.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct RefreshBody {
    refresh_token: Option<String>,
}

/// Rotates the refresh token of a session and issues a new access token. Presenting an old
/// refresh token revokes the whole session (it was copied or stolen).
async fn refresh(
    State(app): State<App>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let Some(raw) = body.refresh_token else {
        return Err(ApiError::invalid("refresh_token", "is required"));
    };
    let invalid =
        || ApiError::unauthorized("invalid_refresh_token", "the refresh token is not valid");
    let presented = RefreshToken::parse(&raw).ok_or_else(invalid)?;
    let next = RefreshToken::new(presented.user_id, presented.session_id);
    match app
        .sessions
        .rotate_refresh(
            presented.user_id,
            presented.session_id,
            &presented.hash(),
            &next.hash(),
        )
        .await?
    {
        Rotation::Rotated => {}
        Rotation::ReusedAndRevoked => {
            tracing::warn!(user_id = %presented.user_id, session_id = %presented.session_id,
                "refresh token reused: session revoked");
            return Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            ));
        }
        Rotation::Unknown => return Err(invalid()),
    }
    // The role may have changed since login: read it afresh.
    let account: Option<(String, String)> =
        sqlx::query_as("SELECT role, status FROM users WHERE id = $1")
            .bind(presented.user_id)
            .fetch_optional(&app.pool)
            .await?;
    let Some((role, status)) = account else {
        return Err(invalid());
    };
    if status != "active" {
        app.sessions.revoke_all(presented.user_id).await?;
        return Err(account_disabled());
    }
    let role =
        Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role} in read model"))?;
    Ok(Json(token_pair(&app, presented.user_id, role, &next, None)?).into_response())
}

async fn logout(State(app): State<App>, auth: AuthUser) -> Result<StatusCode, ApiError> {
    app.sessions.revoke(auth.user_id, auth.session_id).await?;
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
        .and_then(|v| errors.check("new_password", Password::parse(v)));
    let (Some(token), Some(password)) = (token, password) else {
        return Err(ApiError::Validation(errors));
    };
    let (user_id, generation) = app
        .tokens
        .verify(Purpose::ResetPassword, &token)
        .ok_or_else(invalid_action_token)?;
    let password_hash = hash_password(password).await?;
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
    // Once the new hash is readable, every session goes (including a thief's).
    super::settle(&app, "User", &committed).await;
    app.sessions.revoke_all(user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
