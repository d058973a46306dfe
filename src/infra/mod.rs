//! Adapters to infrastructure other than the event store.

pub mod sessions;
