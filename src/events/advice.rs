//! Events of the `Advice` aggregate: a botanist's advice on a plant, its versions, the other
//! botanists' verdicts on it, and its end (withdrawn by its author, or hidden by a moderator).
//!
//! What people write (the advice, a verdict's comment) is sealed under its writer's key: erasing a
//! botanist makes their writing unreadable while the facts (who advised which plant, when, which
//! verdicts) stay for audit. A moderator's reason is a moderation record, kept in clear.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::Sealed;

/// How soon the advice should be acted on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    /// Act now: the owner and the sitter are told by e-mail and live.
    Urgent,
    /// Someone should look at the plant again later.
    FollowUp,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::Urgent => "urgent",
            Priority::FollowUp => "follow_up",
        }
    }

    pub fn parse(value: &str) -> Result<Priority, String> {
        match value {
            "normal" => Ok(Priority::Normal),
            "urgent" => Ok(Priority::Urgent),
            "follow_up" => Ok(Priority::FollowUp),
            _ => Err("must be one of normal, urgent, follow_up".to_string()),
        }
    }
}

/// Another botanist's verdict on an advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Validated,
    Rejected,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Validated => "validated",
            Verdict::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdviceEvent {
    /// Version 1. The first version of the advice. `plant_owner_id` and `sitter_id` (who cared
    /// for the plant at that moment, if anyone) are facts looked up when it was given: who may
    /// read it and who is told of it follow from the log alone.
    AdviceGiven {
        author_id: Uuid,
        plant_id: Uuid,
        plant_owner_id: Uuid,
        sitting_id: Option<Uuid>,
        sitter_id: Option<Uuid>,
        priority: Priority,
        /// Sealed under the author's key.
        body: Sealed,
    },
    /// Version 1. A new version (2, 3, ...) by the author; earlier versions stay in the log.
    AdviceRevised {
        version: u32,
        priority: Priority,
        /// Sealed under the author's key.
        body: Sealed,
    },
    /// Version 1. Another botanist's verdict on the version then current (`advice_version`).
    AdviceReviewed {
        botanist_id: Uuid,
        verdict: Verdict,
        advice_version: u32,
        /// Sealed under the reviewing botanist's key.
        comment: Option<Sealed>,
    },
    /// Version 1. Deleted by its author.
    AdviceWithdrawn { by: Uuid },
    /// Version 1. Hidden by a moderator (ADMIN): gone for users, kept for auditors.
    AdviceHidden { by: Uuid, reason: String },
}

impl DomainEvent for AdviceEvent {
    fn event_type(&self) -> String {
        match self {
            AdviceEvent::AdviceGiven { .. } => "AdviceGiven",
            AdviceEvent::AdviceRevised { .. } => "AdviceRevised",
            AdviceEvent::AdviceReviewed { .. } => "AdviceReviewed",
            AdviceEvent::AdviceWithdrawn { .. } => "AdviceWithdrawn",
            AdviceEvent::AdviceHidden { .. } => "AdviceHidden",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
