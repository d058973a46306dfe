//! Metadata carried by every event: who acted, in which request, and why.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who caused an event and in which chain of work. Stored as the event's `metadata` column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The user who issued the command; `None` for anonymous commands (registration) and the system.
    pub actor_id: Option<Uuid>,
    /// That user's role when acting (`USER`, `BOTANIST`, `ADMIN`, `AUDITOR`, or `SYSTEM`).
    pub actor_role: String,
    /// The HTTP request (or CLI run) that carried the command.
    pub request_id: String,
    /// The chain of work this belongs to (an inbound `X-Correlation-Id`, else the request id).
    pub correlation_id: String,
    /// What directly caused this command: the request, or an earlier event.
    pub causation_id: String,
}

impl Metadata {
    /// Metadata for work started by the system itself (CLI, background jobs).
    pub fn system(reason: &str) -> Self {
        let id = Uuid::new_v4().to_string();
        Self {
            actor_id: None,
            actor_role: "SYSTEM".into(),
            request_id: id.clone(),
            correlation_id: id,
            causation_id: reason.to_string(),
        }
    }

    /// The map form cqrs-es envelopes carry.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(5);
        if let Some(actor) = self.actor_id {
            map.insert("actor_id".into(), actor.to_string());
        }
        map.insert("actor_role".into(), self.actor_role.clone());
        map.insert("request_id".into(), self.request_id.clone());
        map.insert("correlation_id".into(), self.correlation_id.clone());
        map.insert("causation_id".into(), self.causation_id.clone());
        map
    }
}
