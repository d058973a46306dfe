//! Versioned events: one upcasting path for aggregates and projectors.
//!
//! A stored event keeps the shape it was written with (`event_version`). When an event's shape
//! changes, its enum gets the new shape under a new version and an [`Upcaster`] that turns the old
//! payload into the new one. Aggregates load through cqrs-es with the same upcasters
//! ([`upcasters`]), and projectors, audit and export decode with [`decode`], so every reader sees
//! the current shape.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::Aggregate;
use serde_json::Value;

/// Turns a stored payload of `event_type` at `from` into its shape at `to`.
pub struct Upcaster {
    pub event_type: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub upcast: fn(Value) -> Value,
}

/// An aggregate whose events may be stored in older shapes.
pub trait Versioned: Aggregate {
    /// The upcasters of its events, oldest version first; a chain v1 -> v2 -> v3 runs in order.
    const UPCASTERS: &'static [Upcaster] = &[];
}

struct Shared(&'static Upcaster);

impl EventUpcaster for Shared {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.0.event_type && event_version == self.0.from
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        event.payload = (self.0.upcast)(event.payload);
        event.event_version = self.0.to.to_string();
        event
    }
}

/// The upcasters of `A` in the form cqrs-es's event store takes.
pub fn upcasters<A: Versioned>() -> Vec<Box<dyn EventUpcaster>> {
    A::UPCASTERS
        .iter()
        .map(|u| Box::new(Shared(u)) as Box<dyn EventUpcaster>)
        .collect()
}

/// Decodes a stored payload of `A`, upcasting it first if it was written in an older shape.
pub fn decode<A: Versioned>(
    event_type: &str,
    event_version: &str,
    payload: &Value,
) -> Result<A::Event, serde_json::Error> {
    let mut version = event_version;
    let mut payload = std::borrow::Cow::Borrowed(payload);
    for upcaster in A::UPCASTERS {
        if upcaster.event_type == event_type && upcaster.from == version {
            payload = std::borrow::Cow::Owned((upcaster.upcast)(payload.into_owned()));
            version = upcaster.to;
        }
    }
    A::Event::deserialize(payload.as_ref())
}

use serde::Deserialize as _;
