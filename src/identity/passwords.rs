//! Password hashing: argon2id with OWASP's parameters, off the async runtime.

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

use uuid::Uuid;

use super::IdentityError;
use crate::commands::user::{User, UserCommand};
use crate::commands::values::Password;
use crate::events::store::Committed;
use crate::events::user::PasswordHash as HashInEvents;
use crate::events::Metadata;
use crate::infra::attempts::Reservation;
use crate::infra::sessions::SessionChange;
use crate::App;

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

/// Whether `password` matches the PHC string `hash`.
pub async fn verify_password(password: String, hash: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        Ok(argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// A hash to verify against when the e-mail is unknown, so both failures take the same time.
pub fn dummy_hash() -> String {
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

/// What password checks of one account count under (see `infra::attempts`): 16 bytes of its
/// e-mail hash, in hex. Login counts under the address given, whether or not an account has it,
/// so the limit says nothing about which addresses have accounts.
pub fn attempts_key(email_hash: &[u8]) -> String {
    email_hash
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks `password` against the PHC string `hash` under the per-account limit
/// (`PASSWORD_ATTEMPTS_PER_ACCOUNT` in `PASSWORD_ATTEMPTS_WINDOW_SECS`): the attempt is reserved
/// first (refused with `PasswordAttemptsExceeded` past the limit, before any hashing), and given
/// back when the password was right, so only wrong guesses stay counted. Fails closed when the
/// limit cannot be counted.
pub async fn verify_limited(
    app: &App,
    account: &str,
    password: String,
    hash: String,
) -> Result<bool, IdentityError> {
    let window = Duration::from_secs(app.config.password_attempts_window_secs);
    let reservation = app
        .attempts
        .reserve_password(account, app.config.password_attempts_per_account, window)
        .await
        .map_err(IdentityError::LimiterUnavailable)?;
    let member = match reservation {
        Reservation::Granted(member) => member,
        Reservation::Refused(retry_after) => {
            crate::api::security_log::rate_limited("password", "account");
            metrics::counter!("rate_limit_rejections_total", "endpoint" => "per_account")
                .increment(1);
            return Err(IdentityError::PasswordAttemptsExceeded { retry_after });
        }
    };
    let verified = verify_password(password, hash).await?;
    if verified {
        if let Err(err) = app.attempts.release_password(account, member).await {
            tracing::warn!(error = %err, "a right password stays counted as an attempt");
        }
    }
    Ok(verified)
}

/// Checks the current password of a logged-in user (to confirm a sensitive change), under the
/// per-account limit; `WrongPassword` when it is not theirs.
pub async fn confirm_current_password(
    app: &App,
    user_id: Uuid,
    password: String,
) -> Result<(), IdentityError> {
    let account: Option<(Vec<u8>, String)> =
        sqlx::query_as("SELECT email_hash, password_hash FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&app.pool)
            .await?;
    let (email_hash, hash) = account.ok_or(IdentityError::WrongPassword)?;
    if verify_limited(app, &attempts_key(&email_hash), password, hash).await? {
        Ok(())
    } else {
        Err(IdentityError::WrongPassword)
    }
}

/// A logged-in user changes their password: the current one must match. Every other session
/// ends at once; the one making the change goes on. The outbox mails the owner about it.
pub async fn change_password(
    app: &App,
    user_id: Uuid,
    session_id: Uuid,
    current: String,
    new: Password,
    metadata: &Metadata,
) -> Result<Committed, IdentityError> {
    confirm_current_password(app, user_id, current).await?;
    let password_hash = seal_hash(app, user_id, hash_password(new).await?).await?;
    let committed = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::ChangePassword { password_hash },
            &(),
            metadata,
        )
        .await?;
    super::apply_account_change(
        app,
        user_id,
        SessionChange::RevokeOthers(session_id),
        &committed,
    )
    .await?;
    Ok(committed)
}

/// A new hash as events carry it: sealed with the user's key.
pub async fn seal_hash(
    app: &App,
    user_id: Uuid,
    hash: String,
) -> Result<HashInEvents, IdentityError> {
    let cipher = app
        .keys
        .cipher(user_id)
        .await
        .map_err(|e| IdentityError::Internal(e.into()))?;
    Ok(HashInEvents::Sealed(cipher.seal(&hash)))
}
