//! Access tokens (JWT, HS256) and the `AuthUser` extractor that checks them: the session they
//! name must still be open in Redis, and the caller acts with the role stored in that session,
//! never the one in the token (a forged or stale role claim changes nothing).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ApiError;
use crate::commands::Actor;
use crate::events::user::Role;
use crate::events::Metadata;
use crate::App;

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: Uuid,
    pub role: Role,
    /// Session id (a field of `session:{user_id}` in Redis).
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl JwtKeys {
    /// `master`: the token master key (`JWT_SECRET`); access tokens use a key derived from it.
    pub fn new(master: &str, ttl_secs: u64) -> Self {
        let key = crate::infra::tokens::derive_key(master, "arosaje/access-tokens/v1");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(key.as_ref()),
            decoding: DecodingKey::from_secret(key.as_ref()),
            validation,
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs a token for a session.
    pub fn issue(&self, user_id: Uuid, role: Role, session_id: Uuid) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&Claims {
            sub: user_id,
            role,
            sid: session_id,
            iat: now,
            exp: now + self.ttl_secs as i64,
        })
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthorized("token_expired", "the access token has expired")
                }
                _ => ApiError::unauthorized("invalid_token", "the access token is invalid"),
            })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub role: Role,
    pub session_id: Uuid,
    /// The session passed a second factor.
    pub mfa: bool,
    /// When the user last proved who they are in this session.
    pub authenticated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How recent a login (or TOTP code) must be for sensitive actions (step-up).
pub const STEP_UP_WINDOW: chrono::Duration = chrono::Duration::minutes(5);

/// Paths an ADMIN or AUDITOR without a second factor may still use under `ADMIN_MFA=required`.
fn reachable_without_mfa(path: &str) -> bool {
    path.starts_with("/api/me/mfa") || path == "/api/auth/logout" || path == "/api/me"
}

impl AuthUser {
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.user_id,
            role: self.role,
        }
    }

    /// Sensitive actions (a role change, an erasure) need the user to have proved who they are
    /// in the last few minutes: a login, or a code at `POST /api/me/mfa/verify`.
    pub fn require_recent_authentication(&self) -> Result<(), ApiError> {
        let recent = self
            .authenticated_at
            .is_some_and(|at| chrono::Utc::now() - at <= STEP_UP_WINDOW);
        if recent {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                code: "step_up_required",
                message: "confirm it is you first: log in again, or send a code from your \
                          authenticator app to POST /api/me/mfa/verify"
                    .into(),
            })
        }
    }

    /// Event metadata naming this caller.
    pub fn metadata(&self, request: Metadata) -> Metadata {
        Metadata {
            actor_id: Some(self.user_id),
            actor_role: self.role.as_str().to_string(),
            ..request
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<App> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "send `Authorization: Bearer <token>`")
        })?;
        let claims = app.jwt.verify(token)?;
        // The rate limiter read this session in its round trip (see `limits::SessionRead`).
        let read = parts
            .extensions
            .get::<super::limits::SessionRead>()
            .filter(|read| read.user_id == claims.sub && read.session_id == claims.sid)
            .cloned();
        let session = match read {
            Some(read) => {
                app.sessions
                    .judge(claims.sub, claims.sid, read.value)
                    .await?
            }
            None => app.sessions.get(claims.sub, claims.sid).await?,
        };
        let Some((session, role)) = session.and_then(|s| s.role.map(|role| (s, role))) else {
            return Err(ApiError::unauthorized(
                "session_revoked",
                "this session has ended; log in again",
            ));
        };
        if matches!(role, Role::Admin | Role::Auditor)
            && !session.mfa
            && app.config.admin_mfa == crate::config::MfaPolicy::Required
        {
            let path = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map(|uri| uri.path().to_string())
                .unwrap_or_else(|| parts.uri.path().to_string());
            if !reachable_without_mfa(&path) {
                super::security_log::access_denied(claims.sub, role.as_str(), "act without MFA");
                return Err(ApiError::Forbidden {
                    code: "mfa_enrollment_required",
                    message: "this role needs two-factor authentication: enrol at \
                              POST /api/me/mfa/totp and confirm it"
                        .into(),
                });
            }
        }
        // The request's span (and so each of its log lines) names the caller from here on.
        tracing::Span::current().record("user_id", tracing::field::display(claims.sub));
        Ok(AuthUser {
            user_id: claims.sub,
            role,
            session_id: claims.sid,
            mfa: session.mfa,
            authenticated_at: session.authenticated_at,
        })
    }
}
