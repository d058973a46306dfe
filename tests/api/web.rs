//! The web app served at `/` from `WEB_DIR`: its files, the shell for client routes, a CSP that
//! allows only itself, and the API's paths never shadowed.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{config, TestApp};

const INDEX: &str = r#"<!DOCTYPE html><html><head><script>window.__boot={}</script><script type="module" src="/_nuxt/entry.js"></script></head><body><div id="__nuxt"></div></body></html>"#;

/// A built web app in a folder of its own.
fn site() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("arosaje-test-web-{}", Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("_nuxt")).expect("web dir");
    std::fs::write(dir.join("index.html"), INDEX).expect("index");
    std::fs::write(dir.join("_nuxt/entry.js"), "console.log('app')").expect("entry");
    std::fs::write(dir.join("manifest.webmanifest"), r#"{"name":"A'rosa-je"}"#).expect("manifest");
    dir
}

async fn web_app(options: PgPoolOptions, connect: PgConnectOptions) -> TestApp {
    let mut config = config();
    config.web_dir = Some(site());
    config.web_tile_url = Some("https://tiles.example.org/{z}/{x}/{y}.png".into());
    TestApp::with_config(options, connect, config, false).await
}

async fn send(t: &TestApp, method: Method, uri: &str) -> crate::helpers::Reply {
    t.raw(
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

fn header_of(reply: &crate::helpers::Reply, name: header::HeaderName) -> &str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[sqlx::test]
async fn the_web_app_is_served_with_its_own_policy_and_client_routes_get_the_shell(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = web_app(options, connect).await;

    for uri in [
        "/",
        "/sittings/5a3f0000-0000-0000-0000-000000000000",
        "/login?next=%2Fplants",
    ] {
        let reply = send(&t, Method::GET, uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}");
        assert_eq!(reply.body.as_str(), Some(INDEX), "{uri}");
        assert!(
            header_of(&reply, header::CONTENT_TYPE).starts_with("text/html"),
            "{uri}"
        );
        let csp = header_of(&reply, header::CONTENT_SECURITY_POLICY);
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(csp.contains("script-src 'self' 'sha256-"), "{csp}");
        assert!(
            csp.contains("img-src 'self' data: blob: https://tiles.example.org;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(header_of(&reply, header::CACHE_CONTROL), "no-cache");
    }

    let asset = send(&t, Method::GET, "/_nuxt/entry.js").await;
    assert_eq!(asset.status, StatusCode::OK);
    assert!(header_of(&asset, header::CONTENT_TYPE).contains("javascript"));
    assert_eq!(
        header_of(&asset, header::CACHE_CONTROL),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        send(&t, Method::HEAD, "/_nuxt/entry.js").await.status,
        StatusCode::OK
    );

    // A missing file is a 404, not the shell (a stale page must not run HTML as a script).
    let missing = send(&t, Method::GET, "/_nuxt/gone-1234.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_ne!(missing.body.as_str(), Some(INDEX));

    let manifest = send(&t, Method::GET, "/manifest.webmanifest").await;
    assert_eq!(manifest.status, StatusCode::OK);
}

#[sqlx::test]
async fn the_apis_paths_are_never_shadowed_by_the_web_app(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = web_app(options, connect).await;

    for uri in [
        "/api/nope",
        "/api",
        "/ws/x",
        "/docs/nope",
        "/metrics/x",
        "/health/x",
    ] {
        let reply = send(&t, Method::GET, uri).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.body["error"]["code"], "not_found", "{uri}");
        assert_eq!(
            header_of(&reply, header::CONTENT_SECURITY_POLICY),
            "default-src 'none'; frame-ancestors 'none'",
            "{uri}"
        );
    }
    let health = send(&t, Method::GET, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.body.is_object(), "{health:?}");
    let document = send(&t, Method::GET, "/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    assert!(document.body["paths"].is_object());
    let docs = send(&t, Method::GET, "/docs").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert_ne!(docs.body.as_str(), Some(INDEX));

    // Only reads reach the files; other methods on unknown paths stay the API's 404.
    let post = send(&t, Method::POST, "/sittings").await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
    assert_eq!(post.body["error"]["code"], "not_found");
}

#[sqlx::test]
async fn without_a_web_dir_unknown_paths_are_json_404s(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::with_config(options, connect, config(), false).await;
    let reply = send(&t, Method::GET, "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["error"]["code"], "not_found");

    // A WEB_DIR without an index.html serves nothing either.
    let mut empty = config();
    empty.web_dir = Some(std::env::temp_dir().join(format!("arosaje-no-web-{}", Uuid::new_v4())));
    assert!(arosaje::api::web::Site::load(&empty).is_none());
}
