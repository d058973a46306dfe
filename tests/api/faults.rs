//! Database faults under real connections: a backend of the test's own database is terminated
//! (`pg_terminate_backend`) while a request waits on a lock, as a PostgreSQL restart or a dropped
//! connection would cut it. Nothing answers 500; an append that may have committed answers 503
//! `outcome_unknown`, and a retry with the same `Idempotency-Key` resolves it: one plant, one
//! event.

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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid() \
                AND wait_event_type = 'Lock' AND wait_event = $1 \
                AND position($2 in query) > 0 \
              LIMIT 1",
        )
        .bind(wait_event)
        .bind(statement)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend waits on a {wait_event} lock running {statement}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let terminated: bool = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
          WHERE pid = $1 AND datname = current_database()",
    )
    .bind(pid)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(terminated);
}

/// An append blocked on the commit-order lock (held by a second session) has its backend
/// terminated: 503 `outcome_unknown` with `Retry-After`, nothing committed; the retry with the
/// same key applies the request once.
async fn a_cut_append_is_outcome_unknown_and_its_retry_applies_it_once(t: TestApp) {
    let (_, token) = t.user(&unique_email("owner")).await;
    let mut holder = arosaje::infra::db::begin(&t.pool).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let body = fern();
    let (cut, ()) = tokio::join!(
        create(&t, &token, "cut-1", &body),
        terminate_waiting(&t.pool, "advisory", "INSERT INTO events"),
    );
    holder.rollback().await.unwrap();
    assert_unavailable(&cut, "outcome_unknown");
    assert_eq!(plant_counts(&t.pool).await, (0, 0), "nothing committed");

    let retry = create(&t, &token, "cut-1", &fern()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert!(!retry.headers.contains_key("idempotent-replayed"));
    let again = create(&t, &token, "cut-1", &fern()).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, retry.body);
    assert_eq!(plant_counts(&t.pool).await, (1, 1), "one plant, one event");
}

#[sqlx::test]
async fn a_grouped_append_cut_mid_statement_is_outcome_unknown_then_applied_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut config = config();
    config.group_commit_writers = 2;
    let t = TestApp::with_config(options, connect, config, true).await;
    a_cut_append_is_outcome_unknown_and_its_retry_applies_it_once(t).await;
}

#[sqlx::test]
async fn an_ungrouped_append_cut_mid_statement_is_outcome_unknown_then_applied_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut config = config();
    config.group_commit_writers = 0;
    let t = TestApp::with_config(options, connect, config, true).await;
    a_cut_append_is_outcome_unknown_and_its_retry_applies_it_once(t).await;
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
