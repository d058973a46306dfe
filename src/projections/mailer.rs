//! The mail outbox: a side-effect projector that mails what events ask for: to an account (a
//! verification link after registration, a reset link after a reset request, security notices:
//! password changed, two-factor authentication turned on or off or locked, a new device),
//! and to the people of a sitting (an application to the owner, the acceptance to the sitter, a
//! care report to the owner, the start reminder to both, and its expiry to the owner), and urgent
//! advice to the plant's owner and its sitter.
//!
//! It holds no database transaction while it talks to SMTP (see [`Mode::SideEffects`]): one
//! instance at a time runs it, under an advisory lock. A mail is recorded in `sent_mails` (keyed by
//! the event's position and the recipient, since one event may mail two people) as soon as the
//! SMTP server has accepted it, or refused it for good, so a retry or a replay does not send it
//! again. A crash between the SMTP answer and that record re-sends it once, with the same
//! Message-ID, which lets mail systems drop the duplicate. A server that is down or answers 4xx is
//! retried without limit ([`Transient`]); a 5xx refusal or an address the SMTP library refuses is
//! recorded as `failed` and not retried. Events older than `max_age` are not mailed (a projector
//! started on an old log does not mail every account).
//!
//! Everything a mail says comes from the log, never from a read model: addresses and display
//! names from the users' events, opened with their keys; dates and the city from the sitting's
//! request. Sitting mails name people by display name only, carry no e-mail address of anyone
//! else and no exact location (the app shows it to those who may see it).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use cqrs_es::Aggregate;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Mode, Projection, Transient};
use crate::commands::advice::Advice;
use crate::commands::plant::Plant;
use crate::commands::sitting::Sitting;
use crate::commands::user::User;
use crate::events::advice::{AdviceEvent, Priority};
use crate::events::crypto::{Cipher, CryptoError, KeyStore, Sealed};
use crate::events::plant::PlantEvent;
use crate::events::sitting::{Location, SittingEvent};
use crate::events::upcast::{self, Versioned};
use crate::events::user::UserEvent;
use crate::events::StoredEvent;
use crate::infra::mail::{Mail, Mailer, SendError};
use crate::infra::tokens::{ActionTokens, Purpose};

/// One mail an event asks for.
struct Outgoing {
    /// The recipient; their address is looked up in the log when the mail goes out.
    to: Uuid,
    /// Names the mail in `sent_mails.kind` and the `mails_total` metric.
    kind: &'static str,
    subject: String,
    body: String,
}

/// What a sitting's request says, as a sitting mail needs it.
struct Requested {
    owner_id: Uuid,
    plants: usize,
    starts_on: NaiveDate,
    ends_on: NaiveDate,
    location: Sealed,
}

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
            UserEvent::TotpEnabled { .. } => Some((
                "mfa_enabled",
                "Two-factor authentication was turned on".to_string(),
                "Two-factor authentication was just turned on for your A'rosa-je account: \
                 logging in now takes your password and a code from an authenticator app.\r\n\r\n\
                 If it was not you, someone knows your password and holds one of your \
                 sessions: reset your password at once from the login page (it ends every \
                 session), and write to us to remove the app they enrolled.\r\n"
                    .to_string(),
            )),
            UserEvent::SecondFactorLocked { failures, until } => Some((
                "mfa_locked",
                "Two-factor codes locked after wrong attempts".to_string(),
                format!(
                    "{failures} wrong two-factor codes in a row were entered for your \
                     A'rosa-je account, so codes are refused until {} UTC.\r\n\r\nIf it \
                     was not you, someone knows your password or holds one of your sessions: \
                     change your password and end your other sessions as soon as you can log \
                     in, or reset your password from the login page.\r\n",
                    until.format("%Y-%m-%d %H:%M")
                ),
            )),
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

    /// The page of a sitting in the front end. No token: the app asks who is looking.
    fn sitting_link(&self, sitting_id: &str) -> String {
        format!(
            "{}/sittings/{sitting_id}",
            self.public_url.trim_end_matches('/')
        )
    }

    /// A user's cipher, or `None` once the user was erased.
    async fn cipher(&self, user_id: Uuid) -> anyhow::Result<Option<Cipher>> {
        match self.keys.cipher(user_id).await {
            Ok(cipher) => Ok(Some(cipher)),
            Err(CryptoError::KeyMissing(_)) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// A user's current display name from their events, cut to one short line; a neutral word
    /// once they were erased.
    async fn display_name(&self, conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<String> {
        let Some(cipher) = self.cipher(user_id).await? else {
            return Ok("A former member".to_string());
        };
        let events = newest_first::<User>(
            conn,
            &user_id.to_string(),
            &["UserRegistered", "UserProfileUpdated"],
            i64::MAX,
        )
        .await?;
        let sealed = events.into_iter().find_map(|event| match event {
            UserEvent::UserRegistered { display_name, .. } => Some(display_name),
            UserEvent::UserProfileUpdated { changes } => changes.display_name,
            _ => None,
        });
        let name = match sealed {
            Some(sealed) => one_line(&cipher.open(&sealed)?, 100),
            None => String::new(),
        };
        Ok(if name.is_empty() {
            "A member".to_string()
        } else {
            name
        })
    }

    /// The mails a sitting event asks for. Nothing when the owner was erased: the sitting is gone
    /// from the app, and there is nobody to tell about it.
    async fn sitting_mails(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
    ) -> anyhow::Result<Vec<Outgoing>> {
        let decoded = event.decode::<Sitting>()?;
        if !matches!(
            decoded,
            SittingEvent::ApplicationSubmitted { .. }
                | SittingEvent::SitterAccepted { .. }
                | SittingEvent::CareReported { .. }
                | SittingEvent::SittingStartReminderIssued { .. }
                | SittingEvent::SittingExpired { .. }
        ) {
            return Ok(Vec::new());
        }
        let id = &event.aggregate_id;
        let Some(requested) = requested(conn, id).await? else {
            anyhow::bail!("sitting {id} has no SittingRequested");
        };
        let owner = requested.owner_id;
        let Some(owner_cipher) = self.cipher(owner).await? else {
            return Ok(Vec::new());
        };
        let link = self.sitting_link(id);
        let period = format!("from {} to {}", requested.starts_on, requested.ends_on);
        Ok(match decoded {
            SittingEvent::ApplicationSubmitted { applicant_id, .. } => {
                let applicant = self.display_name(conn, applicant_id).await?;
                vec![Outgoing {
                    to: owner,
                    kind: "application_received",
                    subject: "New application to sit your plants".to_string(),
                    body: format!(
                        "{applicant} applied to care for your plants {period}.\r\n\r\nSee the \
                         application and the applicant's profile, and accept a sitter, in the \
                         app:\r\n{link}\r\n"
                    ),
                }]
            }
            SittingEvent::SitterAccepted { sitter_id } => {
                let owner_name = self.display_name(conn, owner).await?;
                let place = city_of(&owner_cipher, &requested.location)?;
                let plants = match requested.plants {
                    1 => "1 plant".to_string(),
                    n => format!("{n} plants"),
                };
                vec![Outgoing {
                    to: sitter_id,
                    kind: "sitter_accepted",
                    subject: "Your application to sit plants was accepted".to_string(),
                    body: format!(
                        "{owner_name} accepted your application: you will care for {plants} in \
                         {place} {period}.\r\n\r\nThe exact address, and the owner's \
                         instructions if any, are in the app:\r\n{link}\r\n"
                    ),
                }]
            }
            SittingEvent::CareReported { sitter_id, .. } => {
                let sitter = self.display_name(conn, sitter_id).await?;
                vec![Outgoing {
                    to: owner,
                    kind: "report_posted",
                    subject: "New care report on your plants".to_string(),
                    body: format!(
                        "{sitter} posted a care report on one of your plants.\r\n\r\nRead it \
                         in the app:\r\n{link}\r\n"
                    ),
                }]
            }
            SittingEvent::SittingStartReminderIssued { starts_on } => {
                let Some(sitter_id) = accepted_sitter(conn, id, event.sequence).await? else {
                    anyhow::bail!("sitting {id} reminded without an accepted sitter");
                };
                let owner_name = self.display_name(conn, owner).await?;
                let sitter = self.display_name(conn, sitter_id).await?;
                let place = city_of(&owner_cipher, &requested.location)?;
                let subject = "Your plant sitting starts tomorrow".to_string();
                let until = requested.ends_on;
                vec![
                    Outgoing {
                        to: owner,
                        kind: "sitting_starts_tomorrow",
                        subject: subject.clone(),
                        body: format!(
                            "{sitter} starts caring for your plants tomorrow, {starts_on}, until \
                             {until}.\r\n\r\nThe sitting in the app:\r\n{link}\r\n"
                        ),
                    },
                    Outgoing {
                        to: sitter_id,
                        kind: "sitting_starts_tomorrow",
                        subject,
                        body: format!(
                            "You start caring for the plants of {owner_name} in {place} \
                             tomorrow, {starts_on}, until {until}.\r\n\r\nThe exact address, \
                             and the owner's instructions if any, are in the app:\r\n{link}\r\n"
                        ),
                    },
                ]
            }
            SittingEvent::SittingExpired { .. } => {
                let place = city_of(&owner_cipher, &requested.location)?;
                let what = match accepted_sitter(conn, id, event.sequence).await? {
                    Some(sitter_id) => {
                        let sitter = self.display_name(conn, sitter_id).await?;
                        format!(
                            "The sitting of your plants in {place} {period}, accepted by \
                             {sitter}, was never started"
                        )
                    }
                    None => {
                        format!("Nobody was accepted to care for your plants in {place} {period}")
                    }
                };
                vec![Outgoing {
                    to: owner,
                    kind: "sitting_expired",
                    subject: "Your plant sitting request has expired".to_string(),
                    body: format!(
                        "{what}, and its last day has passed: the request has expired and is no \
                         longer shown to sitters.\r\n\r\nAsk for a new sitting in the app \
                         whenever you need one:\r\n{link}\r\n"
                    ),
                }]
            }
            _ => Vec::new(),
        })
    }

    /// Urgent advice, once, to the plant's owner and to whoever cared for the plant when it was
    /// given (the facts the advice recorded). Other advice is seen in the app (and live).
    async fn advice_mails(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
    ) -> anyhow::Result<Vec<Outgoing>> {
        let AdviceEvent::AdviceGiven {
            author_id,
            plant_id,
            plant_owner_id,
            sitter_id,
            priority: Priority::Urgent,
            ..
        } = event.decode::<Advice>()?
        else {
            return Ok(Vec::new());
        };
        let botanist = self.display_name(conn, author_id).await?;
        let plant = plant_name(conn, plant_id).await?;
        let link = format!(
            "{}/plants/{plant_id}",
            self.public_url.trim_end_matches('/')
        );
        let subject = format!("Urgent advice on {plant}");
        let mut mails = vec![Outgoing {
            to: plant_owner_id,
            kind: "urgent_advice",
            subject: subject.clone(),
            body: format!(
                "Botanist {botanist} gave urgent advice on your plant {plant}.\r\n\r\nRead it \
                 in the app:\r\n{link}\r\n"
            ),
        }];
        if let Some(sitter) = sitter_id.filter(|s| *s != plant_owner_id) {
            mails.push(Outgoing {
                to: sitter,
                kind: "urgent_advice",
                subject,
                body: format!(
                    "Botanist {botanist} gave urgent advice on {plant}, a plant you are caring \
                     for.\r\n\r\nRead it in the app:\r\n{link}\r\n"
                ),
            });
        }
        Ok(mails)
    }

    /// Sends one mail unless `sent_mails` has it, and records the outcome.
    async fn deliver(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
        mail: Outgoing,
    ) -> anyhow::Result<()> {
        let position = event.position.global_position;
        let Outgoing {
            to: user_id,
            kind,
            subject,
            body,
        } = mail;
        let already: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sent_mails WHERE event_position = $1 AND user_id = $2)",
        )
        .bind(position)
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
        if already {
            return Ok(());
        }
        // Erased: nobody to write to.
        let Some(to) = self.address(conn, user_id).await? else {
            return Ok(());
        };
        // Account mails keep the id they always had; a sitting event may mail two people, so
        // theirs name the recipient too.
        let message_id = if event.aggregate_type == User::TYPE {
            format!("<{position}.{kind}@arosaje>")
        } else {
            format!("<{position}.{kind}.{}@arosaje>", user_id.simple())
        };
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
        .bind(position)
        .bind(user_id)
        .bind(kind)
        .bind(message_id)
        .bind(status)
        .bind(error)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// A user's address, from the log (the event that last set it), not from a read model;
    /// `None` once the user was erased.
    async fn address(
        &self,
        conn: &mut PgConnection,
        user_id: Uuid,
    ) -> anyhow::Result<Option<String>> {
        let Some(cipher) = self.cipher(user_id).await? else {
            return Ok(None);
        };
        // Only registration sets an address today; an address change would join this list.
        let events =
            newest_first::<User>(conn, &user_id.to_string(), &["UserRegistered"], i64::MAX).await?;
        match events.into_iter().next() {
            Some(UserEvent::UserRegistered { email, .. }) => Ok(Some(cipher.open(&email)?)),
            Some(other) => anyhow::bail!("user {user_id}: no address in {other:?}"),
            None => anyhow::bail!("user {user_id} has no UserRegistered"),
        }
    }
}

/// Events of one stream of `A` before sequence `before`, of the given types, newest first,
/// decoded through `A`'s upcasters.
async fn newest_first<A: Versioned>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    event_types: &[&str],
    before: i64,
) -> anyhow::Result<Vec<A::Event>> {
    let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence < $3 \
            AND event_type = ANY($4) \
          ORDER BY sequence DESC",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(before)
    .bind(event_types)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|(event_type, version, payload)| {
            Ok(upcast::decode::<A>(event_type, version, payload)?)
        })
        .collect()
}

/// A plant's current name, from its events, cut to one short line.
async fn plant_name(conn: &mut PgConnection, plant_id: Uuid) -> anyhow::Result<String> {
    let events = newest_first::<Plant>(
        conn,
        &plant_id.to_string(),
        &["PlantCreated", "PlantUpdated"],
        i64::MAX,
    )
    .await?;
    let name = events.into_iter().find_map(|event| match event {
        PlantEvent::PlantCreated { name, .. } => Some(name),
        PlantEvent::PlantUpdated { changes } => changes.name,
        _ => None,
    });
    Ok(name.map_or_else(|| "a plant".to_string(), |n| one_line(&n, 100)))
}

/// The request that opened a sitting.
async fn requested(conn: &mut PgConnection, sitting_id: &str) -> anyhow::Result<Option<Requested>> {
    let events = newest_first::<Sitting>(conn, sitting_id, &["SittingRequested"], i64::MAX).await?;
    Ok(events.into_iter().find_map(|event| match event {
        SittingEvent::SittingRequested {
            owner_id,
            plant_ids,
            starts_on,
            ends_on,
            location,
            ..
        } => Some(Requested {
            owner_id,
            plants: plant_ids.len(),
            starts_on,
            ends_on,
            location,
        }),
        _ => None,
    }))
}

/// The sitter a sitting had accepted before its event at `sequence`.
async fn accepted_sitter(
    conn: &mut PgConnection,
    sitting_id: &str,
    sequence: i64,
) -> anyhow::Result<Option<Uuid>> {
    let events = newest_first::<Sitting>(conn, sitting_id, &["SitterAccepted"], sequence).await?;
    Ok(events.into_iter().find_map(|event| match event {
        SittingEvent::SitterAccepted { sitter_id } => Some(sitter_id),
        _ => None,
    }))
}

/// The city of a sitting's sealed location: never the exact place, which the app shows only to
/// those who may see it.
fn city_of(owner: &Cipher, location: &Sealed) -> anyhow::Result<String> {
    let location: Location = serde_json::from_str(&owner.open(location)?)?;
    Ok(one_line(&location.city, 100))
}

/// Text from a user, safe inside a plain-text mail: no control characters, at most `max` of them.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
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
        &["User", "Sitting", "Advice"]
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
            let mails = match event.aggregate_type.as_str() {
                User::TYPE => {
                    let user_id: Uuid = event.aggregate_id.parse()?;
                    let decoded = event.decode::<User>()?;
                    self.compose(user_id, &decoded)
                        .await?
                        .map(|(kind, subject, body)| Outgoing {
                            to: user_id,
                            kind,
                            subject,
                            body,
                        })
                        .into_iter()
                        .collect()
                }
                Sitting::TYPE => self.sitting_mails(conn, event).await?,
                Advice::TYPE => self.advice_mails(conn, event).await?,
                _ => Vec::new(),
            };
            // One by one: a retry after a failure skips those already recorded.
            for mail in mails {
                self.deliver(conn, event, mail).await?;
            }
        }
        Ok(())
    }
}
