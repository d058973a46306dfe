//! Event types per aggregate, event metadata, the event store (append + global order) and the
//! encryption of personal data inside events.

pub mod crypto;
pub mod group_commit;
pub mod metadata;
pub mod plant;
pub mod store;
pub mod user;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

pub use metadata::Metadata;

/// A point in the global order of the log: the writing transaction's id, then the row's identity.
/// Projectors read and checkpoint in this order; comparing pairs never skips an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Position {
    pub transaction_id: u64,
    pub global_position: i64,
}

impl Position {
    pub const START: Position = Position {
        transaction_id: 0,
        global_position: 0,
    };
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
    /// Decodes the payload into an aggregate's event enum.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(self.payload.clone())
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
