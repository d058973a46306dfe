//! GDPR erasure ("droit à l'oubli") by crypto-shredding: the log is never rewritten.
//!
//! [`erase`] does, in order:
//! 1. refuses while the person is in a running sitting (the other party relies on it:
//!    `sitting_in_progress`);
//! 2. cancels the sittings they own that are open or accepted, cancels the accepted sittings they
//!    were to sit, and withdraws their applications to open sittings, through the ordinary
//!    commands, so applicants, owners and sitters hear of it as of any cancellation;
//! 3. appends `UserErased` in one transaction with the deletion of everything that opens their
//!    data: their data key (`user_keys`), the keys of the messages they sent (`message_keys`), and
//!    their e-mail claim; in the same transaction it clears the copies that live outside the
//!    read models' own replay of `UserErased`: the texts of their messages (as message retention
//!    does), the reasons they gave for cancelling, and cached answers (`idempotency_keys`) that
//!    are theirs or quote them. The photo objects of their plants are queued in `photo_uploads`
//!    in that transaction, so a crash before they are deleted leaves them to the orphan sweeper
//!    (`photos::sweep_orphans`);
//! 4. after the commit: revokes every session, forgets the key in this process and announces the
//!    erasure on Redis (`keys:erased`) so every instance drops it from its key cache, deletes the
//!    user's presence keys and the query cache, and deletes the photo objects.
//!
//! The `users` projection deletes the user's row on `UserErased`, and foreign keys take what
//! hangs on it: their plants (and photos), the sittings they own (with applications, reports and
//! reviews), their applications, reports and reviews elsewhere, their advice and verdicts, their
//! places in conversations. That is what a replay of the log builds without their key (each
//! projection skips what it cannot open or whose person is gone), so a rebuild after an erasure
//! equals the live model.
//!
//! Facts read before dispatch, from the read models (the User aggregate cannot know them): the
//! sittings and applications to close, and the copies to clear listed in 3.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::commands::sitting::{Sitting, SittingCommand, SittingError};
use crate::commands::user::{User, UserCommand, UserError};
use crate::commands::Actor;
use crate::events::bookings::SitterCalendar;
use crate::events::crypto::KeyStore;
use crate::events::crypto::{Cipher, Sealed};
use crate::events::store::{CommandError, Committed, Guard};
use crate::events::user::{Role, UserEvent};
use crate::events::{Metadata, Position};
use crate::infra::redis::Redis;
use crate::infra::sessions::SessionChange;
use crate::App;

/// The Redis channel on which erasures are announced to every instance.
pub const CHANNEL: &str = "keys:erased";

/// The reason recorded on the sittings an erasure cancels.
pub const CANCEL_REASON: &str = "account erased";

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error("no such user")]
    NotFound,
    /// The person owns or sits a running sitting.
    #[error("this account takes part in a running sitting ({0}); erase it once that ends")]
    SittingInProgress(Uuid),
    /// The sittings read model did not show the cancellations in time.
    #[error("the account's sittings are being closed; try again in a moment")]
    Settling,
    #[error(transparent)]
    Sitting(CommandError<SittingError>),
    #[error(transparent)]
    User(CommandError<UserError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ErasureError {
    fn from(err: sqlx::Error) -> Self {
        ErasureError::Internal(err.into())
    }
}

/// Erases `user_id`, on the request of `initiator` (the user themself or an admin); `metadata`
/// names the initiator. Returns the commit of `UserErased`.
pub async fn erase(
    app: &App,
    user_id: Uuid,
    initiator: Actor,
    metadata: &Metadata,
) -> Result<Committed, ErasureError> {
    let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&app.pool)
        .await?;
    let role = role.ok_or(ErasureError::NotFound)?;
    let running: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sittings WHERE status = 'in_progress' AND (owner_id = $1 OR sitter_id = $1) \
         LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(&app.pool)
    .await?;
    if let Some(sitting) = running {
        return Err(ErasureError::SittingInProgress(sitting));
    }
    close_sittings(app, user_id, &role, initiator, metadata).await?;

    // Opens where their photos are stored (sealed in the log) before the key goes.
    let cipher = match app.keys.cipher(user_id).await {
        Ok(cipher) => Some(cipher),
        Err(crate::events::crypto::CryptoError::KeyMissing(_)) => None,
        Err(err) => return Err(ErasureError::Internal(err.into())),
    };
    let guard = ShredKeys {
        user_id,
        cipher,
        queued: std::sync::Mutex::new(Vec::new()),
    };
    let committed = app
        .store
        .execute_guarded::<User>(
            &user_id.to_string(),
            UserCommand::Erase { by: initiator.id },
            &(),
            metadata,
            &guard,
        )
        .await
        .map_err(|err| match err {
            CommandError::Domain(UserError::NotFound) => ErasureError::NotFound,
            other => ErasureError::User(other),
        })?;

    app.keys.forget(user_id);
    if let Err(err) = announce(&app.redis, user_id).await {
        // Other instances also drop their whole key cache whenever their subscription comes
        // back, and a key they still hold opens nothing new: its rows are gone.
        tracing::warn!(error = %err, %user_id, "erasure: could not announce the key deletion");
    }
    if let Err(err) =
        crate::identity::apply_account_change(app, user_id, SessionChange::RevokeAll, &committed)
            .await
    {
        tracing::warn!(error = %err, %user_id, "erasure: could not revoke the sessions");
    }
    if let Err(err) = forget_in_redis(&app.redis, user_id).await {
        tracing::warn!(error = %err, %user_id, "erasure: could not clear Redis");
    }
    let queued = guard
        .queued
        .lock()
        .map(|mut queued| std::mem::take(&mut *queued))
        .unwrap_or_default();
    if let Err(err) = crate::photos::delete_queued(app, queued).await {
        tracing::warn!(error = %format!("{err:#}"), %user_id,
            "erasure: photo objects left to the orphan sweeper");
    }
    metrics::counter!("users_erased_total").increment(1);
    Ok(committed)
}

/// Cancels the open and accepted sittings the person owns, the accepted sittings they were to
/// sit, and withdraws their applications to open sittings.
async fn close_sittings(
    app: &App,
    user_id: Uuid,
    role: &str,
    initiator: Actor,
    metadata: &Metadata,
) -> Result<(), ErasureError> {
    let role = Role::parse(role).unwrap_or(Role::User);
    let person = Actor { id: user_id, role };
    // An admin cancels as themself (the sitting allows it); the person cancels as themself.
    let canceller = if initiator.id == user_id {
        person
    } else {
        initiator
    };
    let to_cancel: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sittings \
          WHERE (owner_id = $1 AND status IN ('open', 'accepted')) \
             OR (sitter_id = $1 AND status = 'accepted') \
          ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(&app.pool)
    .await?;
    let reason = app
        .keys
        .cipher(canceller.id)
        .await
        .map_err(anyhow::Error::from)?
        .seal(CANCEL_REASON);
    let mut last = None;
    for sitting in to_cancel {
        let command = SittingCommand::CancelSitting {
            actor: canceller,
            reason: reason.clone(),
        };
        last = run_sitting(app, sitting, command, metadata).await?.or(last);
    }
    let applied: Vec<Uuid> = sqlx::query_scalar(
        "SELECT a.sitting_id FROM sitting_applications a JOIN sittings s ON s.id = a.sitting_id \
          WHERE a.applicant_id = $1 AND s.status = 'open' ORDER BY a.sitting_id",
    )
    .bind(user_id)
    .fetch_all(&app.pool)
    .await?;
    for sitting in applied {
        let command = SittingCommand::WithdrawApplication { applicant: person };
        last = run_sitting(app, sitting, command, metadata).await?.or(last);
    }
    // The read models show these before the key goes: what they opened with it is then cleared
    // by `shred`, and nothing opened with it arrives afterwards.
    if let Some(position) = last {
        let timeout = app.config.read_your_writes_timeout();
        if !app.projections.wait_for("Sitting", position, timeout).await {
            return Err(ErasureError::Settling);
        }
    }
    Ok(())
}

/// Runs one closing command; one that finds nothing left to close (the sitting moved on since
/// the read model was read) is fine, and one that started meanwhile stops the erasure.
async fn run_sitting(
    app: &App,
    sitting: Uuid,
    command: SittingCommand,
    metadata: &Metadata,
) -> Result<Option<Position>, ErasureError> {
    // Through the calendar guard, as any cancellation: the sitter's days are freed.
    match app
        .store
        .execute_guarded::<Sitting>(
            &sitting.to_string(),
            command,
            &(),
            metadata,
            &SitterCalendar,
        )
        .await
    {
        Ok(committed) => Ok(committed.position),
        Err(CommandError::Domain(SittingError::InProgress)) => {
            Err(ErasureError::SittingInProgress(sitting))
        }
        Err(CommandError::Domain(
            SittingError::Closed | SittingError::NotOpen | SittingError::NotApplied,
        )) => Ok(None),
        Err(err) => Err(ErasureError::Sitting(err)),
    }
}

/// Runs in `UserErased`'s transaction: deletes what opens the person's data, and clears the
/// copies no projection replays (see the module's documentation).
struct ShredKeys {
    user_id: Uuid,
    /// The person's key, to open where their photos are stored (None: already gone).
    cipher: Option<Cipher>,
    /// The photos queued for deletion by the transaction that committed (photo id, object keys).
    queued: std::sync::Mutex<Vec<crate::photos::Queued>>,
}

#[async_trait::async_trait]
impl Guard<User> for ShredKeys {
    async fn check(
        &self,
        conn: &mut PgConnection,
        _aggregate_id: &str,
        _before: &User,
        events: &[UserEvent],
    ) -> Result<(), CommandError<UserError>> {
        if !events
            .iter()
            .any(|e| matches!(e, UserEvent::UserErased { .. }))
        {
            return Ok(());
        }
        let queued = shred(conn, self.user_id, self.cipher.as_ref())
            .await
            .map_err(|err| CommandError::Internal(err.into()))?;
        if let Ok(mut slot) = self.queued.lock() {
            *slot = queued;
        }
        Ok(())
    }
}

/// Returns the photos it queued for deletion.
async fn shred(
    conn: &mut PgConnection,
    user_id: Uuid,
    cipher: Option<&Cipher>,
) -> Result<Vec<crate::photos::Queued>, ErasureError> {
    // What cached answers might quote, read before the row goes.
    let quoted: Option<(String, String, Option<String>)> =
        sqlx::query_as("SELECT email, display_name, phone FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    // The photo objects of every plant they ever created, deleted ones included (sealed under
    // the owner's key, whoever uploaded them), found in the log, not in a read model that no
    // longer lists deleted plants; deleted after the commit, or by the sweeper if this process
    // dies first. Their rows go with the plants.
    let photos = match cipher {
        Some(cipher) => photos_in_log(conn, user_id, cipher).await?,
        None => Vec::new(),
    };
    let queued = crate::photos::queue(conn, photos).await?;
    // The record of mails sent to them (kept so that a replay mails no one twice; nothing can
    // be mailed to them any more).
    sqlx::query("DELETE FROM sent_mails WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    // Their days in the sitters' calendar (the write side's own table).
    sqlx::query("DELETE FROM sitter_bookings WHERE sitter_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM user_keys WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let messages: Vec<Uuid> =
        sqlx::query_scalar("DELETE FROM message_keys WHERE sender_id = $1 RETURNING message_id")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("UPDATE messaging.messages SET body = NULL WHERE id = ANY($1) OR sender_id = $2")
        .bind(&messages)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM email_claims WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    // Reasons they gave for cancelling other people's sittings (sealed under their key, so a
    // replay shows none either). Found through the log's actor index.
    sqlx::query(
        "UPDATE sittings SET cancel_reason = NULL \
          WHERE id IN (SELECT aggregate_id::uuid FROM events \
                        WHERE metadata ->> 'actor_id' = $1::text \
                          AND event_type = 'SittingCancelled' \
                          AND payload -> 'SittingCancelled' ->> 'by' = $1::text)",
    )
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    // Cached answers: theirs, and others' that quote their e-mail, name or phone.
    let needles: Vec<String> = quoted
        .map(|(email, name, phone)| {
            [Some(email), Some(name), phone]
                .into_iter()
                .flatten()
                .filter(|n| n.chars().count() >= 3)
                .collect()
        })
        .unwrap_or_default();
    sqlx::query(
        "DELETE FROM idempotency_keys \
          WHERE user_id = $1 \
             OR (body IS NOT NULL AND EXISTS (SELECT 1 FROM UNNEST($2::text[]) n \
                                               WHERE position(convert_to(n, 'UTF8') IN body) > 0))",
    )
    .bind(user_id)
    .bind(&needles)
    .execute(&mut *conn)
    .await?;
    Ok(queued)
}

/// The photos (id, object keys) of the plants `user_id` created, from the log: their
/// `PlantCreated` events by the actor index, then each plant's `PhotoAdded` by its stream.
async fn photos_in_log(
    conn: &mut PgConnection,
    user_id: Uuid,
    cipher: &Cipher,
) -> Result<Vec<crate::photos::Queued>, ErasureError> {
    let added: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT (p.payload -> 'PhotoAdded' ->> 'photo_id')::uuid, \
                    p.payload -> 'PhotoAdded' ->> 'object_key', \
                    p.payload -> 'PhotoAdded' ->> 'thumbnail_key' \
               FROM events c \
               JOIN events p ON p.aggregate_type = 'Plant' AND p.aggregate_id = c.aggregate_id \
                            AND p.event_type = 'PhotoAdded' \
              WHERE c.metadata ->> 'actor_id' = $1::text \
                AND c.aggregate_type = 'Plant' AND c.event_type = 'PlantCreated' \
                AND c.payload -> 'PlantCreated' ->> 'owner_id' = $1::text",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    added
        .into_iter()
        .map(|(photo_id, object, thumbnail)| {
            Ok((
                photo_id,
                vec![
                    cipher.open(&Sealed::from_stored(object))?,
                    cipher.open(&Sealed::from_stored(thumbnail))?,
                ],
            ))
        })
        .collect::<Result<_, crate::events::crypto::CryptoError>>()
        .map_err(|err| ErasureError::Internal(err.into()))
}

/// Tells every instance that `user_id`'s key is gone.
pub async fn announce(redis: &Redis, user_id: Uuid) -> redis::RedisResult<()> {
    let id = user_id.to_string();
    redis
        .call(|mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}

/// Follows [`CHANNEL`] and drops announced keys from this process's cache. Whenever the
/// subscription (re)starts, the whole cache is dropped: announcements may have been missed.
pub async fn run_key_invalidation(redis_url: String, keys: Arc<KeyStore>) {
    loop {
        if let Err(err) = follow(&redis_url, &keys).await {
            tracing::warn!(error = %err, "key invalidation: Redis unavailable");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(redis_url: &str, keys: &KeyStore) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    keys.forget_all();
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        if let Some(user_id) = message
            .get_payload::<String>()
            .ok()
            .and_then(|id| id.parse::<Uuid>().ok())
        {
            keys.forget(user_id);
        }
    }
    Ok(())
}

/// Deletes what Redis holds of the person beyond their sessions: presence, used TOTP codes, and
/// the query cache (answers may quote them; it refills itself).
async fn forget_in_redis(redis: &Redis, user_id: Uuid) -> redis::RedisResult<()> {
    let patterns = [
        format!("presence:{user_id}"),
        format!("last_seen:{user_id}"),
        format!("totp_used:{user_id}:*"),
        "cache:*".to_string(),
    ];
    redis
        .call(|mut conn| async move {
            for pattern in &patterns {
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn)
                        .await?;
                    if !keys.is_empty() {
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<()>(&mut conn)
                            .await?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(())
        })
        .await
}
