//! Read model `monitoring.access_log` (projection `access`): access records (`crate::access`)
//! opened with their month's key, in one partition per key month, created when a month's first
//! record arrives. Records whose month's key is gone (past retention) are skipped,
//! as retention drops their partition.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{quote_ident, Projection};
use crate::access::{parse_month, AccessDetails};
use crate::commands::access::Access;
use crate::events::access::AccessEvent;
use crate::events::crypto::{Cipher, CryptoError, MonthKeys};
use crate::events::StoredEvent;

pub struct AccessProjection {
    keys: Arc<MonthKeys>,
}

impl AccessProjection {
    pub fn new(keys: Arc<MonthKeys>) -> Self {
        AccessProjection { keys }
    }
}

#[async_trait]
impl Projection for AccessProjection {
    fn name(&self) -> &'static str {
        "access"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Access"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["monitoring.access_log"]
    }

    /// Nobody waits to read their own access record.
    fn read_your_writes(&self) -> bool {
        false
    }

    fn volatile_columns(&self) -> &'static [&'static str] {
        &[]
    }

    /// One `INSERT` per batch; each month's key read and its partition made once per batch.
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let mut months: HashMap<NaiveDate, Option<Cipher>> = HashMap::new();
        let mut rows = Rows::default();
        for event in events {
            let id: Uuid = event.aggregate_id.parse()?;
            let AccessEvent::AccessRecorded { month, details } = event.decode::<Access>()?;
            let month = parse_month(&month)
                .ok_or_else(|| anyhow::anyhow!("access record with a malformed month"))?;
            let cipher = match months.get(&month) {
                Some(cipher) => cipher.clone(),
                None => {
                    let cipher = match self.keys.cipher(month).await {
                        Ok(cipher) => {
                            ensure_partition(conn, month).await?;
                            Some(cipher)
                        }
                        // Past retention: nothing of it is readable, and its partition is gone.
                        Err(CryptoError::KeyMissing(_)) => None,
                        Err(err) => return Err(err.into()),
                    };
                    months.insert(month, cipher.clone());
                    cipher
                }
            };
            let Some(cipher) = cipher else { continue };
            let details: AccessDetails = serde_json::from_str(&cipher.open(&details)?)?;
            let actor: Option<Uuid> = event
                .metadata
                .get("actor_id")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse().ok());
            let role = event
                .metadata
                .get("actor_role")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            rows.ids.push(id);
            rows.months.push(month);
            rows.times.push(event.timestamp);
            rows.actors.push(actor.unwrap_or(Uuid::nil()));
            rows.roles.push(role.to_string());
            rows.kinds.push(details.kind.as_str());
            rows.subjects.push(details.subject_id);
            rows.reasons.push(details.reason);
            rows.queries.push(details.query);
            rows.positions.push(event.position.global_position);
        }
        if rows.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO access_log (id, month, accessed_at, accessor_id, accessor_role, kind, \
                                     subject_id, reason, query, position) \
             SELECT * FROM UNNEST($1::uuid[], $2::date[], $3::timestamptz[], $4::uuid[], \
                                  $5::text[], $6::text[], $7::uuid[], $8::text[], $9::jsonb[], \
                                  $10::int8[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&rows.ids)
        .bind(&rows.months)
        .bind(&rows.times)
        .bind(&rows.actors)
        .bind(&rows.roles)
        .bind(&rows.kinds)
        .bind(&rows.subjects)
        .bind(&rows.reasons)
        .bind(&rows.queries)
        .bind(&rows.positions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Rows {
    ids: Vec<Uuid>,
    months: Vec<NaiveDate>,
    times: Vec<DateTime<Utc>>,
    actors: Vec<Uuid>,
    roles: Vec<String>,
    kinds: Vec<&'static str>,
    subjects: Vec<Option<Uuid>>,
    reasons: Vec<Option<String>>,
    queries: Vec<serde_json::Value>,
    positions: Vec<i64>,
}

/// Creates `access_log_YYYY_MM` for `month` unless it exists, in the schema the `search_path`
/// puts first (the live `monitoring`, or a rebuild's shadow schema).
async fn ensure_partition(conn: &mut PgConnection, month: chrono::NaiveDate) -> anyhow::Result<()> {
    let name = format!("access_log_{:04}_{:02}", month.year(), month.month());
    // In the first schema of the path only: a rebuild's shadow must not take the live
    // partition for its own.
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1))::text",
    )
    .bind(&name)
    .fetch_one(&mut *conn)
    .await?;
    if exists.is_some() {
        return Ok(());
    }
    let next = month
        .checked_add_months(Months::new(1))
        .ok_or_else(|| anyhow::anyhow!("month out of range"))?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF access_log \
         FOR VALUES FROM ('{month}') TO ('{next}')",
        quote_ident(&name)
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
