//! Appending events: one statement per command (atomic), or a share of a group commit for
//! single-event commands. Every append takes the commit-order lock (a statement trigger on
//! `events`), so positions become visible in commit order. Under an `Idempotency-Key` claim,
//! the same statement inserts only while the claim is still the request's and marks it with the
//! command's last position (see [`super::claim`]).

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;
use sqlx::PgConnection;

use super::claim;
use super::group_commit::{AppendFailure, GroupAppender, NewEvent};
use super::store::{
    internal, CommandError, Committed, DatabaseBusy, DatabaseUnavailable, OutcomeUnknown,
};
use super::{Metadata, Position};

/// Appends one event through the group appender.
pub(super) async fn append_grouped<A: Aggregate>(
    group: &GroupAppender,
    aggregate_id: &str,
    current_sequence: usize,
    event: &A::Event,
    metadata: &Metadata,
) -> Result<Committed, CommandError<A::Error>> {
    let version = current_sequence as i64 + 1;
    let verdict = group
        .append(NewEvent {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_string(),
            sequence: version,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event).map_err(internal)?,
            metadata: serde_json::to_value(metadata.to_map()).map_err(internal)?,
            claim: claim::mark(),
        })
        .await
        .map_err(|failure| match failure {
            AppendFailure::NotWritten(message) => internal(DatabaseUnavailable(message)),
            AppendFailure::Unknown(message) => internal(OutcomeUnknown(message)),
            AppendFailure::ClaimLost => internal(OutcomeUnknown(CLAIM_LOST.into())),
            AppendFailure::Busy(message) => internal(DatabaseBusy(message)),
            AppendFailure::Refused(err) => match std::sync::Arc::try_unwrap(err) {
                Ok(err) => CommandError::from(err),
                Err(err) => CommandError::Internal(anyhow::anyhow!("appending an event: {err}")),
            },
        })?;
    match verdict {
        Some((position, at)) => {
            metrics::counter!("events_appended_total", "aggregate_type" => A::TYPE).increment(1);
            Ok(Committed {
                version,
                position: Some(position),
                at: Some(at),
            })
        }
        None => Err(CommandError::Conflict),
    }
}

/// Why an append under a claim that is no longer the request's is refused. The request appended
/// nothing, but whoever holds the key now may have: a retry with the key tells.
const CLAIM_LOST: &str = "the Idempotency-Key claim is no longer this request's";

const INSERT: &str = "\
    INSERT INTO events \
        (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
    SELECT $1, $2, seq, etype, ever, payload, $7 \
      FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[]) AS e(seq, etype, ever, payload) \
    RETURNING global_position, timestamp";

/// [`INSERT`] under the claim `($8, $9, $10)`: only while the claim is still this request's
/// (the row, unanswered, locked until the commit), and marking it with the last position, in the
/// same statement. A claim freed or taken over meanwhile makes it insert nothing (see
/// [`super::claim`]).
const INSERT_AND_MARK: &str = "\
    WITH owned AS MATERIALIZED ( \
        SELECT FROM idempotency_keys \
         WHERE user_id = $8 AND key = $9 AND created_at = $10 AND status IS NULL \
           FOR UPDATE \
    ), inserted AS ( \
        INSERT INTO events \
            (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
        SELECT $1, $2, seq, etype, ever, payload, $7 \
          FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[]) \
               AS e(seq, etype, ever, payload) \
         WHERE EXISTS (SELECT FROM owned) \
        RETURNING global_position, timestamp \
    ), marked AS ( \
        UPDATE idempotency_keys SET committed_position = last.position \
          FROM (SELECT max(global_position) AS position FROM inserted) last \
         WHERE user_id = $8 AND key = $9 AND created_at = $10 AND last.position IS NOT NULL \
    ) \
    SELECT global_position, timestamp FROM inserted";

/// Appends `events` after `current_sequence` in one statement (atomic for the command), returning
/// the new version and the position of the last event. A duplicate sequence is a `Conflict`.
pub(super) async fn append<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    current_sequence: usize,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<Committed, CommandError<A::Error>> {
    let metadata = serde_json::to_value(metadata.to_map()).map_err(internal)?;
    let n = events.len();
    let mut sequences = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut payloads: Vec<Value> = Vec::with_capacity(n);
    for (i, event) in events.iter().enumerate() {
        sequences.push((current_sequence + i + 1) as i64);
        types.push(event.event_type());
        versions.push(event.event_version());
        payloads.push(serde_json::to_value(event).map_err(internal)?);
    }
    let mark = claim::mark();
    let sql = if mark.is_some() {
        INSERT_AND_MARK
    } else {
        INSERT
    };
    let mut query = sqlx::query_as(sql)
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(&sequences)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata);
    if let Some(mark) = &mark {
        query = query
            .bind(mark.user_id)
            .bind(&mark.key)
            .bind(mark.claimed_at);
    }
    let rows: Vec<(i64, DateTime<Utc>)> = query.fetch_all(&mut *conn).await?;
    if rows.len() < n {
        // Only under a claim: this attempt no longer holds it and appended nothing.
        return Err(internal(OutcomeUnknown(CLAIM_LOST.into())));
    }
    metrics::counter!("events_appended_total", "aggregate_type" => A::TYPE).increment(n as u64);
    let last = rows.into_iter().max();
    Ok(Committed {
        version: (current_sequence + n) as i64,
        position: last.map(|(position, _)| Position::new(position)),
        at: last.map(|(_, at)| at),
    })
}
