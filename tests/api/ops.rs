//! Operations endpoints: liveness, readiness with projection lag, Prometheus metrics.

use axum::http::{Method, StatusCode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, TestApp};

#[sqlx::test]
async fn health_ready_and_metrics_describe_the_service(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("ops")).await;
    assert_eq!(
        t.create_plant(&token, "Observed").await.status,
        StatusCode::CREATED
    );

    let running: Vec<&str> = t
        .app
        .projections
        .names()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        running,
        arosaje::PROJECTION_NAMES,
        "`projections list` tells the truth"
    );

    let health = t.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (health.status, &health.body["status"]),
        (StatusCode::OK, &"ok".into())
    );

    let ready = t.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["postgres"], true);
    assert_eq!(ready.body["redis"], true);
    // Registration, the login's new device, the plant.
    assert_eq!(ready.body["log_head"], 3);
    assert_eq!(ready.body["projections"]["plants"]["position"], 3);

    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().expect("text exposition");
    for name in [
        "http_request_duration_seconds",
        "events_appended_total",
        "projection_lag_seconds",
        "db_pool_connections_in_use",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains(r#"route="/api/plants""#),
        "latency is labelled by route"
    );
}
