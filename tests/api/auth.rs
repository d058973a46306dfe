//! Registration, login, sessions and tokens.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, TestApp, PASSWORD};

#[sqlx::test]
async fn register_login_me_and_logout(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("ana");

    let registered = t.register(&email.to_uppercase(), "Ana").await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    assert_eq!(
        registered.body["email"],
        email.as_str(),
        "addresses are normalised"
    );
    assert_eq!(registered.body["role"], "USER");
    assert_eq!(registered.body["version"], 1);
    assert!(registered.body["position"].as_i64().is_some());
    assert!(registered.body.get("password_hash").is_none());

    let login = t.login(&email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["token_type"], "Bearer");
    assert!(login.body["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(login.body["user"]["id"], registered.body["id"]);
    let token = login.body["access_token"].as_str().unwrap().to_string();

    let me = t.get("/api/me", &token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["display_name"], "Ana");

    let logout = t
        .call(Method::POST, "/api/auth/logout", Some(&token), None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after = t.get("/api/me", &token).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.code(), "session_revoked");

    // Another login opens a new, independent session.
    let again = t.login(&email, PASSWORD).await;
    let token2 = again.body["access_token"].as_str().unwrap();
    assert_eq!(t.get("/api/me", token2).await.status, StatusCode::OK);
}

#[sqlx::test]
async fn wrong_password_and_unknown_email_get_the_same_401(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("bob");
    t.register(&email, "Bob").await;

    let wrong = t.login(&email, "not the password").await;
    let unknown = t.login(&unique_email("nobody"), PASSWORD).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body, unknown.body, "no account enumeration");
    assert_eq!(wrong.code(), "invalid_credentials");
}

#[sqlx::test]
async fn a_second_account_with_the_same_email_is_a_conflict(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("dup");
    assert_eq!(
        t.register(&email, "First").await.status,
        StatusCode::CREATED
    );
    let second = t
        .register(&format!("  {}  ", email.to_uppercase()), "Second")
        .await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{second:?}");
    assert_eq!(second.code(), "email_taken");

    // Concurrent registrations of one address: exactly one wins.
    let email = unique_email("race");
    let attempts = futures::future::join_all((0..6).map(|_| t.register(&email, "Racer"))).await;
    let created = attempts
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let conflicts = attempts
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 5), "{attempts:?}");
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegistered'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(users, 2, "one event per account");
}

#[sqlx::test]
async fn invalid_registrations_are_422_with_the_fields_named(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let weak = t
        .post(
            "/api/auth/register",
            None,
            json!({"email": unique_email("w"), "password": "short", "display_name": "W"}),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        weak.body["error"]["fields"]["password"].is_string(),
        "{weak:?}"
    );

    let bad_email = t
        .post(
            "/api/auth/register",
            None,
            json!({"email": "not-an-email", "password": PASSWORD, "display_name": "X"}),
        )
        .await;
    assert_eq!(bad_email.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad_email.body["error"]["fields"]["email"].is_string());

    let missing = t.post("/api/auth/register", None, json!({})).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields = missing.body["error"]["fields"].as_object().unwrap();
    for field in ["email", "password", "display_name"] {
        assert_eq!(fields[field], "is required");
    }

    let wrong_type = t
        .post("/api/auth/register", None, json!({"email": 42}))
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_type.code(), "invalid_body");

    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(none, 0, "nothing was recorded");
}

#[sqlx::test]
async fn malformed_wrongly_typed_and_oversized_bodies(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let malformed = t
        .raw(
            Request::post("/api/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"email\": "))
                .unwrap(),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.code(), "malformed_json");

    let text = t
        .raw(
            Request::post("/api/auth/login")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("hi"))
                .unwrap(),
        )
        .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(text.code(), "unsupported_media_type");

    let huge = "x".repeat(t.app.config.max_json_body_bytes + 1);
    let oversized = t
        .post(
            "/api/auth/register",
            None,
            json!({"email": "a@b.co", "password": PASSWORD, "display_name": huge}),
        )
        .await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversized.code(), "payload_too_large");

    let unknown_route = t.call(Method::GET, "/api/nothing-here", None, None).await;
    assert_eq!(unknown_route.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_route.code(), "not_found");
}

#[sqlx::test]
async fn missing_expired_tampered_and_foreign_tokens_are_401(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("tok")).await;

    let none = t.call(Method::GET, "/api/me", None, None).await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );

    // Expired: a real session, a correctly signed token, an `exp` an hour ago.
    let claims = arosaje::api::token::Claims {
        sub: user_id,
        role: arosaje::events::user::Role::User,
        sid: t.app.jwt.verify(&token).unwrap().sid,
        iat: chrono::Utc::now().timestamp() - 7200,
        exp: chrono::Utc::now().timestamp() - 3600,
    };
    let expired = t.app.jwt.sign(&claims).unwrap();
    let reply = t.get("/api/me", &expired).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );

    // Tampered: the payload changed (role raised), the signature kept.
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = json!("ADMIN");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        engine.encode(payload.to_string()),
        parts[2]
    );
    let reply = t.get("/api/me", &forged).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    // Signed with another secret.
    let foreign = arosaje::api::token::JwtKeys::new("some other secret", 3600)
        .issue(user_id, arosaje::events::user::Role::Admin, claims.sid)
        .unwrap();
    let reply = t.get("/api/me", &foreign).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    let garbage = t.get("/api/me", "not.a.jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        t.get("/api/me", &token).await.status,
        StatusCode::OK,
        "the real token still works"
    );
}

#[sqlx::test]
async fn the_event_log_holds_no_personal_data_in_clear(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("secret-person");
    let (_, token) = {
        let registered = t.register(&email, "Zéphyrine Secretname").await;
        assert_eq!(registered.status, StatusCode::CREATED);
        let login = t.login(&email, PASSWORD).await;
        (
            login.body["user"]["id"].clone(),
            login.body["access_token"].as_str().unwrap().to_string(),
        )
    };
    let patched = t
        .patch("/api/me", &token, json!({"phone": "+33 6 12 34 56 78", "city": "Montpellier-Secretville", "bio": "I love ferns"}))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(patched.body["city"], "Montpellier-Secretville");
    // Registration, the first login's device, the profile change.
    assert_eq!(patched.body["version"], 3);

    let log: Vec<String> = sqlx::query_scalar("SELECT payload::text || metadata::text FROM events")
        .fetch_all(&t.pool)
        .await
        .unwrap();
    assert_eq!(log.len(), 3);
    let local_part = email.split('@').next().unwrap();
    for row in &log {
        for secret in [
            local_part,
            "Secretname",
            "Zéphyrine",
            "12 34 56 78",
            "Secretville",
            "ferns",
        ] {
            assert!(
                !row.contains(secret),
                "`{secret}` in clear in the log: {row}"
            );
        }
    }

    // Clearing a field with null; the read model follows.
    let cleared = t.patch("/api/me", &token, json!({"phone": null})).await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert!(cleared.body["phone"].is_null());
    assert_eq!(cleared.body["city"], "Montpellier-Secretville");

    let invalid = t
        .patch(
            "/api/me",
            &token,
            json!({"phone": "call me", "display_name": ""}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.body["error"]["fields"]["phone"].is_string());
    assert!(invalid.body["error"]["fields"]["display_name"].is_string());
    let empty = t.patch("/api/me", &token, json!({})).await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
}
