//! A transaction whose caller is cancelled while its `BEGIN` is in flight (a client that hangs
//! up, a timeout, a rebuild stopped mid-batch) must not stay open on a pooled connection.

use std::time::Duration;

use arosaje::infra::db;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// A `BEGIN` that sets a local search path, then takes long enough to be cancelled mid-way.
const SLOW_BEGIN: &str = "BEGIN; SET LOCAL search_path = leaked; SELECT pg_sleep(0.4)";

/// One connection, so the next borrower gets the one the cancelled `BEGIN` used.
async fn one_connection(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    options
        .max_connections(1)
        .connect_with(connect)
        .await
        .expect("pool")
}

/// The search path of the next borrower, and whether it is inside a transaction that began well
/// before its own statement (the cancelled one's, which slept 0.4 s).
async fn next_borrower(pool: &PgPool) -> (String, bool) {
    sqlx::query_as(
        "SELECT current_setting('search_path'), \
                now() < statement_timestamp() - interval '0.3 s'",
    )
    .fetch_one(pool)
    .await
    .expect("the next borrower's query")
}

#[sqlx::test]
async fn a_begin_cancelled_in_flight_leaves_no_transaction_on_the_pooled_connection(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(options, connect).await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        db::begin_with(&pool, SLOW_BEGIN),
    )
    .await;
    assert!(cancelled.is_err(), "the BEGIN was to be cancelled");
    let (search_path, in_old_transaction) = next_borrower(&pool).await;
    assert_ne!(search_path, "leaked");
    assert!(!in_old_transaction);

    // And a transaction dropped unfinished after its BEGIN is rolled back.
    let mut tx = db::begin(&pool).await.expect("begin");
    sqlx::query("CREATE TABLE dropped_with_its_transaction (id int)")
        .execute(&mut *tx)
        .await
        .expect("create");
    drop(tx);
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('dropped_with_its_transaction') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .expect("lookup");
    assert!(!exists);
}

/// Why `infra::db` exists: sqlx 0.8.6's own `Pool::begin_with`, cancelled at the same point,
/// lends the next borrower a connection still inside the cancelled transaction (sqlx#4385).
/// When this fails after an sqlx upgrade, the upgrade fixed it: `infra::db` can go.
#[sqlx::test]
#[allow(clippy::disallowed_methods)]
async fn sqlx_alone_leaks_a_transaction_whose_begin_is_cancelled(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = one_connection(options, connect).await;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(100), pool.begin_with(SLOW_BEGIN)).await;
    assert!(cancelled.is_err(), "the BEGIN was to be cancelled");
    let (search_path, in_old_transaction) = next_borrower(&pool).await;
    assert_eq!(search_path, "leaked");
    assert!(in_old_transaction);
}
