//! GDPR exports: only the events a person took part in or that concern them; one export at a
//! time per caller; a client that stops reading neither pins a database connection nor keeps its
//! slot past the stall deadline.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower::ServiceExt;
use uuid::Uuid;

use crate::helpers::{config, unique_email, TestApp};
use crate::sittings::{act, owner_with_plants, request, sitting_body, LYON};

fn events(doc: &Value) -> Vec<Value> {
    doc["events"].as_array().cloned().unwrap_or_default()
}

#[sqlx::test]
async fn an_export_holds_the_events_of_the_person_not_whole_streams_they_touched(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (admin_id, admin) = t.admin().await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (bob, bob_token) = t.verified_user(&unique_email("bob")).await;
    let (carl, carl_token) = t.verified_user(&unique_email("carl")).await;
    let sitting = request(&t, &owner, sitting_body(&plants, 1, 3, LYON, "Lyon")).await;
    let sitting = sitting.body["id"].as_str().expect("id").to_string();
    for token in [&bob_token, &carl_token] {
        let applied = act(&t, token, &sitting, "applications", json!({})).await;
        assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    }
    let accepted = act(&t, &owner, &sitting, "accept", json!({"sitter_id": carl})).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    // The admin acts on Bob's account; Bob logs in again.
    let disabled = t
        .post(
            &format!("/api/admin/users/{bob}/disable"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{disabled:?}");
    let enabled = t
        .post(
            &format!("/api/admin/users/{bob}/enable"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{enabled:?}");

    // Bob's export: his application, not Carl's, nor the acceptance of someone else.
    let bobs = t.get("/api/me/export", &bob_token).await;
    assert_eq!(
        bobs.status,
        StatusCode::UNAUTHORIZED,
        "disabled: signed out"
    );
    let login = t
        .login(&email_of(&t, bob).await, crate::helpers::PASSWORD)
        .await;
    let bob_token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let bobs = t.get("/api/me/export", &bob_token).await;
    assert_eq!(bobs.status, StatusCode::OK, "{bobs:?}");
    let on_sitting: Vec<String> = events(&bobs.body)
        .iter()
        .filter(|e| e["aggregate_id"] == sitting.as_str())
        .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        on_sitting,
        vec!["ApplicationSubmitted".to_string()],
        "{on_sitting:?}"
    );
    // His account's stream is his, whoever acted on it.
    let on_account: Vec<String> = events(&bobs.body)
        .iter()
        .filter(|e| e["aggregate_id"] == bob.to_string())
        .map(|e| e["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    for kind in ["UserRegistered", "UserDisabled", "UserEnabled"] {
        assert!(on_account.iter().any(|k| k == kind), "{on_account:?}");
    }

    // The admin's export: what they did to Bob's account, none of Bob's own events.
    let admins = t.get("/api/me/export", &admin).await;
    assert_eq!(admins.status, StatusCode::OK, "{admins:?}");
    let foreign: Vec<Value> = events(&admins.body)
        .into_iter()
        .filter(|e| e["aggregate_type"] == "User" && e["aggregate_id"] != admin_id.to_string())
        .collect();
    let kinds: Vec<&str> = foreign
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["UserDisabled", "UserEnabled"], "{foreign:?}");
    let text = admins.body.to_string();
    assert!(
        !text.contains(&bob.to_string()),
        "Bob appears by pseudonym only"
    );
}

/// The e-mail of a user, from the read model (the test kept only the token).
async fn email_of(t: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&t.pool)
        .await
        .expect("email")
}

fn export_request(token: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri("/api/me/export")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

/// An app whose exports send one event per page, and give up on a client after `stall_secs`.
async fn app_with_small_pages(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    stall_secs: u64,
) -> TestApp {
    let mut config = config();
    // Some tests here register 21 owners, more than one client may per minute (20): not their
    // subject, and a quiet machine is fast enough to meet the limit.
    config.rate_limit_auth = 1000;
    config.export_page_events = 1;
    config.export_stall_secs = stall_secs;
    TestApp::with_config(options, connect, config, true).await
}

#[sqlx::test]
async fn one_export_at_a_time_and_a_reader_that_stalls_is_cut_off(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = app_with_small_pages(options, connect, 2).await;
    let (_, token, _) = owner_with_plants(&t, 6).await;
    // Started, not read: its pages wait on the client.
    let first = t
        .router
        .clone()
        .oneshot(export_request(&token))
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
    let second = t.get("/api/me/export", &token).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS, "{second:?}");
    assert_eq!(second.code(), "export_in_progress");
    assert!(second.headers.contains_key("retry-after"));
    // After the stall deadline the slot is free again, and the stalled body reads as broken.
    crate::helpers::eventually(
        "the export slot is freed",
        Duration::from_secs(20),
        || async {
            t.router
                .clone()
                .oneshot(export_request(&token))
                .await
                .expect("infallible")
                .status()
                == StatusCode::OK
        },
    )
    .await;
    let read = first.into_body().collect().await;
    assert!(read.is_err(), "a cut export does not end like a whole one");
}

#[sqlx::test]
async fn unread_exports_do_not_pin_the_database(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = app_with_small_pages(options, connect, 600).await;
    let (_, reader, _) = owner_with_plants(&t, 1).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let (_, token, _) = owner_with_plants(&t, 3).await;
        let response = t
            .router
            .clone()
            .oneshot(export_request(&token))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        stalled.push(response);
    }
    // 20 exports wait on their clients (more than the pool's 16 connections); reads and writes
    // go on.
    let listed = tokio::time::timeout(Duration::from_secs(10), t.get("/api/plants", &reader))
        .await
        .expect("GET /api/plants answered while exports stall");
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let created = tokio::time::timeout(Duration::from_secs(10), t.create_plant(&reader, "Ficus"))
        .await
        .expect("POST /api/plants answered while exports stall");
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    // And each of them is still whole when finally read.
    let body = stalled
        .pop()
        .expect("one")
        .into_body()
        .collect()
        .await
        .expect("whole")
        .to_bytes();
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        doc["event_count"].as_u64(),
        Some(events(&doc).len() as u64),
        "{doc}"
    );
    assert!(doc["event_count"].as_u64().is_some_and(|n| n >= 4), "{doc}");
}
