//! Event types per aggregate, event metadata, the event store (append + global order) and the
//! encryption of personal data inside events.

pub mod access;
pub mod advice;
pub mod append;
pub mod bookings;
pub mod claim;
pub mod constraints;
pub mod conversation;
pub mod crypto;
pub mod group_commit;
pub mod metadata;
pub mod plant;
pub mod sitting;
pub mod store;
pub mod upcast;
pub mod user;
pub mod wakeups;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

pub use metadata::Metadata;

/// A point in the global order of the log. Positions are handed out in commit order (one lock
/// per append, see the `commit_order` migration), so a reader that has seen a position has seen
/// every committed event before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    pub global_position: i64,
}

impl Position {
    pub const START: Position = Position { global_position: 0 };

    pub fn new(global_position: i64) -> Self {
        Position { global_position }
    }
}

/// An event as read back from the store by projectors, audit queries and exports.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub timestamp: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes the payload into aggregate `A`'s event enum, through `A`'s upcasters (the path
    /// aggregates load through too).
    pub fn decode<A: upcast::Versioned>(&self) -> Result<A::Event, serde_json::Error> {
        upcast::decode::<A>(&self.event_type, &self.event_version, &self.payload)
    }
}

/// Serde helper for "absent / null / value" fields: absent stays `None` (via `#[serde(default)]`),
/// `null` becomes `Some(None)` (clear), a value becomes `Some(Some(v))`.
pub fn double_option<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}
