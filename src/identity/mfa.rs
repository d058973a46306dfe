//! TOTP two-factor authentication (RFC 6238, 6 digits, 30 s, SHA-1, as authenticator apps do):
//! enrolment, confirmation with recovery codes, removal, and the check at login and step-up.
//!
//! The secret is sealed with the user's key in events and in the read model. A code is accepted
//! once: its time step is claimed in Redis (`totp_used:{user}:{step}`), so a code seen over a
//! shoulder or replayed is refused. Recovery codes are stored as SHA-256 hashes; each works once
//! (an event spends it).

use std::time::Duration;

use sha2::Digest;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use super::IdentityError;
use crate::commands::user::{User, UserCommand, UserError};
use crate::events::crypto::Sealed;
use crate::events::store::{CommandError, Committed};
use crate::events::Metadata;
use crate::App;

const ISSUER: &str = "A'rosa-je";
const STEP_SECS: u64 = 30;
const RECOVERY_CODES: usize = 10;

/// What the user types into their authenticator app (or scans).
pub struct Enrolment {
    /// Base32, for typing in.
    pub secret: String,
    /// `otpauth://totp/...`, for a QR code.
    pub otpauth_url: String,
    pub committed: Committed,
}

fn totp(secret: Vec<u8>, account: &str) -> Result<TOTP, IdentityError> {
    // An account name with ':' would be refused by the URL format; it is only a label.
    let label = account.replace(':', " ");
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP_SECS,
        secret,
        Some(ISSUER.into()),
        label,
    )
    .map_err(|e| IdentityError::Internal(anyhow::anyhow!("TOTP parameters: {e}")))
}

fn decode_secret(base32: &str) -> Result<Vec<u8>, IdentityError> {
    totp_rs::Secret::Encoded(base32.to_string())
        .to_bytes()
        .map_err(|e| IdentityError::Internal(anyhow::anyhow!("stored TOTP secret: {e:?}")))
}

/// Starts (or restarts) enrolment: a fresh 160-bit secret, pending until confirmed.
pub async fn start(
    app: &App,
    user_id: Uuid,
    account: &str,
    metadata: &Metadata,
) -> Result<Enrolment, IdentityError> {
    use rand::RngCore;
    let mut bytes = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let totp = totp(bytes, account)?;
    let secret = totp.get_secret_base32();
    let cipher = app
        .keys
        .cipher(user_id)
        .await
        .map_err(|e| IdentityError::Internal(e.into()))?;
    let committed = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::StartTotpEnrolment {
                secret: cipher.seal(&secret),
            },
            &(),
            metadata,
        )
        .await?;
    Ok(Enrolment {
        otpauth_url: totp.get_url(),
        secret,
        committed,
    })
}

/// Confirms enrolment with a code from the app; returns the recovery codes (shown once).
pub async fn confirm(
    app: &App,
    user_id: Uuid,
    session_id: Uuid,
    code: &str,
    metadata: &Metadata,
) -> Result<(Vec<String>, Committed), IdentityError> {
    let pending: Option<Option<String>> =
        sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&app.pool)
            .await?;
    let Some(Some(pending)) = pending else {
        return Err(CommandError::Domain(UserError::NoPendingEnrolment).into());
    };
    if !check_code(app, user_id, &pending, code).await? {
        return Err(IdentityError::MfaInvalid);
    }
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let committed = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::ConfirmTotp {
                recovery_codes: codes.iter().map(|c| hash_recovery(c)).collect(),
            },
            &(),
            metadata,
        )
        .await?;
    app.sessions.mark_mfa(user_id, session_id).await?;
    Ok((codes, committed))
}

/// The user's confirmed (sealed) TOTP secret; `MfaNotEnabled` without one.
async fn confirmed_secret(app: &App, user_id: Uuid) -> Result<String, IdentityError> {
    let secret: Option<Option<String>> =
        sqlx::query_scalar("SELECT totp_secret FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&app.pool)
            .await?;
    match secret {
        Some(Some(secret)) => Ok(secret),
        _ => Err(CommandError::Domain(UserError::MfaNotEnabled).into()),
    }
}

/// Step-up: a fresh code marks the session as just authenticated.
pub async fn step_up(
    app: &App,
    user_id: Uuid,
    session_id: Uuid,
    code: &str,
    metadata: &Metadata,
) -> Result<(), IdentityError> {
    let secret = confirmed_secret(app, user_id).await?;
    verify_second_factor(app, user_id, &secret, code, metadata).await?;
    app.sessions.mark_mfa(user_id, session_id).await?;
    Ok(())
}

/// Removes TOTP, given a current code or a recovery code.
pub async fn disable(
    app: &App,
    user_id: Uuid,
    code: &str,
    metadata: &Metadata,
) -> Result<Committed, IdentityError> {
    let secret = confirmed_secret(app, user_id).await?;
    verify_second_factor(app, user_id, &secret, code, metadata).await?;
    Ok(app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::DisableTotp,
            &(),
            metadata,
        )
        .await?)
}

/// Checks a second factor against the user's (sealed) secret: a TOTP code, accepted once, or a
/// recovery code, spent. `MfaInvalid` otherwise.
pub async fn verify_second_factor(
    app: &App,
    user_id: Uuid,
    sealed_secret: &str,
    code: &str,
    metadata: &Metadata,
) -> Result<(), IdentityError> {
    let code = code.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        return if check_code(app, user_id, sealed_secret, code).await? {
            Ok(())
        } else {
            Err(IdentityError::MfaInvalid)
        };
    }
    if code.is_empty() || code.len() > 64 {
        return Err(IdentityError::MfaInvalid);
    }
    let spent = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::UseRecoveryCode {
                code_hash: hash_recovery(code),
            },
            &(),
            metadata,
        )
        .await;
    match spent {
        Ok(_) => Ok(()),
        Err(CommandError::Domain(UserError::InvalidRecoveryCode)) => Err(IdentityError::MfaInvalid),
        Err(other) => Err(other.into()),
    }
}

/// Whether `code` is the TOTP of the current time step or a neighbour (clock drift), and that
/// step has not been used by this user before.
async fn check_code(
    app: &App,
    user_id: Uuid,
    sealed_secret: &str,
    code: &str,
) -> Result<bool, IdentityError> {
    let cipher = app
        .keys
        .cipher(user_id)
        .await
        .map_err(|e| IdentityError::Internal(e.into()))?;
    let secret = cipher
        .open(&Sealed::from_stored(sealed_secret.to_string()))
        .map_err(|e| IdentityError::Internal(e.into()))?;
    let totp = totp(decode_secret(&secret)?, "")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let step = now / STEP_SECS;
    for candidate in [step, step.saturating_sub(1), step + 1] {
        let expected = totp.generate(candidate * STEP_SECS);
        if subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), code.as_bytes()).into() {
            let fresh = app
                .sessions
                .claim_once(
                    format!("totp_used:{user_id}:{candidate}"),
                    Duration::from_secs(STEP_SECS * 4),
                )
                .await?;
            return Ok(fresh);
        }
    }
    Ok(false)
}

/// Ten random characters from an alphabet without look-alikes, as `xxxxx-xxxxx`.
fn recovery_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    let mut code = String::with_capacity(11);
    for i in 0..10 {
        if i == 5 {
            code.push('-');
        }
        code.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    code
}

fn hash_recovery(code: &str) -> String {
    let normalised: String = code
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    sha2::Sha256::digest(normalised.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
