//! Login and refresh: sessions in Redis, refresh tokens with rotation and reuse detection.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::passwords::{attempts_key, dummy_hash, verify_limited};
use super::IdentityError;
use crate::commands::values::Email;
use crate::events::user::Role;
use crate::events::Position;
use crate::infra::sessions::{Rotation, SessionInfo};
use crate::App;

/// A session that was just opened.
pub struct LoggedIn {
    pub user_id: Uuid,
    pub role: Role,
    pub refresh: RefreshToken,
}

/// An account as the users read model has it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Account {
    id: Uuid,
    password_hash: String,
    role: String,
    status: String,
    version: i64,
    mfa_enabled: bool,
    totp_secret: Option<String>,
}

impl Account {
    fn role(&self) -> Result<Role, IdentityError> {
        Role::parse(&self.role).ok_or_else(|| {
            IdentityError::Internal(anyhow::anyhow!("unknown role {} in read model", self.role))
        })
    }
}

const ACCOUNT_COLUMNS: &str = "id, password_hash, role, status, version, mfa_enabled, totp_secret";

/// Checks the password (and, when the account has TOTP, the code) and opens a session acting
/// with the account's role.
///
/// Password checks count against the address's per-account limit (whether or not an account has
/// it), before any hashing. A second factor is asked for only once the password is right, so a
/// locked second factor (`MfaLocked`) shows only to whoever knows the password, as `mfa_required`
/// already does.
///
/// The account is read from the users read model, which may trail the log. Account changes
/// stamp the user in Redis as they commit (see `infra::sessions`): after opening the session,
/// login reads the stamp, and when the read model is older it waits for it and checks the account
/// again, so an old password or a just-disabled account can never win a session.
pub async fn login(
    app: &App,
    email: &Email,
    password: String,
    totp_code: Option<&str>,
    user_agent: Option<String>,
    metadata: &crate::events::Metadata,
) -> Result<LoggedIn, IdentityError> {
    let email_hash = app.email_index.hash(email);
    let account: Option<Account> = sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users WHERE email_hash = $1"
    ))
    .bind(&email_hash)
    .fetch_optional(&app.pool)
    .await?;
    let hash = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(dummy_hash);
    let verified = verify_limited(app, &attempts_key(&email_hash), password, hash).await?;
    let Some(account) = account.filter(|_| verified) else {
        return Err(IdentityError::InvalidCredentials);
    };
    if account.status != "active" {
        return Err(IdentityError::AccountDisabled);
    }
    if account.mfa_enabled {
        super::mfa::refuse_if_locked(app, account.id).await?;
        let (Some(code), Some(secret)) = (totp_code, account.totp_secret.as_deref()) else {
            return Err(IdentityError::MfaRequired);
        };
        let metadata = crate::events::Metadata {
            actor_id: Some(account.id),
            ..metadata.clone()
        };
        super::mfa::verify_second_factor(app, account.id, secret, code, &metadata).await?;
    }
    let role = account.role()?;
    let session_id = Uuid::new_v4();
    let refresh = RefreshToken::new(account.id, session_id);
    let now = Utc::now();
    let user_agent_of_session = user_agent.clone();
    app.sessions
        .create(
            account.id,
            session_id,
            &SessionInfo {
                created_at: now,
                last_seen_at: Some(now),
                user_agent,
                refresh_hash: Some(refresh.hash()),
                role: Some(role),
                mfa: account.mfa_enabled,
                authenticated_at: Some(now),
            },
        )
        .await?;
    match reconcile(app, &account, session_id).await {
        Ok(role) => {
            record_device(app, account.id, user_agent_of_session, metadata).await;
            Ok(LoggedIn {
                user_id: account.id,
                role,
                refresh,
            })
        }
        Err(err) => {
            if let Err(revoke) = app.sessions.revoke(account.id, session_id).await {
                tracing::warn!(user_id = %account.id, error = %revoke, "could not revoke a refused session");
            }
            Err(err)
        }
    }
}

/// Remembers the device of a login; the first time a device is seen (but for the account's
/// first), the outbox mails the owner. A failure here is logged and does not fail the login.
async fn record_device(
    app: &App,
    user_id: Uuid,
    user_agent: Option<String>,
    metadata: &crate::events::Metadata,
) {
    use sha2::Digest;
    let user_agent = user_agent.unwrap_or_default();
    let device: String = sha2::Sha256::digest(user_agent.as_bytes())
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let metadata = crate::events::Metadata {
        actor_id: Some(user_id),
        ..metadata.clone()
    };
    let cipher = match app.keys.cipher(user_id).await {
        Ok(cipher) => cipher,
        Err(err) => {
            tracing::warn!(%user_id, error = %err, "login device not recorded");
            return;
        }
    };
    let command = crate::commands::user::UserCommand::RecordLogin {
        device,
        user_agent: cipher.seal(&user_agent),
    };
    if let Err(err) = app
        .store
        .execute::<crate::commands::user::User>(&user_id.to_string(), command, &(), &metadata)
        .await
    {
        tracing::warn!(%user_id, error = %err, "login device not recorded");
    }
}

/// Brings a new session up to every account change stamped so far; returns its role.
async fn reconcile(app: &App, checked: &Account, session_id: Uuid) -> Result<Role, IdentityError> {
    let mut current = checked.clone();
    // A change that lands while we reconcile stamps again; a few rounds settle any real race.
    for _ in 0..5 {
        let Some(stamp) = app.sessions.stamp(checked.id).await? else {
            return current.role();
        };
        if stamp.version <= current.version {
            return current.role();
        }
        let wait = app
            .config
            .read_your_writes_timeout()
            .max(Duration::from_millis(500));
        if !app
            .projections
            .wait_for("User", Position::new(stamp.position), wait)
            .await
        {
            return Err(IdentityError::Settling);
        }
        let fresh: Account = sqlx::query_as(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
        ))
        .bind(checked.id)
        .fetch_optional(&app.pool)
        .await?
        .ok_or(IdentityError::InvalidCredentials)?;
        if fresh.password_hash != checked.password_hash {
            return Err(IdentityError::InvalidCredentials);
        }
        if fresh.status != "active" {
            return Err(IdentityError::AccountDisabled);
        }
        if !app
            .sessions
            .set_role(checked.id, session_id, fresh.role()?)
            .await?
        {
            // Revoked meanwhile by a change we have not seen yet.
            return Err(IdentityError::Settling);
        }
        current = fresh;
    }
    Err(IdentityError::Settling)
}

/// A session whose refresh token was rotated.
pub struct Refreshed {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub refresh: RefreshToken,
}

/// Rotates the refresh token of a session. Every check comes first and the rotation last, so a
/// failure along the way (a database error, a time-out) leaves the presented token usable.
/// Presenting an old refresh token revokes the whole session (it was copied or stolen).
pub async fn refresh(app: &App, raw: &str) -> Result<Refreshed, IdentityError> {
    let presented = RefreshToken::parse(raw).ok_or(IdentityError::InvalidRefreshToken)?;
    let (user_id, session_id) = (presented.user_id, presented.session_id);
    if app.sessions.get(user_id, session_id).await?.is_none() {
        return Err(IdentityError::InvalidRefreshToken);
    }
    // Disabling revokes sessions at once; this is the second line, should that have failed.
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&app.pool)
        .await?;
    match status.as_deref() {
        None => return Err(IdentityError::InvalidRefreshToken),
        Some("active") => {}
        Some(_) => {
            app.sessions.revoke_all(user_id).await?;
            return Err(IdentityError::AccountDisabled);
        }
    }
    let next = RefreshToken::new(user_id, session_id);
    match app
        .sessions
        .rotate_refresh(user_id, session_id, &presented.hash(), &next.hash())
        .await?
    {
        Rotation::Rotated(session) => Ok(Refreshed {
            user_id,
            session_id,
            role: session.role.ok_or(IdentityError::InvalidRefreshToken)?,
            refresh: next,
        }),
        Rotation::ReusedAndRevoked => {
            crate::api::security_log::refresh_token_reused(user_id, session_id);
            Err(IdentityError::RefreshTokenReused)
        }
        Rotation::Unknown => Err(IdentityError::InvalidRefreshToken),
    }
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

    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.user_id, self.session_id, self.secret)
    }

    fn hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.secret.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}
