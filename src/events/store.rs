//! The command bus: load an aggregate, let it decide, append its events, retry on conflicts.
//!
//! Aggregates are loaded through postgres-es (`PostgresEventRepository` behind cqrs-es's
//! `PersistedEventStore`, with the aggregate's upcasters, the same ones projectors decode with).
//! Appends are our own ([`super::append`]), because we need what cqrs-es's `commit` does not give
//! back: each event's place in the global order, so the HTTP answer can wait for the projections.
//! Optimistic concurrency is postgres-es's: the primary key (aggregate_type, aggregate_id,
//! sequence) refuses a second writer of the same version; we retry a bounded number of times.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, EventStore as _};
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlx::{PgConnection, PgPool};

use super::append::{append, append_grouped};
use super::claim;
use super::group_commit::GroupAppender;
use super::upcast::Versioned;
pub use super::wakeups::Wakeups;
use super::{Metadata, Position};

/// The outcome of a command that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate's sequence after the command (its "version").
    pub version: i64,
    /// Position of the last event appended; `None` when the command changed nothing.
    pub position: Option<Position>,
    /// The timestamp of the events appended (their transaction's); `None` when none were.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Domain(E),
    /// Another writer kept winning the race for this aggregate's next version.
    #[error("concurrent modification: retry budget exhausted")]
    Conflict,
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A violation that says another writer got there first (the events' primary key: optimistic
/// concurrency) is a `Conflict`, retried; any other error is `Internal`, and the edge answers
/// the other constraint violations with their own 409 (see [`super::constraints`]).
impl<E: std::error::Error> From<sqlx::Error> for CommandError<E> {
    fn from(err: sqlx::Error) -> Self {
        if super::constraints::is_concurrent_write(&err) {
            CommandError::Conflict
        } else {
            CommandError::Internal(err.into())
        }
    }
}

/// Nothing was written: the database could not be reached, or the connection failed before the
/// write was sent (the edge answers 503 `database_unavailable`).
#[derive(Debug, thiserror::Error)]
#[error("the database is unavailable: {0}")]
pub struct DatabaseUnavailable(pub String);

/// A write was sent and its connection failed before the answer came: it may have committed
/// (the edge answers 503 `outcome_unknown`; a retry with the same `Idempotency-Key` resolves it).
#[derive(Debug, thiserror::Error)]
#[error("the outcome of a write is unknown: {0}")]
pub struct OutcomeUnknown(pub String);

/// Whether an error says the connection to PostgreSQL is gone or refused (an I/O or protocol
/// failure, a connection exception (class 08), an administrator or crash shutdown, a server
/// that does not take connections now (57P)), rather than an answer about the statement.
pub fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// The database is busy: it refused a statement for a passing reason of load (a statement or
/// lock timeout, a cancelled statement, a deadlock or serialization failure, no connection slot
/// left), so nothing was written (the edge answers 503 `database_busy`).
#[derive(Debug, thiserror::Error)]
#[error("the database is busy: {0}")]
pub struct DatabaseBusy(pub String);

/// Why the database refused a statement for a passing reason that says nothing about the request
/// itself: the statement wrote nothing, and the same request may be sent again as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassingRefusal {
    /// Load: statement or lock timeout, cancelled statement, deadlock, serialization failure,
    /// too many connections.
    Busy,
    /// The database cannot take writes now: read-only (a standby after a failover,
    /// `default_transaction_read_only`), out of disk or memory, a system I/O error.
    Unavailable,
}

/// Whether `err` is the database refusing a statement for a passing reason (see
/// [`PassingRefusal`]) rather than an answer about the request (a constraint, bad data) or a
/// lost connection ([`is_connection_lost`]). The statement failed, so its transaction wrote
/// nothing.
pub fn passing_refusal(err: &sqlx::Error) -> Option<PassingRefusal> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?;
    match code.as_ref() {
        // query_canceled (statement_timeout, pg_cancel_backend), lock_not_available
        // (lock_timeout), serialization_failure, deadlock_detected, too_many_connections.
        "57014" | "55P03" | "40001" | "40P01" | "53300" => Some(PassingRefusal::Busy),
        // read_only_sql_transaction, insufficient resources (disk full, out of memory, ...),
        // system errors (I/O).
        code if code == "25006" || code.starts_with("53") || code.starts_with("58") => {
            Some(PassingRefusal::Unavailable)
        }
        _ => None,
    }
}

/// A write whose connection was lost after it was sent: its outcome is unknown.
fn unknown_if_lost<E: std::error::Error>(err: CommandError<E>) -> CommandError<E> {
    match err {
        CommandError::Internal(err)
            if err
                .chain()
                .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
                .any(is_connection_lost) =>
        {
            internal(OutcomeUnknown(format!("{err:#}")))
        }
        other => other,
    }
}

/// A commit that failed: unknown when its connection was lost.
pub fn commit_failed<E: std::error::Error>(err: sqlx::Error) -> CommandError<E> {
    if is_connection_lost(&err) {
        internal(OutcomeUnknown(format!("committing: {err}")))
    } else {
        internal(err)
    }
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(super::constraints::UNIQUE_VIOLATION))
}

/// Appends events and runs commands. Cheap to share.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    retries: u32,
    wakeups: Arc<Wakeups>,
    group: Option<GroupAppender>,
}

impl EventStore {
    /// `retries`: extra attempts after a concurrency conflict. `wakeups` hears of each commit.
    pub fn new(pool: PgPool, retries: u32, wakeups: Arc<Wakeups>) -> Self {
        Self {
            pool,
            retries,
            wakeups,
            group: None,
        }
    }

    /// Appends single-event commands through a group appender (see [`GroupAppender`]).
    pub fn with_group_commit(mut self, writers: usize, max_group: usize) -> Self {
        self.group = Some(GroupAppender::start(self.pool.clone(), writers, max_group));
        self
    }

    /// Loads the aggregate, runs the command, appends its events; on a conflict, reloads and
    /// tries again, up to the retry budget, then answers `Conflict`.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Versioned,
        A::Command: Clone,
    {
        self.run::<A>(aggregate_id, command, services, metadata, false)
            .await
    }

    /// As `execute`, for a command that creates an aggregate under a freshly generated id: the
    /// first attempt skips the load (the stream is empty), and a conflict falls back to `execute`.
    pub async fn execute_new<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Versioned,
        A::Command: Clone,
    {
        self.run::<A>(aggregate_id, command, services, metadata, true)
            .await
    }

    /// Runs a creating command inside the caller's transaction (for appends that must commit
    /// together with another write, e.g. a uniqueness claim). No retry: the caller decides.
    /// The caller must call [`EventStore::appended`] after its commit.
    pub async fn execute_new_in<A>(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Aggregate,
    {
        if let Some(committed) = claim::prior_for(A::TYPE, aggregate_id) {
            return Ok(committed);
        }
        let events = decide(A::default(), command, services).await?;
        append::<A>(conn, aggregate_id, 0, &events, metadata).await
    }

    /// Runs a command whose events must commit together with a write-side guard: `guard` runs in
    /// the append's transaction, before the append takes the commit-order lock, and sees the
    /// aggregate's state before the command and the events it decided. A guard error (a sitter
    /// already booked) rolls everything back; a concurrent change of the aggregate, or a guard
    /// that reports `Conflict` (its transaction lost a deadlock), is retried like any command.
    pub async fn execute_guarded<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
        guard: &(dyn Guard<A> + '_),
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Versioned,
        A::Command: Clone,
    {
        if let Some(committed) = claim::prior_for(A::TYPE, aggregate_id) {
            return Ok(committed);
        }
        let mut attempt = 0;
        loop {
            let (mut aggregate, sequence) = self.load::<A>(aggregate_id).await?;
            let sink = EventSink::<A>::default();
            aggregate
                .handle(command.clone(), services, &sink)
                .await
                .map_err(CommandError::Domain)?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed {
                    version: sequence as i64,
                    position: None,
                    at: None,
                });
            }
            let mut tx = crate::infra::db::begin(&self.pool)
                .await
                .map_err(internal)?;
            let appended = match guard
                .check(&mut tx, aggregate_id, &aggregate, &events)
                .await
            {
                Ok(()) => append::<A>(&mut tx, aggregate_id, sequence, &events, metadata).await,
                Err(err) => Err(err),
            };
            match appended {
                Ok(committed) => {
                    tx.commit().await.map_err(commit_failed)?;
                    self.appended(A::TYPE);
                    return Ok(committed);
                }
                Err(CommandError::Conflict) if attempt < self.retries => {
                    drop(tx);
                    attempt += 1;
                    metrics::counter!("command_conflicts_total", "aggregate_type" => A::TYPE)
                        .increment(1);
                    let max_ms = 2u64 << attempt.min(6);
                    let pause = rand::thread_rng().gen_range(0..=max_ms);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// An aggregate's current state, from its events (for facts a command on another aggregate
    /// needs: who owns a plant). `None` when it has no events.
    pub async fn load_state<A: Versioned>(&self, aggregate_id: &str) -> anyhow::Result<Option<A>> {
        match self.load::<A>(aggregate_id).await {
            Ok((_, 0)) => Ok(None),
            Ok((aggregate, _)) => Ok(Some(aggregate)),
            Err(CommandError::Conflict) => Err(anyhow::anyhow!("loading {aggregate_id}: conflict")),
            Err(CommandError::Internal(err)) => Err(err),
            Err(CommandError::Domain(_)) => Err(anyhow::anyhow!("loading {aggregate_id}")),
        }
    }

    /// Tells projectors (here and on other instances) that events of `aggregate_type` were
    /// committed.
    pub fn appended(&self, aggregate_type: &str) {
        self.wakeups.appended(aggregate_type);
    }

    async fn run<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Metadata,
        mut assume_new: bool,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Versioned,
        A::Command: Clone,
    {
        // An earlier attempt under this request's Idempotency-Key committed: its outcome.
        if let Some(committed) = claim::prior_for(A::TYPE, aggregate_id) {
            return Ok(committed);
        }
        let mut attempt = 0;
        loop {
            let (aggregate, sequence) = if assume_new {
                (A::default(), 0)
            } else {
                self.load::<A>(aggregate_id).await?
            };
            assume_new = false;
            let events = decide(aggregate, command.clone(), services).await?;
            if events.is_empty() {
                return Ok(Committed {
                    version: sequence as i64,
                    position: None,
                    at: None,
                });
            }
            let appended = match (&self.group, events.as_slice()) {
                (Some(group), [event]) => {
                    append_grouped::<A>(group, aggregate_id, sequence, event, metadata).await
                }
                _ => {
                    let mut conn = self.pool.acquire().await.map_err(internal)?;
                    append::<A>(&mut conn, aggregate_id, sequence, &events, metadata)
                        .await
                        .map_err(unknown_if_lost)
                }
            };
            match appended {
                Ok(committed) => {
                    self.appended(A::TYPE);
                    return Ok(committed);
                }
                Err(CommandError::Conflict) if attempt < self.retries => {
                    attempt += 1;
                    metrics::counter!("command_conflicts_total", "aggregate_type" => A::TYPE)
                        .increment(1);
                    // Jittered backoff so racing writers do not collide again in lockstep.
                    let max_ms = 2u64 << attempt.min(6);
                    let pause = rand::thread_rng().gen_range(0..=max_ms);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn load<A: Versioned>(
        &self,
        aggregate_id: &str,
    ) -> Result<(A, usize), CommandError<A::Error>> {
        let store: PersistedEventStore<PostgresEventRepository, A> =
            PersistedEventStore::new_event_store(PostgresEventRepository::new(self.pool.clone()))
                .with_upcasters(super::upcast::upcasters::<A>());
        let context = store
            .load_aggregate(aggregate_id)
            .await
            .map_err(|err| match err {
                AggregateError::AggregateConflict => CommandError::Conflict,
                AggregateError::DatabaseConnectionError(cause)
                | AggregateError::UnexpectedError(cause)
                    if cause.downcast_ref::<sqlx::Error>().is_some_and(|e| {
                        is_connection_lost(e) || matches!(e, sqlx::Error::PoolTimedOut)
                    }) =>
                {
                    internal(DatabaseUnavailable(format!(
                        "loading {aggregate_id}: {cause}"
                    )))
                }
                other => CommandError::Internal(anyhow::anyhow!("loading {aggregate_id}: {other}")),
            })?;
        Ok((context.aggregate, context.current_sequence))
    }
}

pub(super) fn internal<E: std::error::Error>(err: impl Into<anyhow::Error>) -> CommandError<E> {
    CommandError::Internal(err.into())
}

/// Runs the aggregate's `handle` and collects the events it decided on.
/// A write-side check that must commit atomically with a command's events (see
/// [`EventStore::execute_guarded`]).
#[async_trait::async_trait]
pub trait Guard<A: Aggregate>: Send + Sync {
    async fn check(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        before: &A,
        events: &[A::Event],
    ) -> Result<(), CommandError<A::Error>>;
}

async fn decide<A: Aggregate>(
    mut aggregate: A,
    command: A::Command,
    services: &A::Services,
) -> Result<Vec<A::Event>, CommandError<A::Error>> {
    let sink = EventSink::<A>::default();
    aggregate
        .handle(command, services, &sink)
        .await
        .map_err(CommandError::Domain)?;
    Ok(sink.collect().await)
}
