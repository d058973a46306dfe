//! Events of the `Plant` aggregate. Plant data describes plants, not people: stored in clear;
//! where a plant's photos are stored is sealed (photos show someone's home).

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto::Sealed;

/// Care instructions of a plant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Care {
    pub watering_interval_days: Option<i32>,
    pub light: Option<String>,
    pub notes: Option<String>,
}

/// What an update changes; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlantChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::double_option"
    )]
    pub species: Option<Option<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::double_option"
    )]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub care: Option<Care>,
}

impl PlantChanges {
    pub fn is_empty(&self) -> bool {
        self == &PlantChanges::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantEvent {
    /// Version 1.
    PlantCreated {
        owner_id: Uuid,
        name: String,
        species: Option<String>,
        description: Option<String>,
        care: Care,
    },
    /// Version 1.
    PlantUpdated { changes: PlantChanges },
    /// Version 1.
    PlantDeleted,
    /// Version 1. A photo of the plant, stored re-encoded (no metadata) with a thumbnail. Where
    /// it is stored is sealed under the owner's key (photos show someone's home).
    PhotoAdded {
        photo_id: Uuid,
        /// Object key of the photo, sealed.
        object_key: Sealed,
        /// Object key of the thumbnail, sealed.
        thumbnail_key: Sealed,
        width: u32,
        height: u32,
        bytes: u64,
        uploaded_by: Uuid,
    },
}

impl DomainEvent for PlantEvent {
    fn event_type(&self) -> String {
        match self {
            PlantEvent::PlantCreated { .. } => "PlantCreated",
            PlantEvent::PlantUpdated { .. } => "PlantUpdated",
            PlantEvent::PlantDeleted => "PlantDeleted",
            PlantEvent::PhotoAdded { .. } => "PhotoAdded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
