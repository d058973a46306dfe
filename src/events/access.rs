//! Events of access auditing (`Access` aggregate): each look at someone's data by an export, an
//! admin or an auditor is one stream of one event.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::crypto::Sealed;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccessEvent {
    /// Version 1. `details` (an [`crate::access::AccessDetails`] as JSON: what kind of access,
    /// whose data, why, which query) is sealed under the key of `month` (`YYYY-MM`, UTC), which
    /// retention deletes after a year. Who looked is the event's actor, in its metadata.
    AccessRecorded { month: String, details: Sealed },
}

impl DomainEvent for AccessEvent {
    fn event_type(&self) -> String {
        match self {
            AccessEvent::AccessRecorded { .. } => "AccessRecorded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
