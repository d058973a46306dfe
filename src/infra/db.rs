//! Transactions that a cancelled caller cannot leak into the pool.
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

use sqlx::{PgPool, Postgres, Transaction};

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
