//! `/health`, `/ready`, `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// Ready when PostgreSQL and Redis answer; reports how far each projection lags behind the log and
/// how many events it parked.
async fn ready(State(app): State<App>) -> impl IntoResponse {
    let database =
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(max(global_position), 0) FROM events")
            .fetch_one(&app.pool)
            .await;
    let redis = app.sessions.ping().await;
    let checkpoints = crate::projections::runner::all_checkpoints(&app.pool).await;
    let head = database.as_ref().ok().copied();
    let lag: serde_json::Map<String, serde_json::Value> = checkpoints
        .as_ref()
        .map(|all| {
            all.iter()
                .map(|(name, state)| {
                    let position = state.position.global_position;
                    let behind = head.map(|h| (h - position).max(0)).unwrap_or(0);
                    (
                        name.clone(),
                        json!({"position": position, "behind": behind, "parked": state.parked}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ok = database.is_ok() && redis.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "unavailable" },
            "postgres": database.is_ok(),
            "redis": redis.is_ok(),
            "log_head": head,
            "projections": lag,
        })),
    )
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let size = app.pool.size();
    let idle = app.pool.num_idle() as u32;
    metrics::gauge!("db_pool_connections").set(f64::from(size));
    metrics::gauge!("db_pool_connections_in_use").set(f64::from(size.saturating_sub(idle)));
    metrics::gauge!("db_pool_connections_max")
        .set(f64::from(app.pool.options().get_max_connections()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
}
