//! Connections whose failures end on the server's side, and transactions that a cancelled
//! caller cannot leak into the pool.
//!
//! [`session_settings`]: PostgreSQL ends a session of ours idle inside a transaction, or whose
//! peer went silent, after the configured time, so an instance that vanishes mid-transaction
//! (a partition, a dead host: unlike a killed process, nothing closes its socket) does not hold
//! its locks, the commit-order lock among them, for the hours TCP takes to notice.
//!
//! sqlx 0.8.6 (the 0.8 line postgres-es 0.5 is built on; upstream sqlx#4385 and #4393, fixed
//! by #4394 after that release) counts a transaction only once its `BEGIN` has answered, and
//! the guard that rolls back a dropped `begin` does nothing while that count is zero. A future
//! dropped while `BEGIN` is in flight (a client that hangs up, a timeout, a `select!`, a
//! rebuild stopped by Ctrl-C) therefore leaves the session inside a transaction nobody will
//! end, and the pool lends that connection to the next caller: its statements run in the stale
//! transaction, under whatever `SET LOCAL` the `BEGIN` made (a rebuild's shadow `search_path`
//! made `GET /api/plants` read the half-built copy), and hold its locks.
//!
//! [`begin`] and [`begin_with`] run the `BEGIN` on a task of its own, which finishes even when
//! the caller has gone: the transaction is then counted, and dropping it unanswered queues the
//! `ROLLBACK` that the pool flushes before lending the connection again. Every transaction of
//! this crate starts here (clippy's `disallowed-methods` refuses `Pool::begin` elsewhere).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::config::StoreConfig;

/// Probes after the first one, and the seconds between them (`tcp_keepalives_count`,
/// `tcp_keepalives_interval`).
const KEEPALIVE_PROBES: u64 = 3;
const KEEPALIVE_INTERVAL_SECS: u64 = 10;

/// `options` with the server-side limits of `config` as startup parameters: every connection
/// made from them has them, the pool's and the dedicated lock connections alike
/// (`pool.connect_options()`). A setting at 0 is left to the server (or to the URL's
/// `options`).
pub fn session_settings(options: PgConnectOptions, config: &StoreConfig) -> PgConnectOptions {
    let mut settings = Vec::new();
    if config.database_idle_in_transaction_secs > 0 {
        settings.push((
            "idle_in_transaction_session_timeout",
            format!("{}s", config.database_idle_in_transaction_secs),
        ));
    }
    if config.database_tcp_keepalive_secs > 0 {
        let idle = config.database_tcp_keepalive_secs;
        settings.extend([
            ("tcp_keepalives_idle", idle.to_string()),
            (
                "tcp_keepalives_interval",
                KEEPALIVE_INTERVAL_SECS.to_string(),
            ),
            ("tcp_keepalives_count", KEEPALIVE_PROBES.to_string()),
            // Also bounds a backend blocked sending to a peer that is gone (otherwise
            // retransmissions last about 15 minutes), with the same deadline as the probes.
            (
                "tcp_user_timeout",
                format!("{}s", idle + KEEPALIVE_PROBES * KEEPALIVE_INTERVAL_SECS),
            ),
        ]);
    }
    if settings.is_empty() {
        options
    } else {
        options.options(settings)
    }
}

/// A connection back from use a moment ago is known to be alive: only one idle this long is
/// pinged before it is used again.
pub const PING_IDLE_AFTER: Duration = Duration::from_millis(250);

/// The pool of `config`. sqlx pings each connection as it comes back to the pool and, by default,
/// again as it is handed out: two round trips besides the statements of every checkout (sqlx
/// issue #1743), three for a one-statement read. Ours pings on the way out only a connection
/// that sat idle [`PING_IDLE_AFTER`] or more (across a database restart, a dropped link), and
/// replaces it if it is dead. On `GET /api/me` PostgreSQL's CPU per request went from about 158
/// to 135 µs.
pub fn pool_options(config: &StoreConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A connection a long-running task keeps from one statement to the next (a group-commit
/// writer, the notifier): each checkout from the pool costs a round trip of its own (the ping as
/// it returns), and the task's statements follow each other closely. Pinged, and replaced if
/// dead, after it sat idle [`PING_IDLE_AFTER`], as the pool would; [`Held::discard`] after a
/// failed statement, so the next one starts on a fresh connection.
#[derive(Default)]
pub struct Held {
    conn: Option<PoolConnection<Postgres>>,
    last_used: Option<Instant>,
}

impl Held {
    /// The connection, from `pool` if there is none.
    pub async fn get(&mut self, pool: &PgPool) -> sqlx::Result<&mut PgConnection> {
        let idle = self
            .last_used
            .is_some_and(|at| at.elapsed() >= PING_IDLE_AFTER);
        let conn = match self.conn.take() {
            Some(mut conn) if idle => match conn.ping().await {
                Ok(()) => conn,
                Err(_) => {
                    conn.close_on_drop();
                    pool.acquire().await?
                }
            },
            Some(conn) => conn,
            None => pool.acquire().await?,
        };
        self.last_used = Some(Instant::now());
        Ok(&mut **self.conn.insert(conn))
    }

    /// Closes the connection (after a failure: it may be broken).
    pub fn discard(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// A transaction on a connection of `pool` (`BEGIN`), safe to cancel at any point.
pub async fn begin(pool: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
    start(pool, None).await
}

/// A transaction opened by `statement` (`BEGIN; SET LOCAL ...`), safe to cancel at any point.
pub async fn begin_with(
    pool: &PgPool,
    statement: impl Into<Cow<'static, str>>,
) -> sqlx::Result<Transaction<'static, Postgres>> {
    start(pool, Some(statement.into())).await
}

#[allow(clippy::disallowed_methods)]
async fn start(
    pool: &PgPool,
    statement: Option<Cow<'static, str>>,
) -> sqlx::Result<Transaction<'static, Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        match statement {
            Some(statement) => pool.begin_with(statement).await,
            None => pool.begin().await,
        }
    })
    .await
    // The task only ends early when the runtime shuts down (it does not panic).
    .map_err(|_| sqlx::Error::WorkerCrashed)?
}
