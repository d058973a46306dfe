//! `Idempotency-Key` on creating POSTs: the same key from the same user within 24 h returns the
//! first answer and appends nothing more.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, Reply, TestApp};

/// `POST /api/plants` with an optional `Idempotency-Key`.
async fn create(t: &TestApp, token: &str, key: Option<&str>, body: &Value) -> Reply {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/plants")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    t.raw(request.body(Body::from(body.to_string())).unwrap())
        .await
}

/// (rows in `plants`, `PlantCreated` events in the log).
async fn plant_counts(t: &TestApp) -> (i64, i64) {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM plants")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PlantCreated'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    (rows, events)
}

fn fern() -> Value {
    json!({"name": "Fern", "care": {"watering_interval_days": 3}})
}

#[sqlx::test]
async fn the_same_key_twice_creates_one_plant_and_replays_the_first_answer(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    let first = create(&t, &token, Some("order-1"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let second = create(&t, &token, Some("order-1"), &fern()).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.body, first.body, "the very first answer, same id");
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(second.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(plant_counts(&t).await, (1, 1));
}

#[sqlx::test]
async fn keys_belong_to_their_user(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (alice_id, alice) = t.user(&unique_email("alice")).await;
    let (bob_id, bob) = t.user(&unique_email("bob")).await;

    let hers = create(&t, &alice, Some("same-key"), &fern()).await;
    let his = create(&t, &bob, Some("same-key"), &fern()).await;
    assert_eq!(hers.status, StatusCode::CREATED, "{hers:?}");
    assert_eq!(his.status, StatusCode::CREATED, "{his:?}");
    assert!(!his.headers.contains_key("idempotent-replayed"));
    assert_eq!(hers.body["owner_id"], alice_id.to_string());
    assert_eq!(his.body["owner_id"], bob_id.to_string());
    assert_eq!(plant_counts(&t).await, (2, 2));
}

#[sqlx::test]
async fn a_key_reused_for_another_body_is_refused(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    let first = create(&t, &token, Some("k-42"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let other = create(&t, &token, Some("k-42"), &json!({"name": "Cactus"})).await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        "{other:?}"
    );
    assert_eq!(plant_counts(&t).await, (1, 1));
}

#[sqlx::test]
async fn without_a_key_every_request_creates(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    for _ in 0..2 {
        let created = create(&t, &token, None, &fern()).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        assert!(!created.headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(plant_counts(&t).await, (2, 2));
}

#[sqlx::test]
async fn an_invalid_key_is_422(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    let too_long = "k".repeat(256);
    for key in ["", "has space", too_long.as_str()] {
        let reply = create(&t, &token, Some(key), &fern()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_idempotency_key"),
            "key {key:?}: {reply:?}"
        );
    }
    let longest = "k".repeat(255);
    let fine = create(&t, &token, Some(&longest), &fern()).await;
    assert_eq!(fine.status, StatusCode::CREATED, "{fine:?}");
    assert_eq!(plant_counts(&t).await, (1, 1));
}

#[sqlx::test]
async fn without_a_valid_token_the_key_changes_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let reply = create(&t, "not-a-jwt", Some("k"), &fern()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test]
async fn concurrent_requests_with_one_key_create_one_plant(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    let body = fern();
    let (a, b) = tokio::join!(
        create(&t, &token, Some("double-click"), &body),
        create(&t, &token, Some("double-click"), &body),
    );
    let (winner, other) =
        if a.headers.contains_key("idempotent-replayed") || a.status == StatusCode::CONFLICT {
            (b, a)
        } else {
            (a, b)
        };
    assert_eq!(winner.status, StatusCode::CREATED, "{winner:?}");
    match other.status {
        StatusCode::CREATED => {
            assert_eq!(other.headers["idempotent-replayed"], "true");
            assert_eq!(other.body, winner.body);
        }
        StatusCode::CONFLICT => {
            assert_eq!(other.code(), "request_in_progress", "{other:?}");
            assert_eq!(other.headers["retry-after"], "1");
        }
        status => panic!("unexpected {status}: {other:?}"),
    }
    assert_eq!(plant_counts(&t).await, (1, 1));
    // Once the first is done, a retry gets its answer.
    let retry = create(&t, &token, Some("double-click"), &fern()).await;
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body, winner.body);
}

#[sqlx::test]
async fn a_validation_error_is_the_first_answer_too(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let empty = json!({"name": ""});

    let first = create(&t, &token, Some("bad-1"), &empty).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY, "{first:?}");
    let again = create(&t, &token, Some("bad-1"), &empty).await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(plant_counts(&t).await, (0, 0));
}

#[sqlx::test]
async fn an_abandoned_claim_is_taken_over(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("owner")).await;

    // The same request, claimed long ago by a process that died before its command committed
    // (no committed position on the claim; `faults.rs` has the one that died after).
    let first = create(&t, &token, Some("crashed"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, body = NULL, content_type = NULL, \
                committed_position = NULL, created_at = now() - interval '10 minutes' \
          WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(&t.pool)
    .await
    .unwrap();
    let rerun = create(&t, &token, Some("crashed"), &fern()).await;
    assert_eq!(rerun.status, StatusCode::CREATED, "{rerun:?}");
    assert!(!rerun.headers.contains_key("idempotent-replayed"));
    assert_ne!(rerun.body["id"], first.body["id"], "the request ran again");

    // A claim just made is still running: 409 with Retry-After.
    sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, body = NULL, content_type = NULL, \
                created_at = now() WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(&t.pool)
    .await
    .unwrap();
    let busy = create(&t, &token, Some("crashed"), &fern()).await;
    assert_eq!(
        (busy.status, busy.code()),
        (StatusCode::CONFLICT, "request_in_progress"),
        "{busy:?}"
    );
    assert_eq!(busy.headers["retry-after"], "1");

    // A key older than 24 h is free again.
    sqlx::query(
        "UPDATE idempotency_keys SET status = 201, created_at = now() - interval '25 hours' \
          WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(&t.pool)
    .await
    .unwrap();
    let fresh = create(&t, &token, Some("crashed"), &json!({"name": "Other"})).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{fresh:?}");
    assert_eq!(fresh.body["name"], "Other");
    assert_eq!(plant_counts(&t).await, (3, 3));
}

#[sqlx::test]
async fn an_oversized_body_with_a_key_is_413(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let huge = json!({"name": "Big", "description": "x".repeat(100 * 1024)});
    let reply = create(&t, &token, Some("big"), &huge).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{reply:?}"
    );
}

/// A second session of the user of `email` (another device).
async fn second_session(t: &TestApp, email: &str) -> String {
    let login = t.login(email, crate::helpers::PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    login.body["access_token"].as_str().unwrap().to_string()
}

#[sqlx::test]
async fn a_replay_after_logout_is_401_not_the_stored_answer(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    let first = create(&t, &token, Some("before-logout"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let replayed = create(&t, &token, Some("before-logout"), &fern()).await;
    assert_eq!(
        replayed.headers["idempotent-replayed"], "true",
        "{replayed:?}"
    );
    let out = t.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{out:?}");

    let after = create(&t, &token, Some("before-logout"), &fern()).await;
    assert_eq!(
        (after.status, after.code()),
        (StatusCode::UNAUTHORIZED, "session_revoked"),
        "{after:?}"
    );
    assert!(!after.headers.contains_key("idempotent-replayed"));
    assert_eq!(plant_counts(&t).await, (1, 1));
}

#[sqlx::test]
async fn a_replay_after_the_session_is_revoked_or_the_user_disabled_is_401(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;

    // Revoked from another device.
    let email = unique_email("phone-lost");
    let (_, phone) = t.user(&email).await;
    let laptop = second_session(&t, &email).await;
    let first = create(&t, &phone, Some("from-phone"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let phone_session = t.app.jwt.verify(&phone).unwrap().sid;
    let revoked = t
        .delete(&format!("/api/me/sessions/{phone_session}"), &laptop)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{revoked:?}");
    let after = create(&t, &phone, Some("from-phone"), &fern()).await;
    assert_eq!(
        (after.status, after.code()),
        (StatusCode::UNAUTHORIZED, "session_revoked"),
        "{after:?}"
    );
    assert!(!after.headers.contains_key("idempotent-replayed"));

    // Disabled by an admin.
    let (user_id, token) = t.user(&unique_email("disabled")).await;
    let first = create(&t, &token, Some("before-disable"), &fern()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let disabled = t
        .call(
            Method::POST,
            &format!("/api/admin/users/{user_id}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{disabled:?}");
    let after = create(&t, &token, Some("before-disable"), &fern()).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{after:?}");
    assert!(!after.headers.contains_key("idempotent-replayed"));
    assert_eq!(plant_counts(&t).await, (2, 2));
}

#[sqlx::test]
async fn a_stored_refusal_is_not_replayed_to_another_role(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (botanist_id, botanist) = t.user_with_role(&admin, "BOTANIST").await;

    // Botanists do not create plants: 403, kept and replayed to the same role.
    let refused = create(&t, &botanist, Some("my-fern"), &fern()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let again = create(&t, &botanist, Some("my-fern"), &fern()).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN, "{again:?}");
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Made a USER, the same session retries the same request: it runs, and creates.
    let changed = t
        .call(
            Method::PUT,
            &format!("/api/admin/users/{botanist_id}/role"),
            Some(&admin),
            Some(json!({"role": "USER"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    let created = create(&t, &botanist, Some("my-fern"), &fern()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert!(!created.headers.contains_key("idempotent-replayed"));
    assert_eq!(created.body["owner_id"], botanist_id.to_string());
    // From then on that success is the answer.
    let replayed = create(&t, &botanist, Some("my-fern"), &fern()).await;
    assert_eq!(
        replayed.headers["idempotent-replayed"], "true",
        "{replayed:?}"
    );
    assert_eq!(replayed.body, created.body);
    assert_eq!(plant_counts(&t).await, (1, 1));
}
