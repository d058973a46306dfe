//! Events of conversations and their messages. Each message is a stream of its own (aggregate
//! `Message`), as is each read mark (`ReadMark`): sending into a conversation of 10,000 messages
//! loads nothing of them, and people writing into one conversation at once never race for one
//! stream's next version. The conversation's own stream holds who takes part.
//!
//! A message's text is sealed under the message's own key (`MessageKeys`), not its sender's.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::Sealed;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConversationEvent {
    /// Version 1.
    ConversationStarted {
        started_by: Uuid,
        participant_ids: Vec<Uuid>,
        sitting_id: Option<Uuid>,
    },
}

impl DomainEvent for ConversationEvent {
    fn event_type(&self) -> String {
        match self {
            ConversationEvent::ConversationStarted { .. } => "ConversationStarted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MessageEvent {
    /// Version 1.
    MessageSent {
        conversation_id: Uuid,
        sender_id: Uuid,
        /// Sealed under the message's own key.
        body: Sealed,
    },
}

impl DomainEvent for MessageEvent {
    fn event_type(&self) -> String {
        match self {
            MessageEvent::MessageSent { .. } => "MessageSent",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReadMarkEvent {
    /// Version 1. `user_id` has read `conversation_id` up to the message at `position`.
    MessagesRead {
        conversation_id: Uuid,
        user_id: Uuid,
        up_to: Uuid,
        position: i64,
    },
}

impl DomainEvent for ReadMarkEvent {
    fn event_type(&self) -> String {
        match self {
            ReadMarkEvent::MessagesRead { .. } => "MessagesRead",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
