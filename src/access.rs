//! Access auditing (DESIGN.md §6): exports, admin views of a user and auditor queries are
//! recorded as `AccessRecorded` events (aggregate `Access`, one stream per access): who looked
//! (the event's actor), when (its time), at whose data, why (an auditor's `reason`) and with
//! which query. The details are sealed under the key of the month (`access_keys`).
//!
//! Retention ([`expire`], run by the hourly retention job of `messaging`): after
//! [`RETENTION_MONTHS`], a month's key is deleted, so its records in the log read `"[erased]"`
//! forever, and the month's partition of the read model `monitoring.access_log` is dropped.
//!
//! Recording happens before the data is served and fails closed: an access that cannot be
//! recorded is not served.

use chrono::{Datelike, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::commands::access::{Access, AccessCommand};
use crate::events::store::{CommandError, Committed};
use crate::events::Metadata;
use crate::App;

/// How long access records stay readable.
pub const RETENTION_MONTHS: u32 = 12;

/// The kinds of access recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// A person exported their own data.
    Export,
    /// An admin exported a person's data on their behalf.
    AdminExport,
    /// An admin listed or searched accounts.
    AdminUserSearch,
    /// An auditor (or admin) queried the event log.
    AuditEvents,
    /// An auditor (or admin) read one aggregate's history.
    AuditAggregate,
    /// An admin read a sitting's exact place and instructions (with a reason).
    SittingHome,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Export => "export",
            AccessKind::AdminExport => "admin_export",
            AccessKind::AdminUserSearch => "admin_user_search",
            AccessKind::AuditEvents => "audit_events",
            AccessKind::AuditAggregate => "audit_aggregate",
            AccessKind::SittingHome => "sitting_home",
        }
    }
}

/// What an access record says besides who and when (sealed in the event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessDetails {
    pub kind: AccessKind,
    /// Whose data, when it is one person's.
    pub subject_id: Option<Uuid>,
    /// Why (auditors give a `reason`).
    pub reason: Option<String>,
    /// The query's parameters.
    pub query: Value,
}

/// A search term that may be personal data (an e-mail address, a name), as an access record
/// keeps it: sealed under the key of each person the search found (`{"sealed_for": {id:
/// sealed}}`), so it reads as long as one of them is not erased and never rests in clear, in
/// the log or in `monitoring.access_log`. A search that found nobody names no one: its term is
/// not kept (`{"sealed_for": {}}`). Auditors read it opened (`api::audit`).
pub async fn sealed_term(
    app: &App,
    term: &str,
    found: &[Uuid],
) -> Result<Value, crate::events::crypto::CryptoError> {
    let ciphers = app.keys.ciphers(found).await?;
    let sealed: serde_json::Map<String, Value> = found
        .iter()
        .filter_map(|id| {
            ciphers.get(id).map(|cipher| {
                (
                    id.to_string(),
                    Value::String(cipher.seal(term).as_str().into()),
                )
            })
        })
        .collect();
    Ok(serde_json::json!({ SEALED_FOR: sealed }))
}

/// The key of a [`sealed_term`]'s object.
pub const SEALED_FOR: &str = "sealed_for";

/// The first day of the month of `day`.
pub fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// `YYYY-MM`.
pub fn month_label(month: NaiveDate) -> String {
    format!("{:04}-{:02}", month.year(), month.month())
}

/// The month a label names.
pub fn parse_month(label: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").ok()
}

/// Records one access, on behalf of the actor in `metadata`.
pub async fn record(
    app: &App,
    metadata: &Metadata,
    details: &AccessDetails,
) -> anyhow::Result<Committed> {
    record_in(app, metadata, details, month_of(Utc::now().date_naive())).await
}

/// Records one access under the key of `month` (its first day): [`record`] with the current
/// month; another month only where a test needs an old record.
pub async fn record_in(
    app: &App,
    metadata: &Metadata,
    details: &AccessDetails,
    month: NaiveDate,
) -> anyhow::Result<Committed> {
    let cipher = app.month_keys.current(month).await?;
    let details = cipher.seal(&serde_json::to_string(details)?);
    let id = Uuid::now_v7();
    let committed = app
        .store
        .execute_new::<Access>(
            &id.to_string(),
            AccessCommand::Record {
                month: month_label(month),
                details,
            },
            &(),
            metadata,
        )
        .await
        .map_err(|err| match err {
            // Keep the cause (a lost connection is a 503 at the edge, not a 500).
            CommandError::Internal(err) => err.context("recording an access"),
            other => anyhow::anyhow!("recording an access: {other}"),
        })?;
    metrics::counter!("access_records_total").increment(1);
    Ok(committed)
}

/// Retention: deletes the keys of months older than [`RETENTION_MONTHS`] and drops their
/// partitions of `monitoring.access_log`. Returns how many months it expired.
pub async fn expire(app: &App, today: NaiveDate) -> anyhow::Result<usize> {
    let cutoff = month_of(today)
        .checked_sub_months(Months::new(RETENTION_MONTHS))
        .unwrap_or(NaiveDate::MIN);
    let mut tx = crate::infra::db::begin(&app.pool).await?;
    let keys: Vec<NaiveDate> =
        sqlx::query_scalar("DELETE FROM access_keys WHERE month < $1 RETURNING month")
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
    // Partitions are named access_log_YYYY_MM (projections::access).
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i \
           JOIN pg_class c ON c.oid = i.inhrelid \
           JOIN pg_class p ON p.oid = i.inhparent \
           JOIN pg_namespace n ON n.oid = p.relnamespace \
          WHERE n.nspname = 'monitoring' AND p.relname = 'access_log'",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut dropped = 0;
    for name in partitions {
        let Some(month) = name
            .strip_prefix("access_log_")
            .and_then(|ym| parse_month(&ym.replace('_', "-")))
        else {
            continue;
        };
        if month < cutoff {
            sqlx::query(&format!(
                "DROP TABLE monitoring.{}",
                crate::projections::quote_ident(&name)
            ))
            .execute(&mut *tx)
            .await?;
            dropped += 1;
        }
    }
    tx.commit().await?;
    if !keys.is_empty() || dropped > 0 {
        tracing::info!(
            keys = keys.len(),
            partitions = dropped,
            "access records past retention expired"
        );
    }
    Ok(keys.len().max(dropped))
}
