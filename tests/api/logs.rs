//! Structured logs: one request id followed from HTTP to its events' projection. The JSON lines
//! are captured as `LOG_FORMAT=json` writes them (see `src/main.rs`).
//!
//! The subscriber is this thread's default: `#[sqlx::test]` runs each test on a current-thread
//! runtime, so the app's projectors, spawned on it, log through it too, and other tests (on
//! other threads) do not.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{capture_logs, eventually, unique_email, TestApp};

#[sqlx::test]
async fn one_request_id_follows_a_command_from_http_to_its_projection(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("logged")).await;

    let (captured, _guard) = capture_logs();

    let request_id = format!("req-{}", uuid::Uuid::new_v4().simple());
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/plants")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", &request_id)
        .body(Body::from(
            json!({"name": "Traced", "care": {"watering_interval_days": 3}}).to_string(),
        ))
        .expect("request");
    let created = t.raw(request).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");

    // The request's lines: its id, its caller and its route template, in its span.
    let lines = captured.lines();
    let answered: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == request_id.as_str())
        .collect();
    assert!(!answered.is_empty(), "{lines:#?}");
    for line in &answered {
        assert_eq!(line["span"]["user_id"], user_id.to_string(), "{line}");
        assert_eq!(line["span"]["route"], "/api/plants", "{line}");
        assert_eq!(line["span"]["method"], "POST", "{line}");
    }
    assert!(
        answered
            .iter()
            .any(|l| l["fields"]["status"] == 201 && l["level"] == "INFO"),
        "an answer line: {answered:#?}"
    );

    // Its event, projected: the same id as the event's correlation id.
    eventually(
        "the plants projector's line",
        Duration::from_secs(10),
        || async {
            captured.lines().iter().any(|l| {
                l["fields"]["message"] == "event projected"
                    && l["fields"]["projection"] == "plants"
                    && l["fields"]["event_type"] == "PlantCreated"
                    && l["fields"]["correlation_id"] == request_id.as_str()
            })
        },
    )
    .await;
}

/// Reached only by the test below, so its first use is the test's own.
fn log_from_a_fresh_callsite() {
    tracing::warn!(target: "capture_check", "reached");
}

/// tracing caches each callsite's interest for the whole process. Without the helpers' global
/// interest keeper, a line first logged on a thread with no subscriber while a single capture
/// is registered is cached as never logged, and the capture misses it for good: the cause of
/// a flake in `hardening.rs`. Run alone, this test fails without the keeper.
#[test]
fn a_line_first_logged_on_another_thread_still_reaches_a_capture() {
    let (captured, guard) = capture_logs();
    std::thread::spawn(log_from_a_fresh_callsite)
        .join()
        .expect("the other thread");
    log_from_a_fresh_callsite();
    drop(guard);
    let reached = captured
        .lines()
        .iter()
        .filter(|l| l["target"] == "capture_check")
        .count();
    assert_eq!(reached, 1, "{}", captured.text());
}
