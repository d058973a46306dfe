//! Security events (ASVS 7.1-7.2): one log line each, under the `security` target, inside the
//! request's span (which carries the request id and the client address). They name users by id
//! and e-mail addresses by a prefix of their keyed hash, and never carry a secret, a token or a
//! plaintext address. With `LOG_FORMAT=json` each is one JSON object.

use uuid::Uuid;

/// How an e-mail address appears in logs: 16 hex digits of its keyed hash (the address itself
/// is personal data, and the hash prefix is enough to correlate attempts).
pub fn email_ref(email_hash: &[u8]) -> String {
    email_hash
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn login_succeeded(user_id: Uuid, session_id: Uuid) {
    tracing::info!(target: "security", event = "login_succeeded", %user_id, %session_id);
}

/// A refused login; `reason` is our code (`invalid_credentials`, `account_disabled`, ...).
pub fn login_failed(email_hash: &[u8], reason: &str) {
    metrics::counter!("failed_logins_total", "reason" => reason.to_string()).increment(1);
    tracing::warn!(target: "security", event = "login_failed", email = %email_ref(email_hash), reason);
}

pub fn refresh_token_reused(user_id: Uuid, session_id: Uuid) {
    tracing::warn!(target: "security", event = "refresh_token_reused", %user_id, %session_id,
        "a rotated refresh token came back: the session is revoked");
}

pub fn access_denied(user_id: Uuid, role: &str, capability: &str) {
    tracing::warn!(target: "security", event = "access_denied", %user_id, role, capability);
}

pub fn rate_limited(endpoint: &str, scope: &str) {
    tracing::warn!(target: "security", event = "rate_limited", endpoint, scope);
}

pub fn admin_action(admin_id: Uuid, action: &str, target_user: Uuid) {
    tracing::info!(target: "security", event = "admin_action", %admin_id, action, %target_user);
}

/// Sessions ended: `which` is `one`, `others` or `all`; `why` says what asked for it.
pub fn sessions_revoked(user_id: Uuid, which: &str, why: &str) {
    tracing::info!(target: "security", event = "sessions_revoked", %user_id, which, why);
}

pub fn mfa_failed(user_id: Uuid, during: &str) {
    metrics::counter!("mfa_failures_total").increment(1);
    tracing::warn!(target: "security", event = "mfa_failed", %user_id, during);
}

/// Too many wrong codes in a row: the user's second factor is locked.
pub fn mfa_locked(user_id: Uuid, failures: u32) {
    metrics::counter!("mfa_lockouts_total").increment(1);
    tracing::warn!(target: "security", event = "mfa_locked", %user_id, failures);
}

/// A code came while the user's second factor is locked; it was not checked.
pub fn mfa_refused_while_locked(user_id: Uuid) {
    tracing::warn!(target: "security", event = "mfa_refused_while_locked", %user_id);
}

pub fn mfa_changed(user_id: Uuid, now: &str) {
    tracing::info!(target: "security", event = "mfa_changed", %user_id, now);
}

pub fn password_changed(user_id: Uuid, how: &str) {
    tracing::info!(target: "security", event = "password_changed", %user_id, how);
}
