//! Rate limits, CORS, security headers, and the API's behaviour when Redis goes away.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{config, eventually, unique_email, TestApp, PASSWORD};

#[sqlx::test]
async fn a_login_burst_gets_429_and_the_limit_resets_after_the_window(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut limited = config();
    limited.rate_limit_auth = 3;
    // Long enough for four failed logins (an argon2 check each) on a loaded machine to fall in
    // one window; the test then waits the window out.
    limited.rate_limit_window_secs = 6;
    let t = TestApp::with_config(options, connect, limited, true).await;

    let mut statuses = Vec::new();
    let mut last = None;
    for i in 0..4 {
        let reply = t
            .login(&unique_email(&format!("nobody{i}")), "wrong password")
            .await;
        statuses.push(reply.status.as_u16());
        last = Some(reply);
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    let rejected = last.unwrap();
    assert_eq!(rejected.code(), "rate_limited");
    let retry_after: u64 = rejected.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(rejected.headers["ratelimit-limit"], "3");
    assert_eq!(rejected.headers["ratelimit-remaining"], "0");

    // After the window the client is welcome again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = t.login(&unique_email("later"), "wrong password").await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{again:?}");
}

#[sqlx::test]
async fn password_reset_is_on_the_stricter_auth_quota(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut limited = config();
    limited.rate_limit_auth = 3;
    let t = TestApp::with_config(options, connect, limited, true).await;

    let mut statuses = Vec::new();
    for i in 0..4 {
        // A new address each time: only the per-client quota is in play.
        let reply = t
            .post(
                "/api/auth/password-reset",
                None,
                json!({"email": unique_email(&format!("forgetful{i}"))}),
            )
            .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [202, 202, 202, 429]);
    // The other link endpoints share that quota's strictness (each endpoint its own bucket).
    for path in ["/api/auth/password-reset/confirm", "/api/auth/verify-email"] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let reply = t.post(path, None, json!({"token": "forged"})).await;
            statuses.push(reply.status.as_u16());
        }
        assert_eq!(statuses.last(), Some(&429), "{path}: {statuses:?}");
    }
}

#[sqlx::test]
async fn attempts_against_one_email_are_limited_from_any_address(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut limited = config();
    limited.rate_limit_auth_per_email = 2;
    let t = TestApp::with_config(options, connect, limited, true).await;
    let email = unique_email("target");
    t.register(&email, "Target").await;

    assert_eq!(
        t.login(&email, "guess one").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.login(&email, "guess two").await.status,
        StatusCode::UNAUTHORIZED
    );
    let third = t.login(&email, PASSWORD).await;
    assert_eq!(
        (third.status, third.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(third.headers.contains_key("retry-after"));
    // Someone else logging in from the same address is not held up.
    let (_, other) = t.user(&unique_email("bystander")).await;
    let me = t.get("/api/me", &other).await;
    assert_eq!(me.status, StatusCode::OK);
    assert!(
        me.headers.contains_key("ratelimit-remaining"),
        "limited responses say so"
    );
}

#[sqlx::test]
async fn request_ids_from_clients_are_kept_only_when_well_formed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let create = |request_id: &str, correlation_id: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/plants")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id)
            .header("x-correlation-id", correlation_id)
            .body(Body::from(json!({"name": "Ivy"}).to_string()))
            .unwrap()
    };
    let metadata = |id: String| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT metadata FROM events WHERE event_type = 'PlantCreated' \
                  AND aggregate_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    let forged = t.raw(create("<script>", "a b")).await;
    assert_eq!(forged.status, StatusCode::CREATED, "{forged:?}");
    let echoed = forged.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        echoed.parse::<uuid::Uuid>().is_ok(),
        "fresh id, got {echoed}"
    );
    let meta = metadata(forged.body["id"].as_str().unwrap().to_string()).await;
    assert_eq!(meta["request_id"], echoed.as_str(), "{meta}");
    assert_eq!(
        meta["correlation_id"],
        echoed.as_str(),
        "the bad one is dropped"
    );

    let valid = t.raw(create("req-1.a:b_C", "chain-7")).await;
    assert_eq!(valid.status, StatusCode::CREATED, "{valid:?}");
    assert_eq!(valid.headers["x-request-id"], "req-1.a:b_C");
    let meta = metadata(valid.body["id"].as_str().unwrap().to_string()).await;
    assert_eq!(meta["request_id"], "req-1.a:b_C");
    assert_eq!(meta["correlation_id"], "chain-7");

    let long = t.raw(create(&"a".repeat(65), "ok")).await;
    let echoed = long.headers["x-request-id"].to_str().unwrap();
    assert!(
        echoed.parse::<uuid::Uuid>().is_ok(),
        "fresh id, got {echoed}"
    );
}

#[sqlx::test]
async fn cors_allows_only_configured_origins_and_responses_carry_security_headers(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut cors = config();
    cors.cors_allowed_origins = vec!["https://app.arosaje.example".into()];
    let t = TestApp::with_config(options, connect, cors, true).await;

    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api/plants")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let allowed = t.raw(preflight("https://app.arosaje.example")).await;
    assert_eq!(
        allowed.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.arosaje.example"
    );
    let refused = t.raw(preflight("https://evil.example")).await;
    assert!(!refused
        .headers
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    let health = t.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(health.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(health.headers[header::CACHE_CONTROL], "no-store");
}

/// A Redis server of this test's own, so it can be stopped without disturbing other tests.
pub struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    pub fn start(port: u16) -> OwnRedis {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> OwnRedis {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        OwnRedis { port, child }
    }

    pub async fn ready(&self) {
        let url = format!("redis://127.0.0.1:{}", self.port);
        eventually("redis to answer", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    // A server that wants a password answers too.
                    Ok(mut conn) => match redis::cmd("PING").query_async::<String>(&mut conn).await
                    {
                        Ok(_) => true,
                        Err(err) => err.code() == Some("NOAUTH"),
                    },
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An app whose Redis is a server of this test's own; returns it and its port.
pub async fn app_on_own_redis(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) -> (TestApp, OwnRedis, u16) {
    let port = free_port();
    let redis = OwnRedis::start(port);
    redis.ready().await;
    let mut own = config();
    own.redis_url = arosaje::config::ConnectionUrl::new(format!("redis://127.0.0.1:{port}"));
    let t = TestApp::with_config(options, connect, own, true).await;
    (t, redis, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[sqlx::test]
async fn when_redis_goes_away_the_api_answers_503_and_recovers_when_it_returns(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, mut redis, port) = app_on_own_redis(options, connect).await;
    let email = unique_email("fran");
    let (_, token) = t.user(&email).await;
    let plant = t.create_plant(&token, "Resilient").await;
    assert_eq!(plant.status, StatusCode::CREATED);

    redis.stop();
    let started = std::time::Instant::now();
    let me = t.get("/api/me", &token).await;
    assert_eq!(
        (me.status, me.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "sessions_unavailable"),
        "{me:?}"
    );
    assert!(me.headers.contains_key("retry-after"));
    let login = t.login(&email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE, "{login:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answers come quickly, no hang"
    );
    assert_eq!(
        t.call(Method::GET, "/health", None, None).await.status,
        StatusCode::OK
    );
    let ready = t.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["redis"], false);
    assert_eq!(ready.body["postgres"], true);

    // Redis comes back (empty: it keeps nothing on disk); the API recovers by itself.
    let _redis = OwnRedis::start(port);
    eventually(
        "the API to reach Redis again",
        Duration::from_secs(30),
        || async { t.call(Method::GET, "/ready", None, None).await.status == StatusCode::OK },
    )
    .await;
    let relogin = t.login(&email, PASSWORD).await;
    assert_eq!(relogin.status, StatusCode::OK, "{relogin:?}");
    let token = relogin.body["access_token"].as_str().unwrap();
    let plants = t.get("/api/plants", token).await;
    assert_eq!(
        plants.body["items"].as_array().unwrap().len(),
        1,
        "no data was lost"
    );
}

#[sqlx::test]
async fn without_redis_authentication_fails_closed_before_any_password_is_checked(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, mut redis, _) = app_on_own_redis(options, connect).await;
    let email = unique_email("oracle");
    let (_, token) = t.user(&email).await;

    redis.stop();
    // Right and wrong passwords get the same answer: no unthrottled password oracle.
    for password in [PASSWORD, "wrong password"] {
        let login = t.login(&email, password).await;
        assert_eq!(
            (login.status, login.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "rate_limiter_unavailable"),
            "{password}: {login:?}"
        );
        assert!(login.headers.contains_key("retry-after"));
    }
    let reset = t
        .post("/api/auth/password-reset", None, json!({"email": email}))
        .await;
    assert_eq!(reset.code(), "rate_limiter_unavailable", "{reset:?}");
    // Elsewhere the limiter still fails open: the plant list needs no Redis but the session.
    let plants = t.get("/api/plants", &token).await;
    assert_eq!(plants.code(), "sessions_unavailable", "{plants:?}");
}

#[sqlx::test]
async fn a_redis_wanting_a_password_stops_the_start_with_the_reason_not_a_hang(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let port = free_port();
    let password = "redis-pass-for-this-test-only";
    let redis = OwnRedis::start_with(port, &["--requirepass", password]);
    redis.ready().await;
    let pool = crate::helpers::pool(options, connect).await;

    let mut without = config();
    without.redis_url = arosaje::config::ConnectionUrl::new(format!("redis://127.0.0.1:{port}"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        arosaje::App::with_pool(without, pool.clone()),
    )
    .await
    .expect("the start must not hang");
    let Err(err) = outcome else {
        panic!("an app started on a Redis that refuses it");
    };
    let reason = format!("{err:#}");
    assert!(
        reason.contains("REDIS_URL") && reason.contains("NOAUTH"),
        "{reason}"
    );

    let mut wrong = config();
    wrong.redis_url =
        arosaje::config::ConnectionUrl::new(format!("redis://:not-the-password@127.0.0.1:{port}"));
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        arosaje::App::with_pool(wrong, pool.clone()),
    )
    .await
    .expect("the start must not hang");
    let reason = format!("{:#}", outcome.err().expect("a wrong password is refused"));
    assert!(
        !reason.contains("not-the-password"),
        "the password leaked: {reason}"
    );
    assert!(
        reason.contains("WRONGPASS") || reason.to_lowercase().contains("authentication failed"),
        "{reason}"
    );

    let mut with = config();
    with.redis_url =
        arosaje::config::ConnectionUrl::new(format!("redis://:{password}@127.0.0.1:{port}"));
    let app = arosaje::App::with_pool(with, pool)
        .await
        .expect("starts with the password");
    app.sessions.ping().await.expect("Redis answers the app");
    drop(redis);
}

#[tokio::test]
async fn a_redis_outage_makes_the_query_cache_miss_never_fail() {
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    redis.ready().await;
    let connection = arosaje::infra::redis::Redis::connect(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_millis(300),
    )
    .await
    .expect("redis");
    let cache = arosaje::infra::cache::QueryCache::new(connection, "test".into());
    cache.put("cache:test:v1:abc", &vec![1, 2, 3]).await;
    assert_eq!(
        cache.get::<Vec<i32>>("test", "cache:test:v1:abc").await,
        Some(vec![1, 2, 3])
    );
    redis.stop();
    // A miss, not an error, and no hang (each call is bounded by the Redis deadline).
    let outage = async {
        assert_eq!(
            cache.get::<Vec<i32>>("test", "cache:test:v1:abc").await,
            None
        );
        cache.put("cache:test:v1:abc", &vec![4]).await;
    };
    tokio::time::timeout(Duration::from_secs(30), outage)
        .await
        .expect("the cache must not hang on a dead Redis");
}
