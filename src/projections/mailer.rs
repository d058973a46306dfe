//! The mail outbox: a projector that mails what events ask for (a verification link after
//! registration, a reset link after a reset request).
//!
//! A mail is recorded in `sent_mails` (keyed by the event's position) as soon as the SMTP server
//! has accepted it, outside the batch transaction, so a batch that fails later and is retried
//! does not send it again. A crash between the SMTP answer and that record re-sends it once,
//! with the same Message-ID, which lets mail systems drop the duplicate. Events older than
//! `max_age` are not mailed (a projector started on an old log does not mail every account).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Projection;
use crate::events::crypto::{CryptoError, KeyStore};
use crate::events::user::UserEvent;
use crate::events::StoredEvent;
use crate::infra::mail::{Mail, Mailer};
use crate::infra::tokens::{ActionTokens, Purpose};

pub struct MailerProjection {
    pub pool: PgPool,
    pub keys: Arc<KeyStore>,
    pub mailer: Arc<dyn Mailer>,
    pub tokens: Arc<ActionTokens>,
    /// Where the links in mails point (the web or mobile front end).
    pub public_url: String,
    pub max_age: chrono::Duration,
}

impl MailerProjection {
    fn link(&self, path: &str, token: &str) -> String {
        format!(
            "{}/{path}?token={token}",
            self.public_url.trim_end_matches('/')
        )
    }

    fn compose(
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

    fn read_your_writes(&self) -> bool {
        false
    }

    async fn apply(&self, _conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let oldest = chrono::Utc::now() - self.max_age;
        for event in events {
            if event.timestamp < oldest {
                continue;
            }
            let user_id: Uuid = event.aggregate_id.parse()?;
            let decoded = event.decode::<UserEvent>()?;
            let Some((kind, subject, body)) = self.compose(user_id, &decoded)? else {
                continue;
            };
            let already: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sent_mails WHERE event_position = $1)",
            )
            .bind(event.position.global_position)
            .fetch_one(&self.pool)
            .await?;
            if already {
                continue;
            }
            let to = match self.keys.cipher(user_id).await {
                Ok(cipher) => match &decoded {
                    UserEvent::UserRegistered { email, .. } => cipher.open(email)?,
                    _ => {
                        let email: Option<String> =
                            sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
                                .bind(user_id)
                                .fetch_optional(&self.pool)
                                .await?;
                        match email {
                            Some(email) => email,
                            None => anyhow::bail!("user {user_id} is not in the read model yet"),
                        }
                    }
                },
                // Erased: nobody to write to.
                Err(CryptoError::KeyMissing(_)) => continue,
                Err(err) => return Err(err.into()),
            };
            let message_id = format!("<{}.{kind}@arosaje>", event.position.global_position);
            self.mailer
                .send(&Mail {
                    to,
                    subject,
                    body,
                    message_id: message_id.clone(),
                })
                .await?;
            metrics::counter!("mails_sent_total", "kind" => kind).increment(1);
            sqlx::query(
                "INSERT INTO sent_mails (event_position, user_id, kind, message_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(event.position.global_position)
            .bind(user_id)
            .bind(kind)
            .bind(message_id)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
