//! Structured logs: one request id followed from HTTP to its events' projection. The JSON lines
//! are captured as `LOG_FORMAT=json` writes them (see `src/main.rs`).
//!
//! The subscriber is this thread's default: `#[sqlx::test]` runs each test on a current-thread
//! runtime, so the app's projectors, spawned on it, log through it too, and other tests (on
//! other threads) do not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{eventually, unique_email, TestApp};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().expect("buffer").clone()).expect("UTF-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }
}

#[sqlx::test]
async fn one_request_id_follows_a_command_from_http_to_its_projection(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("logged")).await;

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter("info")
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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
