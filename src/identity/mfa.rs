//! TOTP two-factor authentication (RFC 6238, 6 digits, 30 s, SHA-1, as authenticator apps do):
//! enrolment, confirmation with recovery codes, removal, and the check at login and step-up.
//!
//! The secret is sealed with the user's key in events and in the read model. A code is accepted
//! once: its time step is claimed in Redis (`totp_used:{user}:{step}`), so a code seen over a
//! shoulder or replayed is refused. Recovery codes carry about 119 random bits (24 symbols of 31),
//! far beyond any search, so a SHA-256 of each is all that is stored; each works once (an event
//! spends it).
//!
//! Enrolling needs the current password (a stolen session alone cannot put the thief's app on
//! the account), and neither enrolling nor confirming counts as a fresh login for step-up. Every
//! place a code is checked (login, step-up, confirmation, removal) goes through the per-account
//! lock of `infra::attempts`: `MFA_MAX_FAILURES` wrong codes in a row lock the second factor for
//! `MFA_LOCKOUT_SECS`, during which every code is refused unchecked (`MfaLocked`); the lock is
//! recorded once as `SecondFactorLocked`, which the outbox mails to the owner.

use std::time::Duration;

use sha2::Digest;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use super::IdentityError;
use crate::api::security_log;
use crate::commands::user::{User, UserCommand, UserError};
use crate::events::crypto::Sealed;
use crate::events::store::{CommandError, Committed};
use crate::events::Metadata;
use crate::infra::attempts::Failure;
use crate::App;

const ISSUER: &str = "A'rosa-je";
const STEP_SECS: u64 = 30;
const RECOVERY_CODES: usize = 10;
/// Symbols of a recovery code: lower-case letters and digits without look-alikes (no 0/o, 1/l/i).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
/// Symbols per recovery code: 24 × log2(31) ≈ 118.9 bits.
const RECOVERY_SYMBOLS: usize = 24;

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

/// Starts (or restarts) enrolment, given the account's current password (`WrongPassword`
/// otherwise, under the per-account limit on password checks): a fresh 160-bit secret, pending
/// until confirmed.
pub async fn start(
    app: &App,
    user_id: Uuid,
    account: &str,
    current_password: String,
    metadata: &Metadata,
) -> Result<Enrolment, IdentityError> {
    use rand::RngCore;
    super::passwords::confirm_current_password(app, user_id, current_password).await?;
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

/// Confirms enrolment with a code from the app; returns the recovery codes (shown once). The
/// session counts as having a second factor from now on, but this is no fresh proof of who is
/// there: the step-up clock is left as it was.
pub async fn confirm(
    app: &App,
    user_id: Uuid,
    session_id: Uuid,
    code: &str,
    metadata: &Metadata,
) -> Result<(Vec<String>, Committed), IdentityError> {
    refuse_if_locked(app, user_id).await?;
    let pending: Option<Option<String>> =
        sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&app.pool)
            .await?;
    let Some(Some(pending)) = pending else {
        return Err(CommandError::Domain(UserError::NoPendingEnrolment).into());
    };
    let checked = match check_code(app, user_id, &pending, code).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(IdentityError::MfaInvalid),
        Err(err) => Err(err),
    };
    settle_attempt(app, user_id, checked, metadata).await?;
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
    app.sessions.mark_enrolled(user_id, session_id).await?;
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
    refuse_if_locked(app, user_id).await?;
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
    refuse_if_locked(app, user_id).await?;
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

/// `MfaLocked` while the user's second factor is locked (too many wrong codes in a row), whatever
/// code comes; fails closed when the lock cannot be read.
pub async fn refuse_if_locked(app: &App, user_id: Uuid) -> Result<(), IdentityError> {
    match app.attempts.mfa_locked(user_id).await {
        Ok(None) => Ok(()),
        Ok(Some(retry_after)) => {
            security_log::mfa_refused_while_locked(user_id);
            Err(IdentityError::MfaLocked { retry_after })
        }
        Err(err) => Err(IdentityError::LimiterUnavailable(err)),
    }
}

/// Counts the outcome of a code check against the user's run of wrong codes: a right code ends
/// the run; a wrong one adds to it and, at `MFA_MAX_FAILURES`, locks the second factor (recorded
/// once, as `SecondFactorLocked`, which mails the owner) and answers `MfaLocked`.
async fn settle_attempt(
    app: &App,
    user_id: Uuid,
    checked: Result<(), IdentityError>,
    metadata: &Metadata,
) -> Result<(), IdentityError> {
    match checked {
        Ok(()) => {
            if let Err(err) = app.attempts.mfa_succeeded(user_id).await {
                tracing::warn!(%user_id, error = %err, "the run of wrong codes was not reset");
            }
            Ok(())
        }
        Err(IdentityError::MfaInvalid) => {
            let lockout = Duration::from_secs(app.config.mfa_lockout_secs);
            let failure = app
                .attempts
                .mfa_failed(user_id, app.config.mfa_max_failures, lockout)
                .await
                .map_err(IdentityError::LimiterUnavailable)?;
            match failure {
                Failure::Counted(_) => Err(IdentityError::MfaInvalid),
                Failure::AlreadyLocked(retry_after) => {
                    Err(IdentityError::MfaLocked { retry_after })
                }
                Failure::LockedNow(retry_after) => {
                    record_lock(app, user_id, retry_after, metadata).await;
                    Err(IdentityError::MfaLocked { retry_after })
                }
            }
        }
        Err(other) => Err(other),
    }
}

/// Records a lock that just began (the owner is mailed). The lock holds in Redis whatever
/// happens here; a failure to record it is logged.
async fn record_lock(app: &App, user_id: Uuid, lock: Duration, metadata: &Metadata) {
    let failures = app.config.mfa_max_failures;
    security_log::mfa_locked(user_id, failures);
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(lock).unwrap_or(chrono::Duration::minutes(15));
    let metadata = Metadata {
        actor_id: Some(user_id),
        ..metadata.clone()
    };
    let recorded = app
        .store
        .execute::<User>(
            &user_id.to_string(),
            UserCommand::RecordSecondFactorLock { failures, until },
            &(),
            &metadata,
        )
        .await;
    if let Err(err) = recorded {
        tracing::warn!(%user_id, error = %err, "second-factor lock not recorded (nor mailed)");
    }
}

/// Checks a second factor against the user's (sealed) secret: a TOTP code, accepted once, or a
/// recovery code, spent. `MfaInvalid` otherwise; `MfaLocked` while (or once) too many wrong codes
/// in a row lock the user's second factor.
pub async fn verify_second_factor(
    app: &App,
    user_id: Uuid,
    sealed_secret: &str,
    code: &str,
    metadata: &Metadata,
) -> Result<(), IdentityError> {
    refuse_if_locked(app, user_id).await?;
    let checked = check_second_factor(app, user_id, sealed_secret, code, metadata).await;
    settle_attempt(app, user_id, checked, metadata).await
}

async fn check_second_factor(
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

/// [`RECOVERY_SYMBOLS`] random symbols of [`RECOVERY_ALPHABET`], in groups of four:
/// `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`. Typed with or without the dashes, in any case.
fn recovery_code() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let mut code = String::with_capacity(RECOVERY_SYMBOLS + RECOVERY_SYMBOLS / 4);
    for i in 0..RECOVERY_SYMBOLS {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())] as char);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_carry_at_least_112_bits() {
        let bits = RECOVERY_SYMBOLS as f64 * (RECOVERY_ALPHABET.len() as f64).log2();
        assert!(bits >= 112.0, "{bits} bits");
        let distinct: std::collections::BTreeSet<u8> = RECOVERY_ALPHABET.iter().copied().collect();
        assert_eq!(distinct.len(), RECOVERY_ALPHABET.len(), "no symbol twice");
        let code = recovery_code();
        let symbols: Vec<u8> = code.bytes().filter(|b| *b != b'-').collect();
        assert_eq!(symbols.len(), RECOVERY_SYMBOLS, "{code}");
        assert!(
            symbols.iter().all(|b| RECOVERY_ALPHABET.contains(b)),
            "{code}"
        );
        assert_ne!(recovery_code(), code);
    }

    #[test]
    fn a_recovery_code_hashes_the_same_however_it_is_typed() {
        let code = "abcd-efgh-jkmn-pqrs-tuvw-xyz2";
        assert_eq!(
            hash_recovery(code),
            hash_recovery("ABCDEFGHJKMNPQRSTUVWXYZ2")
        );
        assert_eq!(
            hash_recovery(code),
            hash_recovery(" abcd efgh jkmn pqrs tuvw xyz2 ")
        );
        assert_ne!(
            hash_recovery(code),
            hash_recovery("abcd-efgh-jkmn-pqrs-tuvw-xyz3")
        );
    }
}
