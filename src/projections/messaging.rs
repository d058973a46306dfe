//! Read models `messaging.conversations`, `messaging.participants` and `messaging.messages`
//! (with its full-text index), projection `messaging`. A message's text is opened with its own
//! key; once that key is gone (retention, erasure) the text is stored as NULL.
//!
//! Its SQL names its tables unqualified: the runner's `search_path` (`messaging, public`) finds
//! them, and a rebuild puts its shadow schema first (see `super::rebuild`).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::conversation::{Conversation, Message, ReadMark};
use crate::events::conversation::{ConversationEvent, MessageEvent, ReadMarkEvent};
use crate::events::crypto::{CryptoError, MessageKeys};
use crate::events::StoredEvent;

pub struct MessagingProjection {
    keys: Arc<MessageKeys>,
}

impl MessagingProjection {
    pub fn new(keys: Arc<MessageKeys>) -> Self {
        MessagingProjection { keys }
    }
}

#[async_trait]
impl Projection for MessagingProjection {
    fn name(&self) -> &'static str {
        "messaging"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Conversation", "Message", "ReadMark"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "messaging.conversations",
            "messaging.participants",
            "messaging.messages",
        ]
    }

    /// Retention (`crate::messaging::expire_texts`) deletes message keys and clears the texts
    /// in the live table; a text the rebuild opened before its key went is cleared here.
    async fn reconcile(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE messages m SET body = NULL \
              WHERE m.body IS NOT NULL \
                AND NOT EXISTS (SELECT 1 FROM message_keys k WHERE k.message_id = m.id)",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        for event in events {
            let id: Uuid = event.aggregate_id.parse()?;
            let position = event.position.global_position;
            match event.aggregate_type.as_str() {
                "Conversation" => match event.decode::<Conversation>()? {
                    ConversationEvent::ConversationStarted {
                        participant_ids,
                        sitting_id,
                        ..
                    } => {
                        sqlx::query(
                            "INSERT INTO conversations \
                                 (id, sitting_id, created_at, last_position) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(id)
                        .bind(sitting_id)
                        .bind(event.timestamp)
                        .bind(position)
                        .execute(&mut *conn)
                        .await?;
                        // People erased since are left out.
                        sqlx::query(
                            "INSERT INTO participants (conversation_id, user_id) \
                             SELECT $1, u.id FROM users u WHERE u.id = ANY($2) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(id)
                        .bind(&participant_ids)
                        .execute(&mut *conn)
                        .await?;
                    }
                },
                "Message" => match event.decode::<Message>()? {
                    MessageEvent::MessageSent {
                        conversation_id,
                        sender_id,
                        body,
                    } => {
                        let body = match self.keys.cipher(id).await {
                            Ok(cipher) => Some(cipher.open(&body)?),
                            Err(CryptoError::KeyMissing(_)) => None,
                            Err(err) => return Err(err.into()),
                        };
                        let inserted = sqlx::query(
                            "INSERT INTO messages \
                                 (id, conversation_id, sender_id, body, position, created_at) \
                             SELECT $1, $2, $3, $4, $5, $6 \
                              WHERE EXISTS (SELECT 1 FROM conversations WHERE id = $2) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(id)
                        .bind(conversation_id)
                        .bind(sender_id)
                        .bind(body)
                        .bind(position)
                        .bind(event.timestamp)
                        .execute(&mut *conn)
                        .await?;
                        if inserted.rows_affected() > 0 {
                            sqlx::query(
                                "UPDATE conversations \
                                    SET last_position = GREATEST(last_position, $2), \
                                        last_message_id = CASE WHEN $2 >= last_position THEN $3 \
                                                               ELSE last_message_id END \
                                  WHERE id = $1",
                            )
                            .bind(conversation_id)
                            .bind(position)
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                            // Senders have read what they wrote, and have written here
                            // (presence is shown between people who both wrote).
                            sqlx::query(
                                "UPDATE participants \
                                    SET last_read_position = GREATEST(last_read_position, $3), \
                                        has_written = true \
                                  WHERE conversation_id = $1 AND user_id = $2",
                            )
                            .bind(conversation_id)
                            .bind(sender_id)
                            .bind(position)
                            .execute(&mut *conn)
                            .await?;
                        }
                    }
                },
                "ReadMark" => match event.decode::<ReadMark>()? {
                    ReadMarkEvent::MessagesRead {
                        conversation_id,
                        user_id,
                        position,
                        ..
                    } => mark_read(conn, conversation_id, user_id, position).await?,
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// Read marks only move forward.
async fn mark_read(
    conn: &mut PgConnection,
    conversation_id: Uuid,
    user_id: Uuid,
    position: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE participants \
            SET last_read_position = GREATEST(last_read_position, $3) \
          WHERE conversation_id = $1 AND user_id = $2",
    )
    .bind(conversation_id)
    .bind(user_id)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
