//! `/health`, `/ready`, `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
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

/// Prometheus metrics, for the configured networks (`METRICS_ALLOWED_IPS`) or the holder of
/// `METRICS_TOKEN`; anyone else gets 403.
async fn metrics(State(app): State<App>, request: axum::extract::Request) -> Response {
    let from_allowed = super::limits::client_addr(&request, &app.config.trusted_proxies)
        .is_some_and(|ip| {
            app.config
                .metrics_allowed_ips
                .iter()
                .filter_map(|n| crate::config::Network::parse(n))
                .any(|n| n.contains(ip))
        });
    let with_token = app
        .config
        .metrics_token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
        .is_some_and(|token| {
            let presented = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            use subtle::ConstantTimeEq;
            bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
        });
    if !from_allowed && !with_token {
        return ApiError::forbidden(
            "metrics are served to configured addresses or with METRICS_TOKEN",
        )
        .into_response();
    }
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
        .into_response()
}
