//! Group commit: concurrent single-event appends share one `INSERT` and one commit.
//!
//! Each command still gets its own optimistic-concurrency verdict: the statement is
//! `INSERT … ON CONFLICT DO NOTHING RETURNING`, and a command whose row is not returned lost the
//! race for its sequence number (a `Conflict`, retried by the caller like any other). Only
//! single-event appends are grouped, so a command is never half written; commands with several
//! events append on their own.
//!
//! An append made under an `Idempotency-Key` claim is inserted only while the claim is still its
//! request's, and marks the claim's row, in the same statement (see [`super::claim`]); one whose
//! claim is gone gets [`AppendFailure::ClaimLost`]. A statement whose connection fails after it
//! was sent may have committed: its appends get [`AppendFailure::Unknown`], never a plain
//! failure. A statement the database refuses for a passing reason (a timeout, a read-only
//! standby) wrote nothing ([`AppendFailure::Busy`], [`AppendFailure::NotWritten`]); one it refuses
//! for its content is split, and each event goes again alone, so one request's bad event never
//! fails another request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::claim::Mark;
use super::store::{is_connection_lost, passing_refusal, PassingRefusal};
use super::Position;
use crate::infra::db::Held;

/// The verdict on one append: its position and timestamp, or `None` when the sequence was
/// already taken.
pub type Verdict = Result<Option<(Position, DateTime<Utc>)>, AppendFailure>;

/// Why an append has no verdict.
#[derive(Debug, Clone)]
pub enum AppendFailure {
    /// Nothing was written: no connection, the appender stopped, or the database cannot take
    /// writes now (read-only, out of resources).
    NotWritten(String),
    /// The database refused the statement for a passing reason of load (a timeout, a cancel,
    /// a deadlock): nothing was written.
    Busy(String),
    /// The statement was sent and its connection failed: it may have committed.
    Unknown(String),
    /// The database refused this event (a statement of its own: a group it failed was split,
    /// so no other append shares its refusal).
    Refused(Arc<sqlx::Error>),
    /// The event's `Idempotency-Key` claim is no longer its request's (freed or taken over): it
    /// was not inserted.
    ClaimLost,
}

/// One event to append at `sequence` of its aggregate's stream.
pub struct NewEvent {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    /// The `Idempotency-Key` claim to mark with this event's position.
    pub claim: Option<Mark>,
}

struct Queued {
    event: NewEvent,
    reply: oneshot::Sender<Verdict>,
}

/// Hands appends to a few writer tasks; each writes whatever has queued up as one statement.
#[derive(Clone)]
pub struct GroupAppender {
    queue: mpsc::Sender<Queued>,
}

impl GroupAppender {
    /// `writers` statements may be in flight at once, each carrying at most `max_group` events.
    /// The writers stop when the last `GroupAppender` clone is dropped.
    pub fn start(pool: PgPool, writers: usize, max_group: usize) -> Self {
        let (queue, receiver) = mpsc::channel(max_group * writers * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_groups(
                pool.clone(),
                receiver.clone(),
                max_group.max(1),
            ));
        }
        Self { queue }
    }

    pub async fn append(&self, event: NewEvent) -> Verdict {
        let (reply, verdict) = oneshot::channel();
        self.queue
            .send(Queued { event, reply })
            .await
            .map_err(|_| AppendFailure::NotWritten("the group appender has stopped".into()))?;
        verdict
            .await
            .map_err(|_| AppendFailure::Unknown("the group appender dropped an append".into()))?
    }
}

async fn write_groups(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Queued>>>,
    max_group: usize,
) {
    // Kept from one group to the next (see `Held`).
    let mut held = Held::default();
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(request) => group.push(request),
                None => return,
            }
            while group.len() < max_group {
                match receiver.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
        }
        write_group(&pool, &mut held, group).await;
    }
}

type Key = (&'static str, String, i64);

const INSERT: &str = "\
    INSERT INTO events \
        (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                         $6::jsonb[], $7::jsonb[]) \
    ON CONFLICT DO NOTHING \
    RETURNING aggregate_type, aggregate_id, sequence, global_position, timestamp";

/// [`INSERT`] where events that carry a claim are inserted only while their claim is still their
/// request's (the row, unanswered, locked until the commit) and mark it, in the same statement
/// (see [`super::claim`]). Rows with `lost` set are claimed events whose claim is gone: not
/// inserted.
const INSERT_AND_MARK: &str = "\
    WITH appends AS MATERIALIZED ( \
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                             $6::jsonb[], $7::jsonb[], $8::uuid[], $9::text[], \
                             $10::timestamptz[]) \
            AS a(aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                 metadata, user_id, key, claimed_at) \
    ), owned AS MATERIALIZED ( \
        SELECT k.user_id, k.key, k.created_at FROM idempotency_keys k \
         WHERE (k.user_id, k.key, k.created_at) IN \
               (SELECT user_id, key, claimed_at FROM appends) \
           AND k.status IS NULL \
           FOR UPDATE OF k \
    ), inserted AS ( \
        INSERT INTO events \
            (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
        SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
               metadata \
          FROM appends a \
         WHERE a.user_id IS NULL \
            OR (a.user_id, a.key, a.claimed_at) IN (SELECT * FROM owned) \
        ON CONFLICT DO NOTHING \
        RETURNING aggregate_type, aggregate_id, sequence, global_position, timestamp \
    ), marked AS ( \
        UPDATE idempotency_keys k SET committed_position = i.global_position \
          FROM inserted i \
          JOIN appends a USING (aggregate_type, aggregate_id, sequence) \
         WHERE (k.user_id, k.key, k.created_at) = (a.user_id, a.key, a.claimed_at) \
    ) \
    SELECT aggregate_type, aggregate_id, sequence, global_position, timestamp, false AS lost \
      FROM inserted \
    UNION ALL \
    SELECT aggregate_type, aggregate_id, sequence, NULL, NULL, true \
      FROM appends a \
     WHERE a.user_id IS NOT NULL \
       AND (a.user_id, a.key, a.claimed_at) NOT IN (SELECT * FROM owned)";

/// A returned row: aggregate type, aggregate id, sequence, global position and timestamp (none
/// when the event's claim was lost).
type InsertedRow = (String, String, i64, Option<Inserted>);
type Inserted = (Position, DateTime<Utc>);

fn inserted_row(row: &PgRow, marking: bool) -> Result<InsertedRow, sqlx::Error> {
    let lost = marking && row.try_get::<bool, _>(5)?;
    let inserted = if lost {
        None
    } else {
        Some((Position::new(row.try_get(3)?), row.try_get(4)?))
    };
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, inserted))
}

async fn write_group(pool: &PgPool, held: &mut Held, group: Vec<Queued>) {
    // Two appends of the same version in one group: the first one competes, the others lost.
    let mut seen: HashSet<Key> = HashSet::new();
    let mut writing = Vec::with_capacity(group.len());
    for request in group {
        let event = &request.event;
        let key = (
            event.aggregate_type,
            event.aggregate_id.clone(),
            event.sequence,
        );
        if seen.insert(key) {
            writing.push(request);
        } else {
            let _ = request.reply.send(Ok(None));
        }
    }
    let conn = match held.get(pool).await {
        Ok(conn) => conn,
        Err(err) => {
            let failure = AppendFailure::NotWritten(format!("appending a group of events: {err}"));
            for request in writing {
                let _ = request.reply.send(Err(failure.clone()));
            }
            return;
        }
    };
    metrics::histogram!("event_append_group_size").record(writing.len() as f64);
    match insert(conn, &writing).await {
        Ok(rows) => deliver(writing, rows),
        // A verdict on the whole statement, or on the one event it carried.
        Err(err) if writing.len() == 1 || failure_for_all(&err).is_some() => {
            held.discard();
            let failure = refusal(err);
            for request in writing {
                let _ = request.reply.send(Err(failure.clone()));
            }
        }
        Err(err) => {
            // The database refused one event (bad data, a constraint), which fails the whole
            // statement: each event goes again alone, so only its own request hears of it.
            tracing::warn!(
                error = %err,
                events = writing.len(),
                "a group append was refused; appending its events one by one"
            );
            for request in writing {
                match insert(conn, std::slice::from_ref(&request)).await {
                    Ok(rows) => deliver(vec![request], rows),
                    Err(err) => {
                        let _ = request.reply.send(Err(refusal(err)));
                    }
                }
            }
            held.discard();
        }
    }
}

/// The failure a statement's error means to the appends it carried: [`failure_for_all`], or else
/// the database's refusal of its content.
fn refusal(err: sqlx::Error) -> AppendFailure {
    failure_for_all(&err).unwrap_or_else(|| AppendFailure::Refused(Arc::new(err)))
}

/// What a failed statement means to every append it carried, when it says nothing about any one
/// of them: unknown when its connection was lost (it may have committed), busy or not written
/// when the database refused it for a passing reason. `None` for a refusal of the statement's
/// content.
fn failure_for_all(err: &sqlx::Error) -> Option<AppendFailure> {
    let message = format!("appending a group of events: {err}");
    if is_connection_lost(err) {
        return Some(AppendFailure::Unknown(message));
    }
    match passing_refusal(err)? {
        PassingRefusal::Busy => Some(AppendFailure::Busy(message)),
        PassingRefusal::Unavailable => Some(AppendFailure::NotWritten(message)),
    }
}

/// One statement appending `writing` (marking the claims of those that carry one).
async fn insert(
    conn: &mut sqlx::PgConnection,
    writing: &[Queued],
) -> Result<Vec<InsertedRow>, sqlx::Error> {
    let mut types = Vec::with_capacity(writing.len());
    let mut ids = Vec::with_capacity(writing.len());
    let mut sequences = Vec::with_capacity(writing.len());
    let mut event_types = Vec::with_capacity(writing.len());
    let mut versions = Vec::with_capacity(writing.len());
    let mut payloads = Vec::with_capacity(writing.len());
    let mut metadata = Vec::with_capacity(writing.len());
    let marking = writing.iter().any(|q| q.event.claim.is_some());
    let mut claim_users = Vec::new();
    let mut claim_keys = Vec::new();
    let mut claimed_at = Vec::new();
    for Queued { event, .. } in writing {
        if marking {
            claim_users.push(event.claim.as_ref().map(|c| c.user_id));
            claim_keys.push(event.claim.as_ref().map(|c| c.key.as_str()));
            claimed_at.push(event.claim.as_ref().map(|c| c.claimed_at));
        }
        types.push(event.aggregate_type);
        ids.push(event.aggregate_id.as_str());
        sequences.push(event.sequence);
        event_types.push(event.event_type.as_str());
        versions.push(event.event_version.as_str());
        payloads.push(&event.payload);
        metadata.push(&event.metadata);
    }
    let sql = if marking { INSERT_AND_MARK } else { INSERT };
    let mut query = sqlx::query(sql)
        .bind(&types)
        .bind(&ids)
        .bind(&sequences)
        .bind(&event_types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata);
    if marking {
        query = query.bind(&claim_users).bind(&claim_keys).bind(&claimed_at);
    }
    query
        .fetch_all(&mut *conn)
        .await
        .and_then(|rows| rows.iter().map(|row| inserted_row(row, marking)).collect())
}

/// Each request's verdict from the rows its statement returned.
fn deliver(writing: Vec<Queued>, rows: Vec<InsertedRow>) {
    let mut outcomes: HashMap<(String, String, i64), Option<Inserted>> = HashMap::new();
    for (aggregate_type, aggregate_id, sequence, inserted) in rows {
        outcomes.insert((aggregate_type, aggregate_id, sequence), inserted);
    }
    for request in writing {
        let event = request.event;
        let key = (
            event.aggregate_type.to_string(),
            event.aggregate_id,
            event.sequence,
        );
        let verdict = match outcomes.get(&key) {
            Some(Some(inserted)) => Ok(Some(*inserted)),
            // Not inserted because its claim is gone.
            Some(None) => Err(AppendFailure::ClaimLost),
            // Not inserted: its sequence was taken.
            None => Ok(None),
        };
        let _ = request.reply.send(verdict);
    }
}
