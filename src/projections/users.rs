//! Read model `users`: accounts and profiles, personal fields decrypted with each user's key.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::user::User;
use crate::commands::values::Email;
use crate::events::crypto::{Cipher, EmailIndex, KeyStore};
use crate::events::user::{PasswordHash, UserEvent};
use crate::events::StoredEvent;

pub struct UsersProjection {
    keys: Arc<KeyStore>,
    email_index: EmailIndex,
}

impl UsersProjection {
    pub fn new(keys: Arc<KeyStore>, email_index: EmailIndex) -> Self {
        Self { keys, email_index }
    }
}

#[async_trait]
impl Projection for UsersProjection {
    fn name(&self) -> &'static str {
        "users"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["User"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["public.users"]
    }

    /// Layer by layer (see [`super::layers`]): registrations of a layer in one `INSERT`,
    /// e-mail verifications in one `UPDATE`, the rarer events one by one. The keys of the
    /// batch's users are read at once; a missing key is an erased user.
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        crate::infra::cache::bump(conn, "users").await?;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            ids.push(event.aggregate_id.parse::<Uuid>()?);
        }
        ids.sort_unstable();
        ids.dedup();
        let keys = self.keys.ciphers(&ids).await?;
        for layer in super::layers(events) {
            let mut registered = Registered::default();
            let mut verified: (Vec<Uuid>, Vec<DateTime<Utc>>, Vec<i64>) = Default::default();
            let mut others = Vec::new();
            for event in layer {
                let user_id: Uuid = event.aggregate_id.parse()?;
                let decoded = event.decode::<User>()?;
                if let UserEvent::UserErased { .. } = decoded {
                    others.push((event, user_id, decoded, None));
                    continue;
                }
                // Erased user: nothing of theirs is readable, so nothing is projected.
                let Some(cipher) = keys.get(&user_id) else {
                    continue;
                };
                match decoded {
                    UserEvent::UserRegistered {
                        email,
                        display_name,
                        password_hash,
                        role,
                        botanist_requested,
                    } => {
                        let email = cipher.open(&email)?;
                        let email_hash = self
                            .email_index
                            .hash(&Email::parse(&email).map_err(anyhow::Error::msg)?);
                        registered.ids.push(user_id);
                        registered.emails.push(email);
                        registered.hashes.push(email_hash);
                        registered.names.push(cipher.open(&display_name)?);
                        registered.passwords.push(open_hash(cipher, password_hash)?);
                        registered.roles.push(role.as_str());
                        registered.botanists.push(botanist_requested);
                        registered.times.push(event.timestamp);
                        registered.versions.push(event.sequence);
                    }
                    UserEvent::EmailVerified => {
                        verified.0.push(user_id);
                        verified.1.push(event.timestamp);
                        verified.2.push(event.sequence);
                    }
                    other => others.push((event, user_id, other, Some(cipher))),
                }
            }
            registered.write(conn).await?;
            if !verified.0.is_empty() {
                sqlx::query(
                    "UPDATE users u SET email_verified = true, updated_at = v.at, \
                            version = v.version \
                       FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int8[]) AS v(id, at, version) \
                      WHERE u.id = v.id AND u.version < v.version",
                )
                .bind(&verified.0)
                .bind(&verified.1)
                .bind(&verified.2)
                .execute(&mut *conn)
                .await?;
            }
            for (event, user_id, decoded, cipher) in others {
                self.apply_one(conn, event, user_id, decoded, cipher)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Registrations of one layer.
#[derive(Default)]
struct Registered {
    ids: Vec<Uuid>,
    emails: Vec<String>,
    hashes: Vec<Vec<u8>>,
    names: Vec<String>,
    passwords: Vec<String>,
    roles: Vec<&'static str>,
    botanists: Vec<bool>,
    times: Vec<DateTime<Utc>>,
    versions: Vec<i64>,
}

impl Registered {
    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO users (id, email, email_hash, display_name, password_hash, role, \
                                botanist_requested, botanist_status, created_at, updated_at, \
                                version) \
             SELECT id, email, email_hash, display_name, password_hash, role, botanist, \
                    CASE WHEN botanist THEN 'pending' ELSE 'none' END, at, at, version \
               FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[], \
                           $6::text[], $7::bool[], $8::timestamptz[], $9::int8[]) \
                    AS r(id, email, email_hash, display_name, password_hash, role, botanist, at, \
                         version) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&self.ids)
        .bind(&self.emails)
        .bind(&self.hashes)
        .bind(&self.names)
        .bind(&self.passwords)
        .bind(&self.roles)
        .bind(&self.botanists)
        .bind(&self.times)
        .bind(&self.versions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

impl UsersProjection {
    /// One event other than a registration or a verification (`cipher`: the user's, `None`
    /// for `UserErased`).
    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
        user_id: Uuid,
        decoded: UserEvent,
        cipher: Option<&Cipher>,
    ) -> anyhow::Result<()> {
        if let UserEvent::UserErased { .. } = decoded {
            return erase(conn, user_id).await;
        }
        let Some(cipher) = cipher else {
            return Ok(());
        };
        match decoded {
            // Written for the whole layer at once by the batch (`Registered`, the verified ids).
            UserEvent::UserRegistered { .. } | UserEvent::EmailVerified => {}
            UserEvent::UserRoleChanged { role, .. } => {
                set_user(conn, user_id, event, "role", role.as_str()).await?;
            }
            UserEvent::UserDisabled => {
                set_user(conn, user_id, event, "status", "disabled").await?;
            }
            UserEvent::UserEnabled => {
                set_user(conn, user_id, event, "status", "active").await?;
            }
            UserEvent::BotanistApproved => {
                set_user(conn, user_id, event, "botanist_status", "approved").await?;
            }
            UserEvent::BotanistRejected => {
                set_user(conn, user_id, event, "botanist_status", "rejected").await?;
            }
            UserEvent::PasswordChanged { password_hash, .. } => {
                let hash = open_hash(cipher, password_hash)?;
                set_user(conn, user_id, event, "password_hash", &hash).await?;
            }
            UserEvent::TotpEnrolmentStarted { secret } => {
                set_user(conn, user_id, event, "totp_pending", secret.as_str()).await?;
            }
            UserEvent::TotpEnabled { recovery_codes } => {
                sqlx::query(
                    "UPDATE users SET mfa_enabled = true, totp_secret = totp_pending, \
                                totp_pending = NULL, recovery_codes = $2, updated_at = $3, \
                                version = $4 \
                          WHERE id = $1 AND version < $4",
                )
                .bind(user_id)
                .bind(recovery_codes)
                .bind(event.timestamp)
                .bind(event.sequence)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::RecoveryCodeUsed { code_hash } => {
                sqlx::query(
                    "UPDATE users SET recovery_codes = array_remove(recovery_codes, $2), \
                                updated_at = $3, version = $4 \
                          WHERE id = $1 AND version < $4",
                )
                .bind(user_id)
                .bind(code_hash)
                .bind(event.timestamp)
                .bind(event.sequence)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::TotpDisabled => {
                sqlx::query(
                    "UPDATE users SET mfa_enabled = false, totp_secret = NULL, \
                                totp_pending = NULL, recovery_codes = '{}', updated_at = $2, \
                                version = $3 \
                          WHERE id = $1 AND version < $3",
                )
                .bind(user_id)
                .bind(event.timestamp)
                .bind(event.sequence)
                .execute(&mut *conn)
                .await?;
            }
            // Handled above, before the key is looked for.
            UserEvent::UserErased { .. } => {}
            UserEvent::PasswordResetRequested { .. }
            | UserEvent::SecondFactorLocked { .. }
            | UserEvent::LoggedInFromNewDevice { .. } => {
                sqlx::query("UPDATE users SET version = $2 WHERE id = $1 AND version < $2")
                    .bind(user_id)
                    .bind(event.sequence)
                    .execute(&mut *conn)
                    .await?;
            }
            UserEvent::UserProfileUpdated { changes } => {
                let open = |field: &Option<Option<crate::events::crypto::Sealed>>| {
                    field
                        .as_ref()
                        .map(|value| value.as_ref().map(|s| cipher.open(s)).transpose())
                        .transpose()
                };
                let display_name = changes
                    .display_name
                    .as_ref()
                    .map(|s| cipher.open(s))
                    .transpose()?;
                let phone = open(&changes.phone)?;
                let city = open(&changes.city)?;
                let bio = open(&changes.bio)?;
                sqlx::query(
                    "UPDATE users SET \
                            display_name = COALESCE($2, display_name), \
                            phone = CASE WHEN $3 THEN $4 ELSE phone END, \
                            city = CASE WHEN $5 THEN $6 ELSE city END, \
                            bio = CASE WHEN $7 THEN $8 ELSE bio END, \
                            updated_at = $9, version = $10 \
                          WHERE id = $1 AND version < $10",
                )
                .bind(user_id)
                .bind(display_name)
                .bind(phone.is_some())
                .bind(phone.flatten())
                .bind(city.is_some())
                .bind(city.flatten())
                .bind(bio.is_some())
                .bind(bio.flatten())
                .bind(event.timestamp)
                .bind(event.sequence)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }
}

/// Sets one text column of a user row (`column` is one of ours, never input).
async fn set_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    event: &StoredEvent,
    column: &'static str,
    value: &str,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "UPDATE users SET {column} = $2, updated_at = $3, version = $4 WHERE id = $1 AND version < $4"
    ))
    .bind(user_id)
    .bind(value)
    .bind(event.timestamp)
    .bind(event.sequence)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The hash in clear, for the read model that login checks against.
fn open_hash(cipher: &crate::events::crypto::Cipher, hash: PasswordHash) -> anyhow::Result<String> {
    Ok(match hash {
        PasswordHash::Sealed(sealed) => cipher.open(&sealed)?,
        PasswordHash::Legacy(hash) => hash,
    })
}

/// `UserErased`: the row goes, and foreign keys take what hangs on it (their plants, the sittings
/// they own, their applications, reports, reviews, advice, verdicts and places in
/// conversations): what a replay without their key builds, as each projection skips them. The
/// counters other rows keep of what went are counted again (idempotent: a rebuild of `users`
/// that runs this against live tables changes nothing).
async fn erase(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    let sittings: Vec<Uuid> = sqlx::query_scalar(
        "SELECT sitting_id FROM sitting_applications WHERE applicant_id = $1 \
         UNION SELECT sitting_id FROM care_reports WHERE sitter_id = $1",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    let reviewed: Vec<Uuid> =
        sqlx::query_scalar("SELECT advice_id FROM advice_reviews WHERE botanist_id = $1")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    let advised: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT plant_id FROM advice WHERE author_id = $1")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE sittings s SET \
            applications = (SELECT count(*) FROM sitting_applications a WHERE a.sitting_id = s.id), \
            reports = (SELECT count(*) FROM care_reports r WHERE r.sitting_id = s.id) \
          WHERE s.id = ANY($1)",
    )
    .bind(&sittings)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE advice d SET \
            validations = (SELECT count(*) FROM advice_reviews r \
                            WHERE r.advice_id = d.id AND r.verdict = 'validated'), \
            rejections = (SELECT count(*) FROM advice_reviews r \
                           WHERE r.advice_id = d.id AND r.verdict = 'rejected') \
          WHERE d.id = ANY($1)",
    )
    .bind(&reviewed)
    .execute(&mut *conn)
    .await?;
    for plant in advised {
        super::advice::refresh_queue(conn, Some(plant), None).await?;
    }
    Ok(())
}
