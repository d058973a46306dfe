//! The projector runner: a catch-up subscription on the event log.
//!
//! Positions are handed out in commit order (see the `commit_order` migration), so a projector
//! reads `global_position > checkpoint` in index order and never skips an event, whatever other
//! transactions in the cluster are doing.
//!
//! Two kinds of projector (see [`Mode`]):
//! - read models apply a batch and advance their checkpoint in one transaction, under a row lock
//!   on the checkpoint, so several instances can run them and each event takes effect once;
//! - side-effect projectors (mail, later fan-out) hold no transaction across network I/O: one
//!   instance at a time runs each of them, under a session-level advisory lock held by a
//!   dedicated connection (a session lock takes no transaction id), and they record what they did
//!   so a retry does not do it again.
//!
//! An event a projector keeps failing on is retried `max_attempts` times with backoff, then parked
//! in `parked_events` (and counted), and the projector goes on. Failures marked [`Transient`], and
//! lost database connections, are retried without limit: they say nothing about the event.
//!
//! Projectors wake on local appends, on `LISTEN arosaje_events`, and poll as a fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::{Mode, Projection};
use crate::events::store::Wakeups;
use crate::events::{Position, StoredEvent};
use crate::infra::influx::Series;

/// How projectors run.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub batch_size: i64,
    pub poll_interval: Duration,
    /// Failed attempts at one event before it is parked.
    pub max_attempts: u32,
    /// A read model never built (checkpoint 0) on a log of at least this many events is built
    /// by a rebuild, aside and in bulk, rather than batch by batch (see [`Projections::spawn`]).
    pub cold_start_log: i64,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
            cold_start_log: 100_000,
        }
    }
}

/// An error a projection returns when the failure says nothing about the event (an SMTP server
/// that is down, a timeout): the event is retried with backoff for as long as it takes, never
/// parked.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Transient(pub anyhow::Error);

/// Whether a failure is worth retrying forever rather than counting against the event.
pub(crate) fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.downcast_ref::<Transient>().is_some() {
            return true;
        }
        match cause.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_),
            ) => true,
            // Connection, resources, operator intervention, serialization/deadlock.
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| ["08", "40", "53", "57"].iter().any(|p| c.starts_with(p))),
            _ => false,
        }
    })
}

/// The failure at one event that a projector is working through.
#[derive(Debug, Clone, Copy, Default)]
struct Trouble {
    /// The event that failed; until the checkpoint passes it, batches apply one event at a time.
    position: i64,
    attempts: u32,
}

struct Projector {
    projection: Arc<dyn Projection>,
    /// How a read-model batch begins: its settings, and the `search_path` to its tables.
    begin: String,
    checkpoint: watch::Sender<Position>,
    wake: Arc<tokio::sync::Notify>,
    trouble: std::sync::Mutex<Option<Trouble>>,
    /// Side-effect projectors: the connection (outside the pool) holding this instance's
    /// advisory lock; dropping it closes the connection, which releases the lock.
    lock: Mutex<Option<PgConnection>>,
    /// Read models: log positions the next batch reads. Grows fourfold after each full batch,
    /// up to [`CATCH_UP_BATCH`], while the projector is far behind (a cold start, a backlog),
    /// and falls back to the configured batch size once it has caught up.
    window: std::sync::atomic::AtomicI64,
    /// Without local projectors: whether a task follows this projection's checkpoint in the
    /// database for the requests waiting on it (see [`Projections::follow`]).
    following: std::sync::atomic::AtomicBool,
}

/// How often an instance without local projectors reads the checkpoint of a projection that
/// requests wait on: one read per interval per projection, however many requests wait.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(5);

/// The largest batch a read model reads while catching up on a backlog: set-based projections
/// write a batch with a few statements per kind of event, so the larger the batch the fewer
/// round trips per event.
const CATCH_UP_BATCH: i64 = 10_000;

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
    /// Where each batch's lag goes as a business series (InfluxDB), if anywhere.
    series: Series,
    /// Checkpoint reads made for waiting requests, without local projectors.
    checkpoint_reads: std::sync::atomic::AtomicU64,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events read (applied, passed by or parked).
    pub read: usize,
    /// Events parked in this batch.
    pub parked: usize,
    pub checkpoint: Position,
    /// A side-effect projector whose lock another instance holds: it did nothing.
    pub standby: bool,
}

/// Two-key advisory lock space of side-effect projectors (the append lock uses the one-key space).
const SIDE_EFFECT_LOCK_CLASS: i32 = 0x6172_6f73; // "aros"

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
                begin: format!(
                    "BEGIN; SET LOCAL synchronous_commit = off; \
                     SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; \
                     SET LOCAL plan_cache_mode = force_custom_plan; \
                     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
                     SET LOCAL jit = off; SET LOCAL search_path = {}",
                    super::search_path(projection.as_ref(), None)
                ),
                projection,
                checkpoint: watch::channel(Position::START).0,
                trouble: std::sync::Mutex::new(None),
                lock: Mutex::new(None),
                window: std::sync::atomic::AtomicI64::new(settings.batch_size.max(1)),
                following: std::sync::atomic::AtomicBool::new(false),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                projectors,
                wakeups,
                running: std::sync::atomic::AtomicBool::new(false),
                series: Series::disabled(),
                checkpoint_reads: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Sends each batch's lag to `series` too (`projection_lag`, see `projections::series`).
    /// Each batch runs in one instance, so N instances do not send N copies.
    pub fn with_series(mut self, series: Series) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.series = series;
        }
        self
    }

    /// The registered projections, in their order.
    pub fn projections(&self) -> Vec<Arc<dyn Projection>> {
        self.inner
            .projectors
            .iter()
            .map(|p| p.projection.clone())
            .collect()
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

    /// Starts the projectors and the LISTEN task. Aborting the handles stops them; an
    /// interrupted batch rolls back.
    ///
    /// A cold start (see [`Projections::cold_models`]) first builds the read models that were
    /// never built with a rebuild ([`super::rebuild::build_cold`]: bulk replay into copies,
    /// then a swap), and starts their projectors after it; the other projectors start at once.
    /// On a 1.05M-event log: 98.3 s batch by batch, 45.3 s rebuilt (same run, same machine).
    pub fn spawn(&self) -> Vec<JoinHandle<()>> {
        self.inner
            .running
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let projectors = tokio::spawn(async move {
            // Dropped (the handle aborted), the set aborts every projector it started.
            let mut running = tokio::task::JoinSet::new();
            let cold = match this.cold_models().await {
                Ok(cold) => cold,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot tell cold read models; starting all");
                    Vec::new()
                }
            };
            let is_cold = |index: usize| {
                let name = this.inner.projectors[index].projection.name();
                cold.iter().any(|p| p.name() == name)
            };
            for index in (0..this.inner.projectors.len()).filter(|i| !is_cold(*i)) {
                let runner = this.clone();
                running.spawn(async move { runner.run(index).await });
            }
            if !cold.is_empty() {
                if let Err(err) = super::rebuild::build_cold(
                    &this.inner.pool,
                    &cold,
                    &super::rebuild::RebuildOptions::default(),
                )
                .await
                {
                    tracing::error!(
                        error = %format!("{err:#}"),
                        "cold start rebuild failed; the projectors catch up batch by batch"
                    );
                }
                for index in (0..this.inner.projectors.len()).filter(|i| is_cold(*i)) {
                    let runner = this.clone();
                    running.spawn(async move { runner.run(index).await });
                }
            }
            while running.join_next().await.is_some() {}
        });
        let this = self.clone();
        vec![projectors, tokio::spawn(async move { this.listen().await })]
    }

    /// Read models never built (checkpoint at 0) while the log holds at least
    /// [`ProjectorSettings::cold_start_log`] events: a cold start, which a rebuild serves
    /// better than batches (no foreign key checked row by row, indexes no lookup uses built
    /// once at the end, derived counts computed once).
    pub async fn cold_models(&self) -> sqlx::Result<Vec<Arc<dyn Projection>>> {
        let head = super::rebuild::head(&self.inner.pool).await?;
        if head < self.inner.settings.cold_start_log.max(1) {
            return Ok(Vec::new());
        }
        let checkpoints = all_checkpoints(&self.inner.pool).await?;
        Ok(self
            .projections()
            .into_iter()
            .filter(|p| p.mode() == Mode::ReadModel && !p.tables().is_empty())
            .filter(|p| {
                checkpoints
                    .get(p.name())
                    .is_none_or(|c| c.position.global_position == 0)
            })
            .collect())
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
    /// checkpoints in the database instead: one task per projection reads them while requests
    /// wait, however many do.
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
        for (index, projector) in self.inner.projectors.iter().enumerate() {
            let projection = &projector.projection;
            if !projection.read_your_writes()
                || !projection.aggregate_types().contains(&aggregate_type)
            {
                continue;
            }
            // Subscribed before the follower is asked for, so it sees this waiter.
            let mut rx = projector.checkpoint.subscribe();
            if !local {
                self.follow(index);
            }
            let waited = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= position)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// Starts the task that follows projector `index`'s checkpoint in the database, unless it
    /// runs. It stops once nobody waits on that checkpoint.
    fn follow(&self, index: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let following = &self.inner.projectors[index].following;
        if following
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_ok()
        {
            let this = self.clone();
            tokio::spawn(async move { this.follow_checkpoint(index).await });
        }
    }

    async fn follow_checkpoint(&self, index: usize) {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let projector = &self.inner.projectors[index];
        let name = projector.projection.name();
        loop {
            if projector.checkpoint.receiver_count() == 0 {
                projector.following.store(false, SeqCst);
                // A waiter that subscribed meanwhile either saw `false` and started a follower,
                // or is seen here; in that case this one goes on unless another took over.
                if projector.checkpoint.receiver_count() == 0
                    || projector
                        .following
                        .compare_exchange(false, true, SeqCst, SeqCst)
                        .is_err()
                {
                    return;
                }
            }
            self.inner.checkpoint_reads.fetch_add(1, Relaxed);
            match load_checkpoint(&self.inner.pool, name).await {
                Ok(current) => {
                    projector.checkpoint.send_if_modified(|seen| {
                        let newer = current > *seen;
                        if newer {
                            *seen = current;
                        }
                        newer
                    });
                }
                Err(err) => {
                    tracing::debug!(projection = name, error = %err, "reading a checkpoint to follow it")
                }
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    }

    /// How many times this instance read a checkpoint from the database for waiting requests
    /// (without local projectors).
    pub fn checkpoint_reads(&self) -> u64 {
        self.inner
            .checkpoint_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs batches of one projection until it is caught up (for the CLI and tests). An event
    /// that keeps failing is retried up to the attempt budget and then parked, as in `run`.
    pub async fn catch_up(&self, name: &str) -> anyhow::Result<Position> {
        let index = self
            .index_of(name)
            .ok_or_else(|| anyhow::anyhow!("no projection named {name}"))?;
        let mut failures: u32 = 0;
        loop {
            match self.run_batch(index).await {
                Ok(outcome) if outcome.standby => {
                    anyhow::bail!("another instance runs projection {name}")
                }
                Ok(outcome) if outcome.read == 0 => return Ok(outcome.checkpoint),
                Ok(_) => failures = 0,
                Err(err) => {
                    failures += 1;
                    if failures > self.inner.settings.max_attempts.max(1) * 4 {
                        return Err(err);
                    }
                    tokio::time::sleep(backoff(failures.min(4))).await;
                }
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
        loop {
            // Register interest before reading, so a wake-up during the batch is not lost.
            let notified = self.inner.projectors[index].wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            match self.run_batch(index).await {
                Ok(outcome) => {
                    failures = 0;
                    if !outcome.standby
                        && outcome.read as i64 >= self.inner.settings.batch_size.max(1)
                    {
                        continue;
                    }
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    metrics::counter!("projection_errors_total", "projection" => name).increment(1);
                    let backoff = backoff(failures);
                    tracing::error!(projection = name, error = %format!("{err:#}"), ?backoff, "projection batch failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Reads and applies one batch, and advances the checkpoint past what it applied.
    pub async fn run_batch(&self, index: usize) -> anyhow::Result<BatchOutcome> {
        let projector = &self.inner.projectors[index];
        let outcome = match projector.projection.mode() {
            Mode::ReadModel => self.read_model_batch(projector).await,
            Mode::SideEffects => self.side_effect_batch(projector).await,
        };
        if let Ok(outcome) = &outcome {
            projector.checkpoint.send_replace(outcome.checkpoint);
            let name = projector.projection.name();
            metrics::gauge!("projection_position", "projection" => name)
                .set(outcome.checkpoint.global_position as f64);
        }
        outcome
    }

    /// A read model's batch: events, effects and checkpoint in one transaction.
    async fn read_model_batch(&self, projector: &Projector) -> anyhow::Result<BatchOutcome> {
        let projection = &projector.projection;
        // The batch and its checkpoint commit or vanish together, and both can be redone from the
        // durable log: waiting for this commit's WAL flush buys nothing. The log is read in index
        // order whatever the planner's statistics say. Those `enable_* = off` add the planner's
        // penalty (1e10) to any plan that still has such a node, which crosses `jit_above_cost`:
        // the server then JIT-compiles the statement, about 230 ms each time (the advice queue's
        // recount made every advice and sitting write wait about 700 ms), so JIT is off.
        let mut tx =
            crate::infra::db::begin_with(&self.inner.pool, projector.begin.clone()).await?;
        // Locked: one batch of this projection at a time, across instances.
        let checkpoint: i64 = sqlx::query_scalar(
            "SELECT last_position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        )
        .bind(projection.name())
        .fetch_one(&mut *tx)
        .await?;
        let base = self.inner.settings.batch_size.max(1);
        let window = projector
            .window
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(base);
        let events = self
            .read_events(&mut tx, projection, checkpoint, window)
            .await?;
        let next = if events.len() as i64 >= window {
            (window * 4).min(CATCH_UP_BATCH.max(base))
        } else {
            base
        };
        projector
            .window
            .store(next, std::sync::atomic::Ordering::Relaxed);
        let Some(last) = events.last().map(|e| e.position) else {
            tx.commit().await?;
            return Ok(self.outcome(0, 0, Position::new(checkpoint)));
        };
        let trouble = self.trouble(projector, checkpoint);
        let (reached, parked, failure) = if trouble.is_none() {
            self.apply_whole(projector, &mut tx, &events).await?;
            (last, Vec::new(), None)
        } else {
            self.one_by_one(projector, &mut tx, checkpoint, &events, true)
                .await?
        };
        save_checkpoint(&mut tx, projection.name(), checkpoint, reached).await?;
        tx.commit().await?;
        log_applied(projection.as_ref(), &events, reached, &parked);
        self.record_lag(projection.as_ref(), &events, reached);
        match failure {
            Some(err) => Err(err),
            None => Ok(self.outcome(events.len(), parked.len(), reached)),
        }
    }

    /// A side-effect projector's batch: no transaction; exclusive through the advisory lock.
    async fn side_effect_batch(&self, projector: &Projector) -> anyhow::Result<BatchOutcome> {
        let projection = &projector.projection;
        let mut guard = projector.lock.lock().await;
        if guard.is_none() {
            let options = self.inner.pool.connect_options();
            let mut conn = PgConnection::connect_with(&options).await?;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(SIDE_EFFECT_LOCK_CLASS)
                .bind(projection.name())
                .fetch_one(&mut conn)
                .await?;
            if !locked {
                let checkpoint = load_checkpoint(&self.inner.pool, projection.name()).await?;
                return Ok(BatchOutcome {
                    standby: true,
                    ..self.outcome(0, 0, checkpoint)
                });
            }
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            anyhow::bail!("side-effect lock connection missing");
        };
        let result = self.side_effect_events(projector, conn).await;
        if result.as_ref().is_err_and(is_transient) {
            // The connection (and with it the lock) may be gone: take a fresh one next time.
            *guard = None;
        }
        result
    }

    async fn side_effect_events(
        &self,
        projector: &Projector,
        conn: &mut PgConnection,
    ) -> anyhow::Result<BatchOutcome> {
        let projection = &projector.projection;
        let checkpoint: i64 =
            sqlx::query_scalar("SELECT last_position FROM projection_checkpoints WHERE name = $1")
                .bind(projection.name())
                .fetch_one(&mut *conn)
                .await?;
        let events = self
            .read_events(conn, projection, checkpoint, self.inner.settings.batch_size)
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(self.outcome(0, 0, Position::new(checkpoint)));
        };
        let whole =
            projection.repeatable_effects() && self.trouble(projector, checkpoint).is_none();
        let (reached, parked, failure) = if whole {
            self.apply_whole(projector, conn, &events).await?;
            (last, Vec::new(), None)
        } else {
            self.one_by_one(projector, conn, checkpoint, &events, false)
                .await?
        };
        save_checkpoint(&mut *conn, projection.name(), checkpoint, reached).await?;
        log_applied(projection.as_ref(), &events, reached, &parked);
        self.record_lag(projection.as_ref(), &events, reached);
        match failure {
            Some(err) => Err(err),
            None => Ok(self.outcome(events.len(), parked.len(), reached)),
        }
    }

    /// Applies a batch in one call (its events of the projection's types). On a failure, the
    /// batch's first event is marked as trouble: the next batches go one event at a time, to find
    /// the one at fault.
    async fn apply_whole(
        &self,
        projector: &Projector,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let projection = &projector.projection;
        let relevant = relevant(projection.as_ref(), events);
        if let Err(err) = projection.apply(conn, &relevant).await {
            if let Some(first) = events.first() {
                self.set_trouble(projector, first.position.global_position, 0);
            }
            return Err(err);
        }
        Ok(())
    }

    /// Applies events one at a time (inside savepoints when `transactional`), parking one that
    /// has failed `max_attempts` times. Stops at the first other failure. Returns how far it got,
    /// the positions it parked, and the failure that stopped it.
    async fn one_by_one(
        &self,
        projector: &Projector,
        conn: &mut PgConnection,
        checkpoint: i64,
        events: &[StoredEvent],
        transactional: bool,
    ) -> anyhow::Result<(Position, Vec<i64>, Option<anyhow::Error>)> {
        let projection = &projector.projection;
        let mut reached = Position::new(checkpoint);
        let mut parked = Vec::new();
        for event in events {
            if !projection
                .aggregate_types()
                .contains(&event.aggregate_type.as_str())
            {
                reached = event.position;
                continue;
            }
            if transactional {
                sqlx::query("SAVEPOINT one_event")
                    .execute(&mut *conn)
                    .await?;
            }
            let applied = projection
                .apply(&mut *conn, std::slice::from_ref(event))
                .await;
            match applied {
                Ok(()) => {
                    if transactional {
                        sqlx::query("RELEASE SAVEPOINT one_event")
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                Err(err) => {
                    if transactional {
                        sqlx::query("ROLLBACK TO SAVEPOINT one_event")
                            .execute(&mut *conn)
                            .await?;
                    }
                    let position = event.position.global_position;
                    if is_transient(&err) {
                        self.set_trouble(projector, position, 0);
                        return Ok((reached, parked, Some(err)));
                    }
                    let attempts = self.count_attempt(projector, position);
                    if attempts < self.inner.settings.max_attempts.max(1) {
                        return Ok((reached, parked, Some(err)));
                    }
                    park(&mut *conn, projection.name(), event, &err, attempts).await?;
                    parked.push(position);
                }
            }
            reached = event.position;
        }
        Ok((reached, parked, None))
    }

    async fn read_events(
        &self,
        conn: &mut PgConnection,
        projection: &Arc<dyn Projection>,
        checkpoint: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT global_position, aggregate_type, aggregate_id, sequence, event_type, \
                    event_version, \
                    CASE WHEN aggregate_type = ANY($3) THEN payload ELSE 'null' END AS payload, \
                    CASE WHEN aggregate_type = ANY($3) THEN metadata ELSE 'null' END AS metadata, \
                    timestamp \
               FROM events \
              WHERE global_position > $1 \
              ORDER BY global_position \
              LIMIT $2",
        )
        .bind(checkpoint)
        .bind(limit.max(1))
        .bind(projection.aggregate_types())
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows.into_iter().map(EventRow::into_event).collect())
    }

    /// The trouble a projector is in, forgotten once its checkpoint has passed the event.
    fn trouble(&self, projector: &Projector, checkpoint: i64) -> Option<Trouble> {
        let mut trouble = projector.trouble.lock().unwrap_or_else(|e| e.into_inner());
        if trouble.is_some_and(|t| t.position <= checkpoint) {
            *trouble = None;
        }
        *trouble
    }

    fn set_trouble(&self, projector: &Projector, position: i64, attempts: u32) {
        let mut trouble = projector.trouble.lock().unwrap_or_else(|e| e.into_inner());
        *trouble = Some(Trouble { position, attempts });
    }

    /// One more failed attempt at the event at `position`; returns the attempts so far.
    fn count_attempt(&self, projector: &Projector, position: i64) -> u32 {
        let mut trouble = projector.trouble.lock().unwrap_or_else(|e| e.into_inner());
        let attempts = match *trouble {
            Some(t) if t.position == position => t.attempts + 1,
            _ => 1,
        };
        *trouble = Some(Trouble { position, attempts });
        attempts
    }

    fn outcome(&self, read: usize, parked: usize, checkpoint: Position) -> BatchOutcome {
        BatchOutcome {
            read,
            parked,
            checkpoint,
            standby: false,
        }
    }

    fn record_lag(&self, projection: &dyn Projection, events: &[StoredEvent], reached: Position) {
        let now = Utc::now();
        let name = projection.name();
        let mut worst: Option<f64> = None;
        for event in events.iter().filter(|e| {
            e.position <= reached
                && projection
                    .aggregate_types()
                    .contains(&e.aggregate_type.as_str())
        }) {
            let lag = (now - event.timestamp)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            metrics::histogram!("projection_lag_seconds", "projection" => name).record(lag);
            worst = Some(worst.map_or(lag, |w: f64| w.max(lag)));
        }
        if let Some(worst) = worst.filter(|_| self.inner.series.enabled()) {
            self.inner
                .series
                .send(&super::series::lag_point(name, worst, now));
        }
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
                                // Our own appends woke the projectors that read them already;
                                // waking all of them again per append costs a batch each.
                                Ok(note) if self.inner.wakeups.is_own(note.payload()) => {}
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

/// The chain of work an event belongs to (its metadata's `correlation_id`: the request id of the
/// HTTP request that caused it, unless the client sent `X-Correlation-Id`).
fn correlation_id(event: &StoredEvent) -> &str {
    event
        .metadata
        .get("correlation_id")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// One line per event a projection has applied for good (committed, or acted on), with the
/// event's correlation id: a grep for a request id follows it from HTTP to its projections.
/// Parked events were logged when parked.
fn log_applied(
    projection: &dyn Projection,
    events: &[StoredEvent],
    reached: Position,
    parked: &[i64],
) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let name = projection.name();
    for event in events.iter().filter(|e| {
        e.position <= reached
            && !parked.contains(&e.position.global_position)
            && projection
                .aggregate_types()
                .contains(&e.aggregate_type.as_str())
    }) {
        tracing::info!(
            projection = name,
            position = event.position.global_position,
            event_type = %event.event_type,
            correlation_id = correlation_id(event),
            "event projected"
        );
    }
}

/// The events of a batch that the projection reads.
fn relevant(projection: &dyn Projection, events: &[StoredEvent]) -> Vec<StoredEvent> {
    events
        .iter()
        .filter(|e| {
            projection
                .aggregate_types()
                .contains(&e.aggregate_type.as_str())
        })
        .cloned()
        .collect()
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(9)))
        .min(Duration::from_secs(30))
}

/// Moves a projection's checkpoint to `reached`, if that is past `from`.
async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    from: i64,
    reached: Position,
) -> sqlx::Result<()> {
    if reached.global_position > from {
        sqlx::query(
            "UPDATE projection_checkpoints SET last_position = $2, updated_at = now() \
              WHERE name = $1",
        )
        .bind(name)
        .bind(reached.global_position)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Records a poison event and counts it; the projector then goes on past it.
pub(crate) async fn park(
    conn: &mut PgConnection,
    projection: &'static str,
    event: &StoredEvent,
    err: &anyhow::Error,
    attempts: u32,
) -> sqlx::Result<()> {
    let error: String = format!("{err:#}").chars().take(2000).collect();
    tracing::error!(
        projection,
        position = event.position.global_position,
        event_type = %event.event_type,
        correlation_id = correlation_id(event),
        attempts,
        error = %error,
        "event parked after repeated failures; the projection goes on without it"
    );
    sqlx::query(
        "INSERT INTO parked_events (projection, global_position, event_type, error, attempts) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (projection, global_position) \
         DO UPDATE SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now()",
    )
    .bind(projection)
    .bind(event.position.global_position)
    .bind(&event.event_type)
    .bind(error)
    .bind(attempts as i32)
    .execute(&mut *conn)
    .await?;
    metrics::counter!("projection_events_parked_total", "projection" => projection).increment(1);
    Ok(())
}

/// Reads a projection's checkpoint from the database.
pub async fn load_checkpoint(pool: &PgPool, name: &str) -> sqlx::Result<Position> {
    let row: Option<i64> =
        sqlx::query_scalar("SELECT last_position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Position::new).unwrap_or(Position::START))
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
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
    pub(crate) fn into_event(self) -> StoredEvent {
        StoredEvent {
            position: Position::new(self.global_position),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: self.metadata,
            timestamp: self.timestamp,
        }
    }
}

/// Each projection's checkpoint and parked events (for `projections status` and `/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionState {
    pub position: Position,
    pub parked: i64,
}

/// Checkpoints and parked-event counts of every projection, by name.
pub async fn all_checkpoints(pool: &PgPool) -> sqlx::Result<HashMap<String, ProjectionState>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT c.name, c.last_position, \
                (SELECT count(*) FROM parked_events p WHERE p.projection = c.name) \
           FROM projection_checkpoints c",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, position, parked)| {
            (
                name,
                ProjectionState {
                    position: Position::new(position),
                    parked,
                },
            )
        })
        .collect())
}
