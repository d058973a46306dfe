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
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Projection;
use crate::events::store::Wakeups;
use crate::events::{Position, StoredEvent};

const HELD_BACK_MIN_PAUSE: Duration = Duration::from_millis(1);
const HELD_BACK_MAX_PAUSE: Duration = Duration::from_millis(20);

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
    wake: Arc<tokio::sync::Notify>,
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
    wakeups: Arc<Wakeups>,
    /// Whether this process runs the projectors (else waits read checkpoints from the database).
    running: std::sync::atomic::AtomicBool,
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
        wakeups: Arc<Wakeups>,
    ) -> Self {
        let projectors = projections
            .into_iter()
            .map(|projection| Projector {
                wake: wakeups.subscribe(projection.aggregate_types()),
                projection,
                checkpoint: watch::channel(Position::START).0,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                projectors,
                wakeups,
                running: std::sync::atomic::AtomicBool::new(false),
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
        self.inner
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
        self.inner.wakeups.wake_all();
    }

    /// The last checkpoint this process saw for a projection.
    pub fn checkpoint(&self, name: &str) -> Option<Position> {
        self.find(name).map(|p| *p.checkpoint.borrow())
    }

    /// Waits until every projection that reads `aggregate_type` has passed `position`.
    /// Returns false on time-out. Without local projectors (an API-only instance) it follows the
    /// checkpoints in the database instead.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        position: Position,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let local = self
            .inner
            .running
            .load(std::sync::atomic::Ordering::Relaxed);
        for projector in &self.inner.projectors {
            let projection = &projector.projection;
            if !projection.read_your_writes()
                || !projection.aggregate_types().contains(&aggregate_type)
            {
                continue;
            }
            let reached = if local {
                let mut rx = projector.checkpoint.subscribe();
                let waited =
                    tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= position)).await;
                matches!(waited, Ok(Ok(_)))
            } else {
                self.poll_checkpoint(projection.name(), position, deadline)
                    .await
            };
            if !reached {
                return false;
            }
        }
        true
    }

    async fn poll_checkpoint(
        &self,
        name: &str,
        position: Position,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            if let Ok(current) = load_checkpoint(&self.inner.pool, name).await {
                if current >= position {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
        let mut held_back_pause = HELD_BACK_MIN_PAUSE;
        loop {
            // Register interest before reading, so a wake-up during the batch is not lost.
            let notified = self.inner.projectors[index].wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            match self.run_batch(index).await {
                Ok(outcome) => {
                    failures = 0;
                    if outcome.read as i64 >= self.inner.settings.batch_size {
                        continue;
                    }
                    // Events held behind an open transaction become readable when it ends: an
                    // append's commit wakes us; anything else (another projector's batch, a
                    // transaction elsewhere) is caught by a short, growing pause.
                    let pause = if outcome.held_back {
                        let pause = held_back_pause;
                        held_back_pause = (held_back_pause * 2).min(HELD_BACK_MAX_PAUSE);
                        pause
                    } else {
                        held_back_pause = HELD_BACK_MIN_PAUSE;
                        poll
                    };
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(pause) => {}
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
        // The batch and its checkpoint commit or vanish together, and both can be redone from the
        // durable log: waiting for this commit's WAL flush buys nothing. The log is read in index
        // order whatever the planner's statistics say (a young table's stale statistics would
        // otherwise pick a bitmap scan and a sort of everything after the checkpoint).
        let mut tx = self
            .inner
            .pool
            .begin_with(
                "BEGIN; SET LOCAL synchronous_commit = off; \
                 SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off",
            )
            .await?;
        // One round trip: the horizon (every transaction below it has finished, so its events
        // are final), the checkpoint (locked: one batch at a time across instances), and whether
        // committed events already wait beyond the horizon. The horizon is read before the lock
        // gives this transaction an id; a horizon read after a lock wait is older, so only
        // less fresh, never unsafe.
        let head: (String, String, i64, bool) = sqlx::query_as(
            "SELECT h.horizon::text, c.last_transaction_id::text, c.last_position, \
                    COALESCE((SELECT max(e.transaction_id) FROM events e) >= h.horizon, false) \
               FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon) h, \
                    projection_checkpoints c \
              WHERE c.name = $1 \
                FOR UPDATE OF c",
        )
        .bind(projection.name())
        .fetch_one(&mut *tx)
        .await?;
        let (horizon, checkpoint_tx, checkpoint_pos, held_back) = head;
        let checkpoint = parse_position(&checkpoint_tx, checkpoint_pos)?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT transaction_id::text AS transaction_id, global_position, aggregate_type, \
                    aggregate_id, sequence, event_type, event_version, \
                    CASE WHEN aggregate_type = ANY($5) THEN payload ELSE 'null' END AS payload, \
                    CASE WHEN aggregate_type = ANY($5) THEN metadata ELSE 'null' END AS metadata, \
                    timestamp \
               FROM events \
              WHERE (transaction_id, global_position) > ($1::xid8, $2) \
                AND transaction_id < $3::xid8 \
              ORDER BY events.transaction_id, events.global_position \
              LIMIT $4",
        )
        .bind(&checkpoint_tx)
        .bind(checkpoint_pos)
        .bind(&horizon)
        .bind(self.inner.settings.batch_size)
        .bind(projection.aggregate_types())
        .fetch_all(&mut *tx)
        .await?;

        let events = rows
            .into_iter()
            .map(EventRow::into_event)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // A batch may stop short of committed events that wait behind an older transaction: say
        // so, and the loop looks again soon instead of sleeping a whole poll interval.
        let held_back = held_back && (events.len() as i64) < self.inner.settings.batch_size;
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
