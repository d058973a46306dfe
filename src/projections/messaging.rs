//! Read models `messaging.conversations`, `messaging.participants` and `messaging.messages`
//! (with its full-text index), projection `messaging`. A message's text is opened with its own
//! key; once that key is gone (retention, erasure) the text is stored as NULL.
//!
//! Its SQL names its tables unqualified: the runner's `search_path` (`messaging, public`) finds
//! them, and a rebuild puts its shadow schema first (see `super::rebuild`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::conversation::{Conversation, Message, ReadMark};
use crate::events::conversation::{ConversationEvent, MessageEvent, ReadMarkEvent};
use crate::events::crypto::MessageKeys;
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

    /// Set-based: conversations first, then messages, then read marks, each kind in one or two
    /// statements. Every change commutes with the others of its kind (inserts that skip what is
    /// there, `GREATEST` of positions), and a conversation is started before anything is written
    /// into it, so the order within a batch does not matter beyond that.
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let mut started = Started::default();
        let mut sent = Sent::default();
        // (conversation, reader) -> furthest position read.
        let mut read: HashMap<(Uuid, Uuid), i64> = HashMap::new();
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
                        started.ids.push(id);
                        started.sittings.push(sitting_id);
                        started.times.push(event.timestamp);
                        started.positions.push(position);
                        for participant in participant_ids {
                            started.members.0.push(id);
                            started.members.1.push(participant);
                        }
                    }
                },
                "Message" => match event.decode::<Message>()? {
                    MessageEvent::MessageSent {
                        conversation_id,
                        sender_id,
                        body,
                    } => {
                        sent.ids.push(id);
                        sent.conversations.push(conversation_id);
                        sent.senders.push(sender_id);
                        sent.bodies.push(body);
                        sent.positions.push(position);
                        sent.times.push(event.timestamp);
                    }
                },
                "ReadMark" => match event.decode::<ReadMark>()? {
                    ReadMarkEvent::MessagesRead {
                        conversation_id,
                        user_id,
                        position,
                        ..
                    } => {
                        let furthest = read.entry((conversation_id, user_id)).or_insert(position);
                        *furthest = (*furthest).max(position);
                    }
                },
                _ => {}
            }
        }
        started.write(conn).await?;
        sent.write(conn, &self.keys).await?;
        if !read.is_empty() {
            let (mut conversations, mut users, mut positions) =
                (Vec::new(), Vec::new(), Vec::new());
            for ((conversation, user), position) in read {
                conversations.push(conversation);
                users.push(user);
                positions.push(position);
            }
            mark_read(conn, &conversations, &users, &positions).await?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Started {
    ids: Vec<Uuid>,
    sittings: Vec<Option<Uuid>>,
    times: Vec<DateTime<Utc>>,
    positions: Vec<i64>,
    /// (conversation, participant).
    members: (Vec<Uuid>, Vec<Uuid>),
}

impl Started {
    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO conversations (id, sitting_id, created_at, last_position) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int8[]) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&self.ids)
        .bind(&self.sittings)
        .bind(&self.times)
        .bind(&self.positions)
        .execute(&mut *conn)
        .await?;
        // People erased since are left out.
        sqlx::query(
            "INSERT INTO participants (conversation_id, user_id) \
             SELECT m.conversation_id, m.user_id \
               FROM UNNEST($1::uuid[], $2::uuid[]) AS m(conversation_id, user_id) \
              WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.members.0)
        .bind(&self.members.1)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Sent {
    ids: Vec<Uuid>,
    conversations: Vec<Uuid>,
    senders: Vec<Uuid>,
    bodies: Vec<crate::events::crypto::Sealed>,
    positions: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl Sent {
    async fn write(self, conn: &mut PgConnection, keys: &MessageKeys) -> anyhow::Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        // Each text with its own key, all keys in one query; a key gone leaves the text NULL.
        let ciphers = keys.ciphers(&self.ids).await?;
        let mut texts = Vec::with_capacity(self.ids.len());
        for (id, body) in self.ids.iter().zip(&self.bodies) {
            texts.push(match ciphers.get(id) {
                Some(cipher) => Some(cipher.open(body)?),
                None => None,
            });
        }
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO messages (id, conversation_id, sender_id, body, position, created_at) \
             SELECT m.* FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], \
                                    $6::timestamptz[]) \
                    AS m(id, conversation_id, sender_id, body, position, created_at) \
              WHERE EXISTS (SELECT 1 FROM conversations c WHERE c.id = m.conversation_id) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(&self.ids)
        .bind(&self.conversations)
        .bind(&self.senders)
        .bind(&texts)
        .bind(&self.positions)
        .bind(&self.times)
        .fetch_all(&mut *conn)
        .await?;
        if inserted.is_empty() {
            return Ok(());
        }
        let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
        // Per conversation its latest message; per (conversation, sender) the furthest position
        // written: what the messages one by one would leave.
        let mut latest: HashMap<Uuid, (i64, Uuid)> = HashMap::new();
        let mut written: HashMap<(Uuid, Uuid), i64> = HashMap::new();
        for i in 0..self.ids.len() {
            if !inserted.contains(&self.ids[i]) {
                continue;
            }
            let (conversation, position) = (self.conversations[i], self.positions[i]);
            let entry = latest
                .entry(conversation)
                .or_insert((position, self.ids[i]));
            if position > entry.0 {
                *entry = (position, self.ids[i]);
            }
            let furthest = written
                .entry((conversation, self.senders[i]))
                .or_insert(position);
            *furthest = (*furthest).max(position);
        }
        let (mut conversations, mut positions, mut messages) = (Vec::new(), Vec::new(), Vec::new());
        for (conversation, (position, message)) in latest {
            conversations.push(conversation);
            positions.push(position);
            messages.push(message);
        }
        sqlx::query(
            "UPDATE conversations c \
                SET last_position = GREATEST(c.last_position, l.position), \
                    last_message_id = CASE WHEN l.position >= c.last_position THEN l.message_id \
                                           ELSE c.last_message_id END \
               FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[]) AS l(id, position, message_id) \
              WHERE c.id = l.id",
        )
        .bind(&conversations)
        .bind(&positions)
        .bind(&messages)
        .execute(&mut *conn)
        .await?;
        // Senders have read what they wrote, and have written here (presence is shown between
        // people who both wrote).
        let (mut conversations, mut senders, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for ((conversation, sender), position) in written {
            conversations.push(conversation);
            senders.push(sender);
            positions.push(position);
        }
        sqlx::query(
            "UPDATE participants p \
                SET last_read_position = GREATEST(p.last_read_position, w.position), \
                    has_written = true \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[]) AS w(conversation_id, user_id, position) \
              WHERE p.conversation_id = w.conversation_id AND p.user_id = w.user_id",
        )
        .bind(&conversations)
        .bind(&senders)
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Read marks only move forward.
async fn mark_read(
    conn: &mut PgConnection,
    conversations: &[Uuid],
    users: &[Uuid],
    positions: &[i64],
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE participants p \
            SET last_read_position = GREATEST(p.last_read_position, r.position) \
           FROM UNNEST($1::uuid[], $2::uuid[], $3::int8[]) AS r(conversation_id, user_id, position) \
          WHERE p.conversation_id = r.conversation_id AND p.user_id = r.user_id",
    )
    .bind(conversations)
    .bind(users)
    .bind(positions)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
