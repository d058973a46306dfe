//! The HTTP edge: one router per resource, the error mapping, and the auth extractor.

pub mod admin;
pub mod advice;
pub mod audit;
pub mod auth;
pub mod botanist;
pub mod conversations;
pub mod docs;
pub mod error;
pub mod export;
pub mod extract;
pub mod guard;
pub mod idempotency;
pub mod limits;
pub mod me;
pub mod mfa;
pub mod ops;
pub mod pagination;
pub mod photos;
pub mod plants;
pub mod security_log;
pub mod session_cookie;
pub mod sittings;
pub mod token;
pub mod users;
pub mod web;
pub mod ws;

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::events::store::Committed;
use crate::App;
use error::ApiError;

/// The whole HTTP API; what `serve` runs and what tests drive.
/// Every route is registered with its OpenAPI description ([`docs::routes`]); the document
/// served at `/openapi.json` is the one these routes produced.
pub fn router(app: App) -> Router {
    let (routes, mut document) = docs::routes().split_for_parts();
    docs::complete(&mut document);
    let routes = routes.layer(axum::Extension(docs::Served::new(&document)));
    with_layers(routes, app)
}

/// The edge every route sits behind: fallbacks, rate limits, body limit, metrics, CORS, security
/// headers, the time limit, panics caught into a JSON 500, request logs and request ids. Tests
/// put routes of their own behind it.
pub fn with_layers(routes: Router<App>, app: App) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let https = app.config.public_url.starts_with("https://");
    let proxies = app.config.trusted_proxies.clone();
    // Unknown paths: the web app when one is configured (never under the API's paths), else 404.
    let site = web::Site::load(&app.config);
    routes
        .fallback(move |request: Request| web::fallback(site.clone(), request))
        .method_not_allowed_fallback(|| async {
            error::error_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limits::rate_limit,
        ))
        // For route middleware that needs the app (idempotency): routes are built without it.
        .layer(axum::Extension(app.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.max_json_body_bytes,
        ))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(cors(&app.config.cors_allowed_origins))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // The API serves JSON only: nothing may load, run or frame anything from it. A page that
        // needs more (the docs UI, later) sets its own policy, which this one does not replace.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(axum::middleware::from_fn_with_state(
            https,
            strict_transport,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(app.config.request_timeout_secs),
            time_limit,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_answer,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request| {
                    // The path only: query strings can carry personal data (`?q=` on user lists).
                    // The route template groups requests; `user_id` is recorded by the auth
                    // extractor once the caller is known. The request id is the events'
                    // correlation id unless the client sent one, and projectors log it.
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route = request
                            .extensions()
                            .get::<MatchedPath>()
                            .map_or("unmatched", MatchedPath::as_str),
                        path = %request.uri().path(),
                        client_ip = %limits::client_ip(request, &proxies),
                        request_id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                        user_id = tracing::field::Empty,
                    )
                })
                // One line per answered request (status, latency), in its span.
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn(sanitise_request_ids))
        .with_state(app)
}

/// HSTS on every answer when the service is reached over https (`PUBLIC_URL`).
async fn strict_transport(
    axum::extract::State(https): axum::extract::State<bool>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if https {
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    response
}

/// A handler that panicked: logged, and answered like any other internal error.
fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = detail, "a handler panicked");
    metrics::counter!("http_panics_total").increment(1);
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Browsers may call the API only from the configured origins.
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(origin = o, "ignoring an unparseable CORS origin");
                None
            }
        })
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-correlation-id"),
        ])
        .expose_headers([
            HeaderName::from_static("idempotent-replayed"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            HeaderName::from_static("retry-after"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// Requests that take longer than the configured limit get a JSON 408 (their work is dropped;
/// a command already committed stays committed and is visible to the next read).
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::error_answer(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        ),
    }
}

/// Client-sent request ids are kept only when well formed ([`extract::is_valid_request_id`]):
/// otherwise `x-request-id` is dropped, for the request-id layer to set a fresh UUID, and
/// `x-correlation-id` is dropped.
async fn sanitise_request_ids(mut request: Request, next: Next) -> Response {
    for name in ["x-request-id", "x-correlation-id"] {
        let mut values = request.headers().get_all(name).iter();
        let keep = match (values.next(), values.next()) {
            (None, _) => true,
            (Some(value), None) => extract::is_valid_request_id(value.as_bytes()),
            _ => false,
        };
        if !keep {
            request.headers_mut().remove(name);
        }
    }
    next.run(request).await
}

/// Request latency by route and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status)
    .record(start.elapsed().as_secs_f64());
    response
}

/// Read-your-writes: waits (bounded) until the read models fed by `aggregate_type` have reached
/// the command's events. False on time-out: answer 202 with the position.
pub async fn settle(app: &App, aggregate_type: &str, committed: &Committed) -> bool {
    match committed.position {
        None => true,
        Some(position) => {
            app.projections
                .wait_for(
                    aggregate_type,
                    position,
                    app.config.read_your_writes_timeout(),
                )
                .await
        }
    }
}

/// 202 for a command whose read models have not caught up in time.
pub fn accepted(id: uuid::Uuid, committed: &Committed) -> Response {
    let body = docs::Pending {
        id,
        status: "pending".into(),
        version: committed.version,
        position: committed.position.map(|p| p.global_position),
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The resource a command produced, with the command's log position.
pub fn positioned<T>(resource: T, committed: &Committed) -> docs::Positioned<T> {
    docs::Positioned {
        resource,
        position: committed.position.map(|p| p.global_position),
    }
}
