//! Tamper evidence of the event log (see the `event_hashes` migration).
//!
//! - Each event's `hash` chains it to the previous event of its stream; a database trigger
//!   computes it at insert, whoever inserts.
//! - Checkpoints chain every event hash in global order and are signed (HMAC-SHA256) with a key
//!   derived from `EMAIL_PEPPER`, which the database never holds: someone who rewrites events and
//!   their hashes, or deletes the last events of a stream, cannot make a checkpoint agree.
//!   `serve` writes one every [`CHECKPOINT_INTERVAL`]; `arosaje audit checkpoint` writes one now.
//! - [`verify`] walks the log in global order, recomputes every hash from the columns (here, not
//!   with the database's function), checks every link and every checkpoint, and reports the first
//!   event that does not hold.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// How often `serve` signs the log's new events.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
const BATCH: i64 = 10_000;

/// The checkpoint signing key: HMAC-SHA256(EMAIL_PEPPER, label). `EMAIL_PEPPER` must never
/// change anyway (the e-mail index depends on it), so neither does this key.
pub fn checkpoint_key(config: &crate::config::Config) -> Vec<u8> {
    mac_of(
        config.email_pepper().as_bytes(),
        &[b"arosaje audit checkpoints v1"],
    )
}

fn mac_of(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn checkpoint_mac(key: &[u8], position: i64, events: i64, chain: &[u8]) -> Vec<u8> {
    mac_of(
        key,
        &[&position.to_be_bytes(), &events.to_be_bytes(), chain],
    )
}

fn chain_step(chain: &[u8], hash: &[u8]) -> Vec<u8> {
    let mut digest = Sha256::new();
    digest.update(chain);
    digest.update(hash);
    digest.finalize().to_vec()
}

/// Signs every event after the last checkpoint; `None` when there is none. One writer at a time
/// (an advisory lock), so instances running it together write one checkpoint each, in turn.
pub async fn checkpoint(pool: &PgPool, key: &[u8]) -> anyhow::Result<Option<i64>> {
    let mut tx = crate::infra::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('arosaje audit checkpoints'))")
        .execute(&mut *tx)
        .await?;
    let last: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT position, events, chain FROM audit_checkpoints ORDER BY position DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (mut position, mut events, mut chain) = last.unwrap_or((0, 0, Vec::new()));
    let start = position;
    loop {
        let hashes: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT global_position, hash FROM events WHERE global_position > $1 \
              ORDER BY global_position LIMIT $2",
        )
        .bind(position)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some((last, _)) = hashes.last() else {
            break;
        };
        position = *last;
        for (_, hash) in &hashes {
            chain = chain_step(&chain, hash);
            events += 1;
        }
    }
    if position == start {
        return Ok(None);
    }
    let mac = checkpoint_mac(key, position, events, &chain);
    sqlx::query(
        "INSERT INTO audit_checkpoints (position, events, chain, mac) VALUES ($1, $2, $3, $4)",
    )
    .bind(position)
    .bind(events)
    .bind(&chain)
    .bind(&mac)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(position))
}

/// `serve`'s checkpoint job.
pub async fn run_checkpoints(pool: PgPool, key: Vec<u8>) {
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        match checkpoint(&pool, &key).await {
            Ok(Some(position)) => tracing::info!(position, "audit checkpoint written"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "audit checkpoint failed; retried later"),
        }
    }
}

/// The first event (or checkpoint) that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub problem: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} sequence {} at position {}: {}",
            self.aggregate_type, self.aggregate_id, self.sequence, self.position, self.problem
        )
    }
}

/// What a verification found.
#[derive(Debug)]
pub struct Report {
    pub events: u64,
    pub checkpoints: u64,
    pub broken: Option<Broken>,
    pub elapsed: Duration,
}

#[derive(sqlx::FromRow)]
struct Row {
    global_position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    timestamp: DateTime<Utc>,
    hash: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl Row {
    /// What the trigger hashes (see the migration), rebuilt from the columns.
    fn expected_hash(&self) -> Vec<u8> {
        let mut digest = Sha256::new();
        if let Some(previous) = &self.previous {
            digest.update(previous);
        }
        let at = self.timestamp.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let fields = [
            self.aggregate_type.as_str(),
            self.aggregate_id.as_str(),
            &self.sequence.to_string(),
            self.event_type.as_str(),
            self.event_version.as_str(),
            self.payload.as_str(),
            self.metadata.as_str(),
            &at,
        ]
        .join("\u{1f}");
        digest.update(fields.as_bytes());
        digest.finalize().to_vec()
    }

    fn broken(&self, problem: &str) -> Broken {
        Broken {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            position: self.global_position,
            problem: problem.to_string(),
        }
    }
}

/// Walks the whole log; `progress` is told how many events were checked as it goes.
pub async fn verify(
    pool: &PgPool,
    key: &[u8],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let checkpoints: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT position, events, chain, mac FROM audit_checkpoints ORDER BY position",
    )
    .fetch_all(pool)
    .await?;
    let mut pending = checkpoints.iter().peekable();
    let (mut chain, mut count, mut position) = (Vec::new(), 0i64, 0i64);
    let mut verified_checkpoints = 0u64;
    let report = |broken: Option<Broken>, count: i64, checkpoints: u64| Report {
        events: count as u64,
        checkpoints,
        broken,
        elapsed: started.elapsed(),
    };
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT e.global_position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                    e.event_version, e.payload::text AS payload, e.metadata::text AS metadata, \
                    e.timestamp, e.hash, p.hash AS previous \
               FROM events e LEFT JOIN events p \
                 ON p.aggregate_type = e.aggregate_type AND p.aggregate_id = e.aggregate_id \
                AND p.sequence = e.sequence - 1 \
              WHERE e.global_position > $1 ORDER BY e.global_position LIMIT $2",
        )
        .bind(position)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            if row.sequence > 1 && row.previous.is_none() {
                let problem = "the previous event of its stream is missing";
                return Ok(report(
                    Some(row.broken(problem)),
                    count,
                    verified_checkpoints,
                ));
            }
            if row.expected_hash() != row.hash {
                let problem =
                    "its content or its link to the previous event does not match its hash";
                return Ok(report(
                    Some(row.broken(problem)),
                    count,
                    verified_checkpoints,
                ));
            }
            chain = chain_step(&chain, &row.hash);
            count += 1;
            position = row.global_position;
            while let Some((at, events, signed_chain, mac)) = pending.peek() {
                if *at > position {
                    break;
                }
                let holds = *at == position
                    && *events == count
                    && *signed_chain == chain
                    && checkpoint_mac(key, *at, *events, signed_chain) == *mac;
                if !holds {
                    let problem = format!(
                        "the log up to here does not match the checkpoint signed at position {at} \
                         (events rewritten or deleted before it)"
                    );
                    return Ok(report(
                        Some(row.broken(&problem)),
                        count,
                        verified_checkpoints,
                    ));
                }
                verified_checkpoints += 1;
                pending.next();
            }
        }
        progress(count as u64, total.max(count) as u64);
    }
    if let Some((at, ..)) = pending.next() {
        let broken = Broken {
            aggregate_type: String::new(),
            aggregate_id: String::new(),
            sequence: 0,
            position: *at,
            problem: format!(
                "a checkpoint was signed at position {at}, but the log ends at {position}: events \
                 were deleted"
            ),
        };
        return Ok(report(Some(broken), count, verified_checkpoints));
    }
    Ok(report(None, count, verified_checkpoints))
}
