//! The projector runner: a catch-up subscription on the event log.
//!
//! Each projector reads events after its checkpoint in `(transaction_id, global_position)` order,
//! only from transactions older than the oldest one still running
//! (`transaction_id < pg_snapshot_xmin(pg_current_snapshot())`), so an event whose transaction
//! commits late is waited for instead of skipped. The batch and the new checkpoint commit in one
//! transaction, under a row lock on the checkpoint, so several instances can run the same
//! projector and each event still takes effect exactly once.
//!
//! Projectors wake on `LISTEN arosaje_events`, on local appends, and poll as a fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::Projection;
use crate::events::{Position, StoredEvent};

/// How projectors run.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub batch_size: i64,
    pub poll_interval: Duration,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
        }
    }
}

struct Projector {
    projection: Arc<dyn Projection>,
    checkpoint: watch::Sender<Position>,
}

/// All projectors of the process, their checkpoints, and the wake-up signal.
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: ProjectorSettings,
    projectors: Vec<Projector>,
    wake: Arc<Notify>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events read (applied or passed by).
    pub read: usize,
    /// Events after the checkpoint that are committed but held back behind an older transaction
    /// that is still running.
    pub held_back: bool,
    pub checkpoint: Position,
}

impl Projections {
    pub fn new(
        pool: PgPool,
        settings: ProjectorSettings,
        projections: Vec<Arc<dyn Projection>>,
        wake: Arc<Notify>,
    ) -> Self {
        let projectors = projections
            .into_iter()
            .map(|projection| Projector {
                projection,
                checkpoint: watch::channel(Position::START).0,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                projectors,
                wake,
            }),
        }
    }

    /// Names and versions of the registered projections.
    pub fn names(&self) -> Vec<(&'static str, i32)> {
        self.inner
            .projectors
            .iter()
            .map(|p| (p.projection.name(), p.projection.version()))
            .collect()
    }

    /// Creates missing checkpoint rows and loads the current ones.
    pub async fn init(&self) -> sqlx::Result<()> {
        for projector in &self.inner.projectors {
            sqlx::query(
                "INSERT INTO projection_checkpoints (name, version) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(projector.projection.name())
            .bind(projector.projection.version())
            .execute(&self.inner.pool)
            .await?;
            let position = load_checkpoint(&self.inner.pool, projector.projection.name()).await?;
            projector.checkpoint.send_replace(position);
        }
        Ok(())
    }

    /// Starts one task per projector plus the LISTEN task. Dropping or aborting the handles
    /// stops them; an interrupted batch rolls back.
    pub fn spawn(&self) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for index in 0..self.inner.projectors.len() {
            let this = self.clone();
            handles.push(tokio::spawn(async move { this.run(index).await }));
        }
        let this = self.clone();
        handles.push(tokio::spawn(async move { this.listen().await }));
        handles
    }

    /// Wakes every local projector.
    pub fn wake(&self) {
        self.inner.wake.notify_waiters();
    }

    /// The last checkpoint this process saw for a projection.
    pub fn checkpoint(&self, name: &str) -> Option<Position> {
        self.find(name).map(|p| *p.checkpoint.borrow())
    }

    /// Waits until every projection that reads `aggregate_type` has passed `position`.
    /// Returns false on time-out.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        position: Position,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for projector in &self.inner.projectors {
            if !projector
                .projection
                .aggregate_types()
                .contains(&aggregate_type)
            {
                continue;
            }
            let mut rx = projector.checkpoint.subscribe();
            let reached = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= position)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// Runs batches of one projection until it is caught up (for the CLI and tests).
    pub async fn catch_up(&self, name: &str) -> anyhow::Result<Position> {
        let index = self
            .index_of(name)
            .ok_or_else(|| anyhow::anyhow!("no projection named {name}"))?;
        loop {
            let outcome = self.run_batch(index).await?;
            if outcome.read == 0 && !outcome.held_back {
                return Ok(outcome.checkpoint);
            }
            if outcome.read == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn find(&self, name: &str) -> Option<&Projector> {
        self.inner
            .projectors
            .iter()
            .find(|p| p.projection.name() == name)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.inner
            .projectors
            .iter()
            .position(|p| p.projection.name() == name)
    }

    async fn run(&self, index: usize) {
        let name = self.inner.projectors[index].projection.name();
        let poll = self.inner.settings.poll_interval;
        let mut failures: u32 = 0;
        // Short pauses while a newer event waits behind an older open transaction.
        let mut held_back_pause = Duration::from_millis(1);
        loop {
            // Register interest before reading, so a wake-up during the batch is not lost.
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            match self.run_batch(index).await {
                Ok(outcome) => {
                    failures = 0;
                    if outcome.read as i64 >= self.inner.settings.batch_size {
                        continue;
                    }
                    if outcome.read > 0 {
                        // Our commit may have released events other projectors were held behind.
                        self.wake();
                    }
                    if outcome.held_back {
                        tokio::time::sleep(held_back_pause).await;
                        held_back_pause = (held_back_pause * 2).min(poll);
                        continue;
                    }
                    held_back_pause = Duration::from_millis(1);
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    metrics::counter!("projection_errors_total", "projection" => name).increment(1);
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(2u32.saturating_pow(failures.min(9)))
                        .min(Duration::from_secs(30));
                    tracing::error!(projection = name, error = %format!("{err:#}"), ?backoff, "projection batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Reads and applies one batch in one transaction with the checkpoint update.
    pub async fn run_batch(&self, index: usize) -> anyhow::Result<BatchOutcome> {
        let projector = &self.inner.projectors[index];
        let projection = &projector.projection;
        let mut tx = self.inner.pool.begin().await?;
        // Taken before the checkpoint lock gives this transaction an id of its own: every
        // transaction below this bound has finished, so its events are final.
        let horizon: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&mut *tx)
                .await?;
        let row: (String, i64) = sqlx::query_as(
            "SELECT last_transaction_id::text, last_position FROM projection_checkpoints \
             WHERE name = $1 FOR UPDATE",
        )
        .bind(projection.name())
        .fetch_one(&mut *tx)
        .await?;
        let checkpoint = parse_position(&row.0, row.1)?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT transaction_id::text AS transaction_id, global_position, aggregate_type, \
                    aggregate_id, sequence, event_type, event_version, payload, metadata, timestamp \
               FROM events \
              WHERE (transaction_id, global_position) > ($1::xid8, $2) \
                AND transaction_id < $3::xid8 \
              ORDER BY transaction_id, global_position \
              LIMIT $4",
        )
        .bind(&row.0)
        .bind(row.1)
        .bind(&horizon)
        .bind(self.inner.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;

        let events = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // A short batch may stop short of committed events that wait behind an older transaction:
        // say so, and the loop looks again soon instead of sleeping a whole poll interval.
        let held_back = (events.len() as i64) < self.inner.settings.batch_size
            && sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE transaction_id >= $1::xid8)",
            )
            .bind(&horizon)
            .fetch_one(&mut *tx)
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            tx.commit().await?;
            projector.checkpoint.send_replace(checkpoint);
            return Ok(BatchOutcome {
                read: 0,
                held_back,
                checkpoint,
            });
        };

        let relevant: Vec<StoredEvent> = events
            .iter()
            .filter(|e| {
                projection
                    .aggregate_types()
                    .contains(&e.aggregate_type.as_str())
            })
            .cloned()
            .collect();
        if !relevant.is_empty() {
            projection.apply(&mut tx, &relevant).await?;
        }
        sqlx::query(
            "UPDATE projection_checkpoints \
                SET last_transaction_id = $2::xid8, last_position = $3, updated_at = now() \
              WHERE name = $1",
        )
        .bind(projection.name())
        .bind(last.transaction_id.to_string())
        .bind(last.global_position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        projector.checkpoint.send_replace(last);

        let now = Utc::now();
        let name = projection.name();
        for event in &relevant {
            let lag = (now - event.timestamp)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            metrics::histogram!("projection_lag_seconds", "projection" => name).record(lag);
        }
        metrics::gauge!("projection_position", "projection" => name)
            .set(last.global_position as f64);
        Ok(BatchOutcome {
            read: events.len(),
            held_back,
            checkpoint: last,
        })
    }

    async fn listen(&self) {
        loop {
            match PgListener::connect_with(&self.inner.pool).await {
                Ok(mut listener) => {
                    if let Err(err) = listener.listen("arosaje_events").await {
                        tracing::warn!(error = %err, "LISTEN failed; projectors rely on polling");
                    } else {
                        // Anything appended while we were not listening.
                        self.wake();
                        loop {
                            match listener.recv().await {
                                Ok(_) => self.wake(),
                                Err(err) => {
                                    tracing::warn!(error = %err, "notification listener lost; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot open notification listener"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Reads a projection's checkpoint from the database.
pub async fn load_checkpoint(pool: &PgPool, name: &str) -> sqlx::Result<Position> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT last_transaction_id::text, last_position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .and_then(|(tx, pos)| parse_position(&tx, pos).ok())
        .unwrap_or(Position::START))
}

fn parse_position(transaction_id: &str, global_position: i64) -> anyhow::Result<Position> {
    Ok(Position {
        transaction_id: transaction_id.parse()?,
        global_position,
    })
}

#[derive(sqlx::FromRow)]
struct EventRow {
    transaction_id: String,
    global_position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    timestamp: DateTime<Utc>,
}

impl EventRow {
    fn into_event(self) -> anyhow::Result<StoredEvent> {
        Ok(StoredEvent {
            position: parse_position(&self.transaction_id, self.global_position)?,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: self.metadata,
            timestamp: self.timestamp,
        })
    }
}

/// Checkpoints of every projection, by name (for `projections status` and `/ready`).
pub async fn all_checkpoints(pool: &PgPool) -> sqlx::Result<HashMap<String, Position>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT name, last_transaction_id::text, last_position FROM projection_checkpoints",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, tx, pos)| Some((name, parse_position(&tx, pos).ok()?)))
        .collect())
}
