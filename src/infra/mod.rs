//! Adapters to infrastructure other than the event store.

pub mod attempts;
pub mod cache;
pub mod db;
pub mod hub;
pub mod images;
pub mod influx;
pub mod mail;
pub mod rate_limit;
pub mod redis;
pub mod sessions;
pub mod storage;
pub mod tokens;
