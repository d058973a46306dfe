//! The mail outbox: a side-effect projector that mails what events ask for (a verification link
//! after registration, a reset link after a reset request).
//!
//! It holds no database transaction while it talks to SMTP (see [`Mode::SideEffects`]): one
//! instance at a time runs it, under an advisory lock. A mail is recorded in `sent_mails` (keyed by
//! the event's position) as soon as the SMTP server has accepted it, or refused it for good, so a
//! retry or a replay does not send it again. A crash between the SMTP answer and that record
//! re-sends it once, with the same Message-ID, which lets mail systems drop the duplicate. A server
//! that is down or answers 4xx is retried without limit ([`Transient`]); a 5xx refusal or an
//! address the SMTP library refuses is recorded as `failed` and not retried. Events older than
//! `max_age` are not mailed (a projector started on an old log does not mail every account).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Mode, Projection, Transient};
use crate::commands::user::User;
use crate::events::crypto::{CryptoError, KeyStore};
use crate::events::user::UserEvent;
use crate::events::StoredEvent;
use crate::infra::mail::{Mail, Mailer, SendError};
use crate::infra::tokens::{ActionTokens, Purpose};

pub struct MailerProjection {
    pub keys: Arc<KeyStore>,
    pub mailer: Arc<dyn Mailer>,
    pub tokens: Arc<ActionTokens>,
    /// Where the links in mails point (the web or mobile front end).
    pub public_url: String,
    pub max_age: chrono::Duration,
}

impl MailerProjection {
    /// The token travels in the URL fragment, which browsers never send to a server, so it
    /// stays out of access logs and `Referer` headers.
    fn link(&self, path: &str, token: &str) -> String {
        format!(
            "{}/{path}#token={token}",
            self.public_url.trim_end_matches('/')
        )
    }

    async fn compose(
        &self,
        user_id: Uuid,
        event: &UserEvent,
    ) -> anyhow::Result<Option<(&'static str, String, String)>> {
        Ok(match event {
            UserEvent::UserRegistered { .. } => {
                let token = self.tokens.issue(Purpose::VerifyEmail, user_id, 0)?;
                Some((
                    "verify_email",
                    "Confirm your e-mail address".to_string(),
                    format!(
                        "Welcome to A'rosa-je!\r\n\r\nConfirm your address by opening this link \
                         (valid 7 days):\r\n{}\r\n\r\nOr send this token to \
                         POST /api/auth/verify-email:\r\n{token}\r\n",
                        self.link("verify-email", &token)
                    ),
                ))
            }
            UserEvent::PasswordResetRequested { generation } => {
                let token = self
                    .tokens
                    .issue(Purpose::ResetPassword, user_id, *generation)?;
                Some((
                    "reset_password",
                    "Reset your password".to_string(),
                    format!(
                        "Someone asked to reset your A'rosa-je password. If it was you, open \
                         this link (valid 1 hour, once):\r\n{}\r\n\r\nOr send this token to \
                         POST /api/auth/password-reset/confirm:\r\n{token}\r\n\r\nIf it was not \
                         you, ignore this mail.\r\n",
                        self.link("reset-password", &token)
                    ),
                ))
            }
            UserEvent::PasswordChanged { .. } => Some((
                "password_changed",
                "Your A'rosa-je password was changed".to_string(),
                "The password of your A'rosa-je account was just changed, and your other \
                 sessions were ended.\r\n\r\nIf it was not you, reset your password at once \
                 from the login page, and write to us.\r\n"
                    .to_string(),
            )),
            UserEvent::LoggedInFromNewDevice {
                user_agent,
                first: false,
                ..
            } => {
                let device = match self.keys.cipher(user_id).await {
                    Ok(cipher) => cipher.open(user_agent).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let device: String = device
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Some((
                    "new_device",
                    "New login to your A'rosa-je account".to_string(),
                    format!(
                        "Your A'rosa-je account was just logged into from a device it had not \
                         seen before:\r\n{}\r\n\r\nIf it was you, there is nothing to do. If \
                         not, change your password and end your other sessions at once.\r\n",
                        if device.is_empty() {
                            "(unknown device)"
                        } else {
                            &device
                        }
                    ),
                ))
            }
            UserEvent::TotpDisabled => Some((
                "mfa_disabled",
                "Two-factor authentication was turned off".to_string(),
                "Two-factor authentication was just turned off on your A'rosa-je account: \
                 logging in now takes only your password.\r\n\r\nIf it was not you, reset your \
                 password at once from the login page, and write to us.\r\n"
                    .to_string(),
            )),
            _ => None,
        })
    }
}

#[async_trait]
impl Projection for MailerProjection {
    fn name(&self) -> &'static str {
        "mailer"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["User"]
    }

    fn mode(&self) -> Mode {
        Mode::SideEffects
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let oldest = chrono::Utc::now() - self.max_age;
        for event in events {
            if event.timestamp < oldest {
                continue;
            }
            let user_id: Uuid = event.aggregate_id.parse()?;
            let decoded = event.decode::<User>()?;
            let Some((kind, subject, body)) = self.compose(user_id, &decoded).await? else {
                continue;
            };
            let already: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sent_mails WHERE event_position = $1)",
            )
            .bind(event.position.global_position)
            .fetch_one(&mut *conn)
            .await?;
            if already {
                continue;
            }
            let cipher = match self.keys.cipher(user_id).await {
                Ok(cipher) => cipher,
                // Erased: nobody to write to.
                Err(CryptoError::KeyMissing(_)) => continue,
                Err(err) => return Err(err.into()),
            };
            // The address comes from the log (registration), not from another projection.
            let to = match &decoded {
                UserEvent::UserRegistered { email, .. } => cipher.open(email)?,
                _ => {
                    let registered: serde_json::Value = sqlx::query_scalar(
                        "SELECT payload FROM events \
                          WHERE aggregate_type = 'User' AND aggregate_id = $1 AND sequence = 1",
                    )
                    .bind(&event.aggregate_id)
                    .fetch_one(&mut *conn)
                    .await?;
                    match serde_json::from_value::<UserEvent>(registered)? {
                        UserEvent::UserRegistered { email, .. } => cipher.open(&email)?,
                        other => anyhow::bail!("user {user_id} begins with {other:?}"),
                    }
                }
            };
            let message_id = format!("<{}.{kind}@arosaje>", event.position.global_position);
            let outcome = self
                .mailer
                .send(&Mail {
                    to,
                    subject,
                    body,
                    message_id: message_id.clone(),
                })
                .await;
            let (status, error) = match outcome {
                Ok(()) => ("sent", None),
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(%user_id, kind, error = %reason, "mail refused for good; not retried");
                    ("failed", Some(reason))
                }
                Err(SendError::Transient(err)) => return Err(Transient(err).into()),
            };
            metrics::counter!("mails_total", "kind" => kind, "status" => status).increment(1);
            sqlx::query(
                "INSERT INTO sent_mails (event_position, user_id, kind, message_id, status, error) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(event.position.global_position)
            .bind(user_id)
            .bind(kind)
            .bind(message_id)
            .bind(status)
            .bind(error)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
