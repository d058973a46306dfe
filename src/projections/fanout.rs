//! Live updates: a side-effect projector that publishes each message, read mark, sitting change
//! and new advice, after it committed, to the Redis channels of the people who may see it
//! (`user:{id}`, see `infra::hub`). Who takes part in a conversation comes from the log (its `ConversationStarted`
//! event), not from a read model. Frames carry the event's log position: a frame published twice
//! (a retried batch) is dropped by the socket, and a client that missed frames asks to `resume`
//! after the last position it saw. Events older than `max_age` are not published: a projector
//! started on an old log does not replay history to whoever is connected.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Mode, Projection, Transient};
use crate::commands::conversation::{Message, ReadMark};
use crate::events::advice::AdviceEvent;
use crate::events::conversation::{ConversationEvent, MessageEvent, ReadMarkEvent};
use crate::events::crypto::MessageKeys;
use crate::events::sitting::SittingEvent;
use crate::events::StoredEvent;
use crate::infra::redis::Redis;

pub struct FanoutProjection {
    pub redis: Redis,
    pub keys: Arc<MessageKeys>,
    pub max_age: chrono::Duration,
}

/// The participants of a conversation, from its first event.
pub async fn participants(
    conn: &mut PgConnection,
    conversation: Uuid,
) -> anyhow::Result<Vec<Uuid>> {
    let first: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM events \
          WHERE aggregate_type = 'Conversation' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(conversation.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(
        match first
            .map(serde_json::from_value::<ConversationEvent>)
            .transpose()?
        {
            Some(ConversationEvent::ConversationStarted {
                participant_ids, ..
            }) => participant_ids,
            None => Vec::new(),
        },
    )
}

/// The owner and accepted sitter of a sitting, from its events.
async fn sitting_parties(conn: &mut PgConnection, sitting: Uuid) -> anyhow::Result<Vec<Uuid>> {
    let payloads: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Sitting' AND aggregate_id = $1 \
            AND event_type IN ('SittingRequested', 'SitterAccepted') ORDER BY sequence",
    )
    .bind(sitting.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut parties = Vec::new();
    for payload in payloads {
        match serde_json::from_value::<SittingEvent>(payload)? {
            SittingEvent::SittingRequested { owner_id, .. } => parties.push(owner_id),
            SittingEvent::SitterAccepted { sitter_id } => parties.push(sitter_id),
            _ => {}
        }
    }
    Ok(parties)
}

/// `sitting.updated` (and `report.created`) for the sitting's owner and sitter; the owner also
/// hears of applications. `None` for events nobody is told of live.
async fn sitting_frame(
    conn: &mut PgConnection,
    sitting: Uuid,
    event: &StoredEvent,
) -> anyhow::Result<Option<(Vec<Uuid>, String)>> {
    let position = event.position.global_position;
    let decoded = event.decode::<crate::commands::sitting::Sitting>()?;
    let status = match &decoded {
        SittingEvent::SitterAccepted { .. } => Some("accepted"),
        SittingEvent::SittingStarted { .. } => Some("in_progress"),
        SittingEvent::SittingCompleted { .. } => Some("completed"),
        SittingEvent::SittingCancelled { .. } => Some("cancelled"),
        SittingEvent::SittingExpired { .. } => Some("expired"),
        _ => None,
    };
    let parties = sitting_parties(conn, sitting).await?;
    Ok(match decoded {
        SittingEvent::CareReported {
            report_id,
            plant_id,
            sitter_id,
            ..
        } => Some((
            parties,
            frame(
                "report.created",
                position,
                json!({"sitting_id": sitting, "report_id": report_id, "plant_id": plant_id,
                       "sitter_id": sitter_id}),
            ),
        )),
        SittingEvent::ApplicationSubmitted { applicant_id, .. } => Some((
            parties.into_iter().take(1).collect(),
            frame(
                "sitting.updated",
                position,
                json!({"sitting_id": sitting, "event": event.event_type, "applicant_id": applicant_id}),
            ),
        )),
        _ => status.map(|status| {
            (
                parties,
                frame(
                    "sitting.updated",
                    position,
                    json!({"sitting_id": sitting, "event": event.event_type, "status": status}),
                ),
            )
        }),
    })
}

/// `advice.created` for the plant's owner and whoever cared for it when the advice was given.
fn advice_frame(advice: Uuid, event: &StoredEvent) -> anyhow::Result<Option<(Vec<Uuid>, String)>> {
    let AdviceEvent::AdviceGiven {
        author_id,
        plant_id,
        plant_owner_id,
        sitting_id,
        sitter_id,
        priority,
        ..
    } = event.decode::<crate::commands::advice::Advice>()?
    else {
        return Ok(None);
    };
    let mut recipients = vec![plant_owner_id];
    recipients.extend(sitter_id.filter(|s| *s != plant_owner_id));
    let position = event.position.global_position;
    Ok(Some((
        recipients,
        frame(
            "advice.created",
            position,
            json!({"advice_id": advice, "plant_id": plant_id, "sitting_id": sitting_id,
                   "author_id": author_id, "priority": priority.as_str()}),
        ),
    )))
}

/// A frame as sockets send it.
pub fn frame(kind: &str, position: i64, data: serde_json::Value) -> String {
    json!({"type": kind, "position": position, "data": data}).to_string()
}

#[async_trait]
impl Projection for FanoutProjection {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Message", "ReadMark", "Sitting", "Advice"]
    }

    fn mode(&self) -> Mode {
        Mode::SideEffects
    }

    /// A frame published twice is dropped by the socket (it carries its position).
    fn repeatable_effects(&self) -> bool {
        true
    }

    /// The batch's frames in log order, published together: the message keys in one query, each
    /// conversation's participants once, and the frames in Redis pipelines.
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let recent: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| chrono::Utc::now() - e.timestamp <= self.max_age)
            .collect();
        let message_ids = recent
            .iter()
            .filter(|e| e.aggregate_type == "Message")
            .map(|e| e.aggregate_id.parse())
            .collect::<Result<Vec<Uuid>, _>>()?;
        let ciphers = if message_ids.is_empty() {
            HashMap::new()
        } else {
            self.keys.ciphers(&message_ids).await?
        };
        let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut frames: Vec<(Uuid, String)> = Vec::new();
        let mut messages: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
        for event in recent {
            let position = event.position.global_position;
            let id: Uuid = event.aggregate_id.parse()?;
            let (conversation, frame) = match event.aggregate_type.as_str() {
                "Message" => match event.decode::<Message>()? {
                    MessageEvent::MessageSent {
                        conversation_id,
                        sender_id,
                        body,
                    } => {
                        // No key: erased, or past retention.
                        let body = ciphers
                            .get(&id)
                            .map(|cipher| cipher.open(&body))
                            .transpose()?;
                        let data = json!({
                            "id": id, "conversation_id": conversation_id, "sender_id": sender_id,
                            "body": body, "position": position, "created_at": event.timestamp,
                        });
                        messages.push(event.timestamp);
                        (conversation_id, frame("message.created", position, data))
                    }
                },
                "ReadMark" => match event.decode::<ReadMark>()? {
                    ReadMarkEvent::MessagesRead {
                        conversation_id,
                        user_id,
                        up_to,
                        position: read_position,
                    } => {
                        let data = json!({
                            "conversation_id": conversation_id, "user_id": user_id,
                            "up_to": up_to, "up_to_position": read_position,
                        });
                        (conversation_id, frame("message.read", position, data))
                    }
                },
                "Sitting" | "Advice" => {
                    let found = if event.aggregate_type == "Sitting" {
                        sitting_frame(conn, id, event).await?
                    } else {
                        advice_frame(id, event)?
                    };
                    if let Some((recipients, frame)) = found {
                        frames.extend(recipients.into_iter().map(|user| (user, frame.clone())));
                    }
                    continue;
                }
                _ => continue,
            };
            let recipients = match members.entry(conversation) {
                std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::hash_map::Entry::Vacant(first) => {
                    first.insert(participants(conn, conversation).await?)
                }
            };
            frames.extend(recipients.iter().map(|user| (*user, frame.clone())));
        }
        crate::infra::hub::publish_all(&self.redis, &frames)
            .await
            .map_err(|err| Transient(err.into()))?;
        let now = chrono::Utc::now();
        for sent in messages {
            metrics::histogram!("websocket_publish_delay_seconds").record(
                (now - sent)
                    .to_std()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
            );
        }
        Ok(())
    }
}
