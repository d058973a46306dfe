//! The edge every route sits behind: security headers, panics, and who may read `/metrics`.

use arosaje::App;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower::ServiceExt;

use crate::helpers::{config, TestApp};

#[sqlx::test]
async fn api_answers_forbid_loading_anything_and_https_adds_hsts(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options.clone(), connect.clone()).await;
    for path in ["/health", "/api/plants", "/nowhere"] {
        let reply = t.call(Method::GET, path, None, None).await;
        assert_eq!(
            reply.headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'none'; frame-ancestors 'none'",
            "{path}"
        );
        assert!(
            !reply
                .headers
                .contains_key(header::STRICT_TRANSPORT_SECURITY),
            "no HSTS over plain http"
        );
    }
    let mut https = config();
    https.public_url = "https://app.arosaje.example".into();
    let secure = TestApp::with_config(options, connect, https, false).await;
    let reply = secure.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        reply.headers[header::STRICT_TRANSPORT_SECURITY],
        "max-age=63072000; includeSubDomains"
    );
}

#[sqlx::test]
async fn a_panicking_handler_answers_a_json_500(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let routes: Router<App> = Router::new().route(
        "/boom",
        get(|| async {
            let found: Option<&str> = "".split(',').nth(5);
            found.expect("a bug in a handler")
        }),
    );
    let router = arosaje::api::with_layers(routes, t.app.clone()).layer(MockConnectInfo(
        std::net::SocketAddr::from(([10, 9, 9, 9], 1)),
    ));
    let response = router
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().contains_key("x-request-id"));
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(
        !body.to_string().contains("a bug in a handler"),
        "details stay in the log"
    );
}

#[sqlx::test]
async fn metrics_are_served_to_configured_networks_or_with_the_token(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut closed = config();
    closed.metrics_allowed_ips = vec!["127.0.0.1/32".into()];
    closed.metrics_token = Some(arosaje::config::Secret::new(
        "a-metrics-token-of-some-length",
    ));
    let t = TestApp::with_config(options, connect, closed, false).await;
    let outside = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        (outside.status, outside.code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let wrong = t
        .call(Method::GET, "/metrics", Some("not-the-token"), None)
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let scraper = t
        .call(
            Method::GET,
            "/metrics",
            Some("a-metrics-token-of-some-length"),
            None,
        )
        .await;
    assert_eq!(scraper.status, StatusCode::OK);
    assert!(scraper
        .body
        .as_str()
        .unwrap_or_default()
        .contains("db_pool_connections"));
}
