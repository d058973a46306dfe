//! Identity: registration, login, refresh tokens, and what account changes do to sessions.
//!
//! The HTTP handlers (`api::auth`, `api::admin`) and the command line (`arosaje admin create`) both
//! call in here; nothing here knows about HTTP.

pub mod erasure;
pub mod login;
pub mod mfa;
pub mod passwords;
pub mod registration;

use uuid::Uuid;

use crate::commands::user::UserError;
use crate::events::store::{CommandError, Committed};
use crate::infra::sessions::SessionChange;
use crate::App;

pub use login::{login, refresh, LoggedIn, RefreshToken};
pub use registration::{create_admin, register_user, Registration};

/// Why an identity operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("an account with this e-mail address already exists")]
    EmailTaken,
    #[error("invalid e-mail or password")]
    InvalidCredentials,
    /// The current password given to confirm a change is not the account's.
    #[error("this is not your current password")]
    WrongPassword,
    #[error("this account is disabled")]
    AccountDisabled,
    /// The account has TOTP and no code came.
    #[error("this account needs a code from its authenticator app (`totp_code`)")]
    MfaRequired,
    /// A TOTP or recovery code that is wrong, expired or already used.
    #[error("this code is not valid")]
    MfaInvalid,
    /// Too many wrong codes in a row: every code is refused for a while, the right one too.
    #[error(
        "too many wrong codes in a row: two-factor codes are refused for {} more seconds",
        retry_after.as_secs_f64().ceil()
    )]
    MfaLocked { retry_after: std::time::Duration },
    /// Too many wrong passwords for this account lately, from wherever they came.
    #[error(
        "too many password attempts for this account; retry in {} seconds",
        retry_after.as_secs_f64().ceil()
    )]
    PasswordAttemptsExceeded { retry_after: std::time::Duration },
    /// The per-account limits cannot be counted (Redis): the attempt is refused, not let through.
    #[error("sign-in is paused while the rate limiter is unavailable; try again shortly")]
    LimiterUnavailable(redis::RedisError),
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    #[error("this refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// The account changed moments ago and the read model has not caught up yet.
    #[error("the account is being updated; try again in a moment")]
    Settling,
    #[error("the session store is unavailable")]
    SessionsUnavailable(#[from] redis::RedisError),
    #[error(transparent)]
    User(#[from] CommandError<UserError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for IdentityError {
    fn from(err: sqlx::Error) -> Self {
        IdentityError::User(CommandError::from(err))
    }
}

/// Applies a committed account change to the user's sessions at once (no waiting for read
/// models), and stamps it so that logins racing with it look again. A command that changed
/// nothing changes no session.
pub async fn apply_account_change(
    app: &App,
    user_id: Uuid,
    change: SessionChange,
    committed: &Committed,
) -> Result<(), IdentityError> {
    let Some(position) = committed.position else {
        return Ok(());
    };
    app.sessions
        .apply_change(user_id, change, committed.version, position.global_position)
        .await?;
    Ok(())
}
