//! Integration tests: a fresh migrated PostgreSQL database per test (`#[sqlx::test]`), the real
//! Redis, HTTP through the real router.

mod access;
mod advice;
mod audit;
mod auth;
mod constraints;
mod contract;
mod dashboards;
mod edge;
mod event_order;
mod expiry;
mod export;
mod faults;
mod fuzzing;
mod gdpr;
mod hardening;
mod helpers;
mod idempotency;
mod influx;
mod limits;
mod live;
mod logs;
mod mail;
mod messaging;
mod mfa;
mod notifications;
mod ops;
mod photos;
mod plants;
mod rebuild;
mod secrets;
mod seed;
mod sittings;
mod smtp;
mod upcasting;
mod web;
