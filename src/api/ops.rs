//! `/health`, `/ready`, `/metrics`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::docs::ErrorBody;
use super::error::ApiError;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    status: String,
}

/// Alive: the process answers (nothing else is checked).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    postgres: bool,
    redis: bool,
    /// The log's last position (null when PostgreSQL does not answer).
    log_head: Option<i64>,
    /// Each projection's checkpoint, how many events it is behind, and how many it parked.
    projections: BTreeMap<String, ProjectionLag>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionLag {
    position: i64,
    behind: i64,
    parked: i64,
}

/// Ready when PostgreSQL and Redis answer; reports how far each projection lags behind the log and
/// how many events it parked.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "PostgreSQL or Redis does not answer", body = Readiness),
    ))]
async fn ready(State(app): State<App>) -> impl IntoResponse {
    let (database, lag) = projection_lag(&app).await;
    let redis = app.sessions.ping().await;
    let head = database.as_ref().ok().copied();
    let ok = database.is_ok() && redis.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        status: if ok { "ready" } else { "unavailable" }.into(),
        postgres: database.is_ok(),
        redis: redis.is_ok(),
        log_head: head,
        projections: lag,
    };
    (status, Json(readiness))
}

/// The log's head (or why PostgreSQL did not answer) and how far each projection is behind it:
/// what `/ready` reports and `/metrics` exports as `projection_lag_events`.
async fn projection_lag(app: &App) -> (sqlx::Result<i64>, BTreeMap<String, ProjectionLag>) {
    let database =
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(max(global_position), 0) FROM events")
            .fetch_one(&app.pool)
            .await;
    let checkpoints = crate::projections::runner::all_checkpoints(&app.pool).await;
    let head = database.as_ref().ok().copied();
    let lag = checkpoints
        .as_ref()
        .map(|all| {
            all.iter()
                .map(|(name, state)| {
                    let position = state.position.global_position;
                    let behind = head.map(|h| (h - position).max(0)).unwrap_or(0);
                    let lag = ProjectionLag {
                        position,
                        behind,
                        parked: state.parked,
                    };
                    (name.clone(), lag)
                })
                .collect()
        })
        .unwrap_or_default();
    (database, lag)
}

/// Prometheus metrics, for the configured networks (`METRICS_ALLOWED_IPS`) or the holder of
/// `METRICS_TOKEN`; anyone else gets 403.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 403, description = "`forbidden`: not from `METRICS_ALLOWED_IPS` and no valid `METRICS_TOKEN`", body = ErrorBody),
    ))]
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
    // Events behind the log's head, per projection; left as last scraped when PostgreSQL does
    // not answer (`/ready` says so, and the scrape itself still succeeds).
    if let (Ok(_), lag) = projection_lag(&app).await {
        for (name, lag) in lag {
            metrics::gauge!("projection_lag_events", "projection" => name).set(lag.behind as f64);
        }
    }
    if let Some(memory) = process_memory() {
        metrics::gauge!("process_resident_memory_bytes").set(memory.resident as f64);
        if let Some(limit) = memory.limit {
            metrics::gauge!("process_memory_limit_bytes").set(limit as f64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// The process's resident memory and the memory it may use, in bytes.
struct ProcessMemory {
    resident: u64,
    /// The cgroup's limit (a container's memory limit), else the machine's memory.
    limit: Option<u64>,
}

/// Read from procfs and cgroupfs (small in-kernel files, so plain reads); `None` where there is no
/// `/proc` (not Linux), so nothing is exported rather than a wrong zero.
fn process_memory() -> Option<ProcessMemory> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let resident = read("/proc/self/status").and_then(|s| kib_field(&s, "VmRSS:"))?;
    let machine = read("/proc/meminfo").and_then(|s| kib_field(&s, "MemTotal:"));
    // cgroup v2 says `max` when unlimited; v1 a huge number: either way the machine's memory.
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&limit| machine.is_none_or(|m| limit < m));
    Some(ProcessMemory {
        resident,
        limit: cgroup.or(machine),
    })
}

/// A `Name:   1234 kB` line of `/proc/self/status` or `/proc/meminfo`, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::kib_field;

    #[test]
    fn kib_fields_of_procfs() {
        let status = "Name:\tarosaje\nVmRSS:\t   20480 kB\nThreads:\t9\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(20 * 1024 * 1024));
        assert_eq!(kib_field(status, "VmSwap:"), None);
        assert_eq!(kib_field("VmRSS: lots", "VmRSS:"), None);
    }
}
