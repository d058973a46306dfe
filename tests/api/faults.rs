//! Database faults under real connections: a backend of the test's own database is terminated
//! (`pg_terminate_backend`) while a request waits on a lock, as a PostgreSQL restart or a dropped
//! connection would cut it. Nothing answers 500; an append that may have committed answers 503
//! `outcome_unknown`, and a retry with the same `Idempotency-Key` resolves it: one plant, one
//! event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::helpers::{config, unique_email, Reply, TestApp};

/// The commit-order lock every append takes (migration `commit_order`).
pub const APPEND_LOCK: i64 = 27428895743634021;

pub async fn create(t: &TestApp, token: &str, key: &str, body: &Value) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/plants")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    t.raw(request).await
}

/// (rows in `plants`, `PlantCreated` events in the log).
pub async fn plant_counts(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM plants), \
                (SELECT count(*) FROM events WHERE event_type = 'PlantCreated')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A 503 with its code and `Retry-After: 1`, as every lost-database answer.
pub fn assert_unavailable(reply: &Reply, code: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::SERVICE_UNAVAILABLE, code),
        "{reply:?}"
    );
    assert_eq!(reply.headers["retry-after"], "1", "{reply:?}");
}

pub fn fern() -> Value {
    json!({"name": "Fern", "care": {"watering_interval_days": 3}})
}

/// Waits for a backend of this test's database that waits on a lock of `wait_event` kind while
/// running a statement that contains `statement`, and terminates it. Only ever this database's.
async fn terminate_waiting(pool: &PgPool, wait_event: &str, statement: &str) {
    let pid = waiting_backend(pool, wait_event, statement).await;
    signal(pool, "pg_terminate_backend", pid).await;
}

/// The pid of a backend of this test's database that waits on a lock of `wait_event` kind while
/// running a statement that contains `statement` (waiting up to 20 s for one).
async fn waiting_backend(pool: &PgPool, wait_event: &str, statement: &str) -> i32 {
    backend(pool, Some(wait_event), statement).await
}

/// The pid of a backend of this test's database whose statement contains `statement`: waiting on
/// a lock of `wait_event` kind, or, without one, finished and idle (waiting up to 20 s for one).
async fn backend(pool: &PgPool, wait_event: Option<&str>, statement: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid() \
                AND CASE WHEN $1::text IS NULL THEN state = 'idle' \
                         ELSE wait_event_type = 'Lock' AND wait_event = $1 END \
                AND position($2 in query) > 0 \
              LIMIT 1",
        )
        .bind(wait_event)
        .bind(statement)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend {} running {statement}",
            wait_event.map_or("idle".to_string(), |w| format!("waits on a {w} lock"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `function` (`pg_terminate_backend` or `pg_cancel_backend`) to `pid`, a backend of this
/// test's database.
async fn signal(pool: &PgPool, function: &str, pid: i32) {
    let signalled: bool = sqlx::query_scalar(&format!(
        "SELECT {function}(pid) FROM pg_stat_activity \
          WHERE pid = $1 AND datname = current_database()"
    ))
    .bind(pid)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(signalled, "{function}({pid})");
}

/// An app with `writers` group-commit writers (0: each append is its own statement).
async fn app_with_writers(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    writers: usize,
) -> TestApp {
    let mut config = config();
    config.group_commit_writers = writers;
    TestApp::with_config(options, connect, config, true).await
}

/// An append blocked on the commit-order lock (held by a second session) is interrupted by
/// `function`, a signal to its backend, and answers 503 `code` with `Retry-After`, never 500,
/// with nothing committed; the retry with the same key applies the request once, and the next
/// one replays that answer.
async fn an_interrupted_append_answers_503_and_its_retry_applies_it_once(
    t: TestApp,
    function: &str,
    code: &str,
) {
    let (_, token) = t.user(&unique_email("owner")).await;
    let mut holder = arosaje::infra::db::begin(&t.pool).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let body = fern();
    let (interrupted, ()) = tokio::join!(create(&t, &token, "interrupted-1", &body), async {
        let pid = waiting_backend(&t.pool, "advisory", "INSERT INTO events").await;
        signal(&t.pool, function, pid).await;
    });
    holder.rollback().await.unwrap();
    assert_unavailable(&interrupted, code);
    assert_eq!(plant_counts(&t.pool).await, (0, 0), "nothing committed");

    let retry = create(&t, &token, "interrupted-1", &body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert!(!retry.headers.contains_key("idempotent-replayed"));
    let again = create(&t, &token, "interrupted-1", &body).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, retry.body);
    assert_eq!(plant_counts(&t.pool).await, (1, 1), "one plant, one event");
}

/// Its backend terminated mid-statement: the append may have committed, `outcome_unknown`.
#[sqlx::test]
async fn a_grouped_append_cut_mid_statement_is_outcome_unknown_then_applied_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_writers(options, connect, 2).await;
    an_interrupted_append_answers_503_and_its_retry_applies_it_once(
        t,
        "pg_terminate_backend",
        "outcome_unknown",
    )
    .await;
}

#[sqlx::test]
async fn an_ungrouped_append_cut_mid_statement_is_outcome_unknown_then_applied_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_writers(options, connect, 0).await;
    an_interrupted_append_answers_503_and_its_retry_applies_it_once(
        t,
        "pg_terminate_backend",
        "outcome_unknown",
    )
    .await;
}

/// Its statement cancelled, as `statement_timeout` or an operator's `pg_cancel_backend` would:
/// the database refused it, so nothing was written: `database_busy`.
#[sqlx::test]
async fn a_cancelled_grouped_append_is_database_busy_and_its_retry_applies_it_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_writers(options, connect, 2).await;
    an_interrupted_append_answers_503_and_its_retry_applies_it_once(
        t,
        "pg_cancel_backend",
        "database_busy",
    )
    .await;
}

#[sqlx::test]
async fn a_cancelled_ungrouped_append_is_database_busy_and_its_retry_applies_it_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_writers(options, connect, 0).await;
    an_interrupted_append_answers_503_and_its_retry_applies_it_once(
        t,
        "pg_cancel_backend",
        "database_busy",
    )
    .await;
}

/// An instance whose database went read-only (a failover that left it on a standby): its reads
/// answer, its writes (a claimed one and a plain one) answer 503 `database_unavailable` with
/// `Retry-After`, never 500, and write nothing; the same request sent to a writable instance
/// is applied once.
async fn a_read_only_database_answers_writes_503_and_writes_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    group_commit_writers: usize,
) {
    let writable = TestApp::spawn(options, connect.clone()).await;
    let (_, token) = writable.user(&unique_email("owner")).await;
    let mut config = config();
    config.group_commit_writers = group_commit_writers;
    // The standby instance starts on a writable database; then every connection it takes from
    // its pool is read-only, as after a failover that left its address on a standby.
    let read_only = Arc::new(AtomicBool::new(false));
    let pool = {
        let read_only = read_only.clone();
        PgPoolOptions::new()
            .max_connections(8)
            .before_acquire(move |conn, _| {
                let read_only = read_only.load(Ordering::SeqCst);
                Box::pin(async move {
                    if read_only {
                        sqlx::query("SET default_transaction_read_only = on")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(arosaje::infra::db::session_settings(connect, &config.store))
            .await
            .unwrap()
    };
    let standby = TestApp::with_pool(pool, config, false).await;
    read_only.store(true, Ordering::SeqCst);

    let listed = standby.get("/api/plants", &token).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let claimed = create(&standby, &token, "standby-1", &fern()).await;
    assert_unavailable(&claimed, "database_unavailable");
    let plain = standby.post("/api/plants", Some(&token), fern()).await;
    assert_unavailable(&plain, "database_unavailable");
    assert_eq!(
        plant_counts(&writable.pool).await,
        (0, 0),
        "nothing written"
    );

    let retry = create(&writable, &token, "standby-1", &fern()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert!(!retry.headers.contains_key("idempotent-replayed"));
    assert_eq!(
        plant_counts(&writable.pool).await,
        (1, 1),
        "one plant, one event"
    );
}

#[sqlx::test]
async fn a_read_only_database_answers_grouped_writes_503(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    a_read_only_database_answers_writes_503_and_writes_nothing(options, connect, 2).await;
}

#[sqlx::test]
async fn a_read_only_database_answers_ungrouped_writes_503(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    a_read_only_database_answers_writes_503_and_writes_nothing(options, connect, 0).await;
}

/// One event the database refuses (a payload `jsonb` cannot hold) queued in the same group as
/// others: only its own append is refused, with the database's error; the others are appended.
#[sqlx::test]
async fn an_event_the_database_refuses_fails_only_its_own_append_in_a_group(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use arosaje::events::group_commit::{AppendFailure, GroupAppender, NewEvent};
    let pool = crate::helpers::pool(options, connect).await;
    let appender = GroupAppender::start(pool.clone(), 1, 16);
    let event = |id: &str, name: &str| NewEvent {
        aggregate_type: "Plant",
        aggregate_id: id.to_string(),
        sequence: 1,
        event_type: "PlantCreated".into(),
        event_version: "1".into(),
        payload: json!({"name": name}),
        metadata: json!({}),
        claim: None,
    };
    // The writer takes the first append alone and blocks on the commit-order lock; the next
    // three queue meanwhile and go as one group once it is released.
    let mut holder = arosaje::infra::db::begin(&pool).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let spawn = |event: NewEvent| {
        let appender = appender.clone();
        tokio::spawn(async move { appender.append(event).await })
    };
    let first = spawn(event("p-first", "first"));
    waiting_backend(&pool, "advisory", "INSERT INTO events").await;
    let before = spawn(event("p-before", "before"));
    let poison = spawn(event("p-poison", "nul \u{0} inside"));
    let after = spawn(event("p-after", "after"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();

    for (name, append) in [("first", first), ("before", before), ("after", after)] {
        let verdict = append.await.unwrap();
        assert!(matches!(verdict, Ok(Some(_))), "{name}: {verdict:?}");
    }
    match poison.await.unwrap() {
        Err(AppendFailure::Refused(err)) => {
            let code = err.as_database_error().and_then(|db| db.code());
            assert_eq!(code.as_deref(), Some("22P05"), "{err}");
        }
        other => panic!("the poison: {other:?}"),
    }
    let appended: Vec<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(appended, ["p-first", "p-before", "p-after"]);
}

/// A read whose backend is terminated while it waits (on a table lock a second session holds):
/// 503 `database_unavailable` with `Retry-After`, never 500; the next read answers.
#[sqlx::test]
async fn a_cut_read_is_503_database_unavailable(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    assert_eq!(
        create(&t, &token, "one", &fern()).await.status,
        StatusCode::CREATED
    );
    let mut holder = arosaje::infra::db::begin(&t.pool).await.unwrap();
    sqlx::query("LOCK TABLE plants IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (cut, ()) = tokio::join!(
        t.get("/api/plants", &token),
        terminate_waiting(&t.pool, "relation", "FROM plants"),
    );
    holder.rollback().await.unwrap();
    assert_unavailable(&cut, "database_unavailable");
    let read = t.get("/api/plants", &token).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["items"].as_array().map(Vec::len), Some(1));
}

/// A command that committed but whose answer was lost (its request failed after the commit and
/// released the claim, or its process died and the claim counts as abandoned): the retry with the
/// same key answers the first outcome (same plant), and the log gets no second event. The claim
/// says whether the command committed because the append marked it in its own statement.
#[sqlx::test]
async fn a_retry_after_a_lost_answer_answers_the_committed_outcome(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("owner")).await;
    let first = create(&t, &token, "lost", &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let (marked, event): (Option<i64>, i64) = sqlx::query_as(
        "SELECT k.committed_position, e.global_position FROM idempotency_keys k, events e \
          WHERE k.user_id = $1 AND e.event_type = 'PlantCreated'",
    )
    .bind(user_id)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(marked, Some(event), "the append marked its claim");

    let lose_answer = |claim: &'static str| {
        let pool = t.pool.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE idempotency_keys SET status = NULL, content_type = NULL, body = NULL, \
                        {claim} WHERE user_id = $1"
            ))
            .bind(user_id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // Still running (a fresh claim, not released): the retry waits.
    lose_answer("created_at = now()").await;
    let busy = create(&t, &token, "lost", &fern()).await;
    assert_eq!(
        (busy.status, busy.code()),
        (StatusCode::CONFLICT, "request_in_progress"),
        "{busy:?}"
    );
    for claim in [
        // Released by a 5xx after the commit (503 `outcome_unknown` whose commit went through).
        "released = true",
        // Left by a process that died after the commit.
        "created_at = now() - interval '10 minutes'",
    ] {
        lose_answer(claim).await;
        let retry = create(&t, &token, "lost", &fern()).await;
        assert_eq!(retry.status, StatusCode::CREATED, "{claim}: {retry:?}");
        assert!(!retry.headers.contains_key("idempotent-replayed"));
        assert_eq!(
            retry.body["id"], first.body["id"],
            "{claim}: the same plant"
        );
        assert_eq!(retry.body, first.body, "{claim}: the first outcome");
        assert_eq!(
            plant_counts(&t.pool).await,
            (1, 1),
            "{claim}: no second event"
        );
        let replay = create(&t, &token, "lost", &fern()).await;
        assert_eq!(replay.headers["idempotent-replayed"], "true", "{claim}");
        assert_eq!(replay.body, first.body, "{claim}");
    }
}

/// A read that records an access to personal data (an admin's list of accounts) whose access
/// record's append is cut: 503 `outcome_unknown`, never 500 (the cause survives the context).
#[sqlx::test]
async fn a_cut_access_record_is_503_outcome_unknown(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let mut holder = arosaje::infra::db::begin(&t.pool).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let (cut, ()) = tokio::join!(
        t.get("/api/admin/users", &admin),
        terminate_waiting(&t.pool, "advisory", "INSERT INTO events"),
    );
    holder.rollback().await.unwrap();
    assert_unavailable(&cut, "outcome_unknown");
    let read = t.get("/api/admin/users", &admin).await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
}

/// The pool skips sqlx's ping on a connection back from use a moment ago, but a connection that
/// died while it sat idle (a database restart, a dropped link) is pinged, found dead and replaced
/// before a query gets it.
#[sqlx::test]
async fn a_pooled_connection_that_died_idle_is_replaced_before_use(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = arosaje::infra::db::pool_options(&config().store)
        .max_connections(1)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let other = crate::helpers::pool(options, connect).await;
    signal(&other, "pg_terminate_backend", pid).await;
    tokio::time::sleep(arosaje::infra::db::PING_IDLE_AFTER + Duration::from_millis(100)).await;
    let replaced: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("a query after the connection died idle gets a live one");
    assert_ne!(replaced, pid);
}

/// A group-commit writer keeps its connection from one group to the next; when that connection
/// died while the writer was idle, the next append is still written (201), not refused as
/// `outcome_unknown`.
#[sqlx::test]
async fn a_group_writer_whose_connection_died_idle_appends_on_a_new_one(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_writers(options, connect, 1).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let first = t.post("/api/plants", Some(&token), fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    // The group statement without claims (see `events::group_commit`).
    let writer = backend(
        &t.pool,
        None,
        "FROM UNNEST($1::text[], $2::text[], $3::bigint[]",
    )
    .await;
    signal(&t.pool, "pg_terminate_backend", writer).await;
    tokio::time::sleep(arosaje::infra::db::PING_IDLE_AFTER + Duration::from_millis(100)).await;
    let second = t.post("/api/plants", Some(&token), fern()).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(plant_counts(&t.pool).await, (2, 2));
}
