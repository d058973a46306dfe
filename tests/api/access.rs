//! Who may do what: the role x route matrix, admin flows, sessions and refresh tokens.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, TestApp, PASSWORD};

const ANON: usize = 0;

#[sqlx::test]
async fn every_route_answers_each_role_as_the_matrix_says(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Six callers on each row: more than the per-client quota of the authentication endpoints
    // (the MFA routes share one per path), which is not what this table is about.
    let mut roomy = crate::helpers::config();
    roomy.rate_limit_auth = 1000;
    let t = TestApp::with_config(options, connect, roomy, true).await;
    let (_, admin) = t.admin().await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let (_, other) = t.user(&unique_email("other")).await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let (target, _) = t.user(&unique_email("target")).await;
    let plant = t.create_plant(&owner, "Matrix fern").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    let photo = crate::photos::upload(&t, &owner, &plant, "a.jpg", &crate::photos::jpeg(64, 48))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();

    let conversation = t
        .post(
            "/api/conversations",
            Some(&owner),
            json!({"participant_ids": [target]}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let message = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&owner),
            json!({"body": "Bonjour"}),
        )
        .await
        .body["id"]
        .clone();

    // Columns: anonymous, USER (owner), USER (someone else), BOTANIST, ADMIN, AUDITOR.
    let callers: [Option<&str>; 6] = [
        None,
        Some(&owner),
        Some(&other),
        Some(&botanist),
        Some(&admin),
        Some(&auditor),
    ];
    let table: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        (
            Method::GET,
            "/api/me".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::PATCH,
            "/api/me".into(),
            Some(json!({"city": "Lyon"})),
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/api/me/sessions".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/api/plants".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/api/plants".into(),
            Some(json!({"name": "New"})),
            [401, 201, 201, 403, 201, 403],
        ),
        (
            Method::GET,
            format!("/api/plants/{plant}"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            Method::PATCH,
            format!("/api/plants/{plant}"),
            Some(json!({"description": "x"})),
            [401, 200, 404, 403, 200, 403],
        ),
        (
            Method::DELETE,
            "/api/plants/{fresh}".into(),
            None,
            [401, 204, 404, 403, 204, 403],
        ),
        (
            Method::GET,
            format!("/api/plants/{plant}/photos"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            // Not multipart: refused as such once the caller may add photos at all.
            Method::POST,
            format!("/api/plants/{plant}/photos"),
            Some(json!({})),
            [401, 415, 404, 403, 403, 404],
        ),
        (
            Method::GET,
            format!("/api/photos/{photo}"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            Method::GET,
            format!("/api/photos/{photo}/thumbnail"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            Method::POST,
            "/api/ws/ticket".into(),
            None,
            [401, 201, 201, 201, 201, 201],
        ),
        (
            Method::GET,
            "/api/conversations".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/api/conversations".into(),
            Some(json!({"participant_ids": [target]})),
            [401, 201, 201, 201, 201, 201],
        ),
        (
            Method::GET,
            "/api/messages/search?q=plante".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/conversations/{conversation}/messages"),
            None,
            [401, 200, 404, 404, 404, 404],
        ),
        (
            Method::POST,
            format!("/api/conversations/{conversation}/messages"),
            Some(json!({"body": "Arrosée ce matin"})),
            [401, 201, 404, 404, 404, 404],
        ),
        (
            Method::POST,
            format!("/api/conversations/{conversation}/read"),
            Some(json!({"up_to": message})),
            [401, 204, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/api/admin/users".into(),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            Method::PUT,
            format!("/api/admin/users/{target}/role"),
            Some(json!({"role": "USER"})),
            [401, 403, 403, 403, 200, 403],
        ),
        (
            Method::POST,
            format!("/api/admin/users/{target}/disable"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            Method::POST,
            format!("/api/admin/users/{target}/enable"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            "/api/audit/events".into(),
            None,
            [401, 403, 403, 403, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/audit/aggregates/Plant/{plant}"),
            None,
            [401, 403, 403, 403, 200, 200],
        ),
        (
            Method::GET,
            "/api/me/export".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("/api/admin/users/{target}/export"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            Method::DELETE,
            "/api/admin/users/00000000-0000-0000-0000-000000000009".into(),
            None,
            [401, 403, 403, 403, 404, 403],
        ),
        (
            Method::POST,
            "/api/me/password".into(),
            Some(
                json!({"current_password": "not the password", "new_password": "a new long passphrase"}),
            ),
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::POST,
            "/api/me/mfa/verify".into(),
            Some(json!({"code": "000000"})),
            [401, 409, 409, 409, 409, 409],
        ),
        (
            Method::DELETE,
            "/api/me/mfa/totp".into(),
            Some(json!({"code": "000000"})),
            [401, 409, 409, 409, 409, 409],
        ),
        (
            // Enrolling needs the current password.
            Method::POST,
            "/api/me/mfa/totp".into(),
            Some(json!({})),
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::POST,
            "/api/me/mfa/totp".into(),
            Some(json!({"current_password": "not the password"})),
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::POST,
            "/api/me/mfa/totp".into(),
            Some(json!({"current_password": PASSWORD})),
            [401, 201, 201, 201, 201, 201],
        ),
        (
            Method::POST,
            "/api/me/mfa/totp/confirm".into(),
            Some(json!({"code": "000000"})),
            [401, 401, 401, 401, 401, 401],
        ),
        (
            Method::DELETE,
            "/api/me/sessions".into(),
            None,
            [401, 204, 204, 204, 204, 204],
        ),
        (
            Method::POST,
            "/api/auth/logout".into(),
            None,
            [401, 204, 204, 204, 204, 204],
        ),
    ];

    walk_matrix(&t, &callers, &table, || async {
        let fresh = t.create_plant(&owner, "Doomed").await;
        fresh.body["id"].as_str().unwrap().to_string()
    })
    .await;
}

/// Calls every route of `table` as every caller, with `{fresh}` in a path replaced by a new
/// resource each time, and fails listing every answer that differs from the table.
/// Anonymous callers must be refused with `missing_token`.
async fn walk_matrix<F, Fut>(
    t: &TestApp,
    callers: &[Option<&str>; 6],
    table: &[(Method, String, Option<Value>, [u16; 6])],
    fresh: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut failures = Vec::new();
    for (method, path, body, expected) in table {
        for (column, caller) in callers.iter().enumerate() {
            let path = if path.contains("{fresh}") {
                path.replace("{fresh}", &fresh().await)
            } else {
                path.clone()
            };
            let reply = t.call(method.clone(), &path, *caller, body.clone()).await;
            if reply.status.as_u16() != expected[column] {
                failures.push(format!(
                    "{method} {path} as caller #{column}: expected {}, got {reply:?}",
                    expected[column]
                ));
            }
            if column == ANON {
                assert_eq!(reply.code(), "missing_token");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The per-account limits, for every role: a second factor locked by wrong codes in a row
/// refuses every route that takes a code (429 `mfa_locked`, right code or not), and an account
/// out of password attempts every route that checks its password (429
/// `too_many_password_attempts`, right password or not); other routes answer as usual.
#[sqlx::test]
async fn per_account_limits_refuse_their_routes_whatever_the_role(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut roomy = crate::helpers::config();
    roomy.rate_limit_auth = 1000;
    // One wrong password per hour (right ones do not count).
    roomy.password_attempts_per_account = 1;
    let t = TestApp::with_config(options, connect, roomy, true).await;
    let (_, admin) = t.admin().await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let (_, other) = t.user(&unique_email("other")).await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    for token in [&owner, &other, &botanist, &admin, &auditor] {
        crate::mfa::enrol(&t, token).await;
        for _ in 0..5 {
            t.post("/api/me/mfa/verify", Some(token), json!({"code": "000000"}))
                .await;
        }
        let locked = t
            .post("/api/me/mfa/verify", Some(token), json!({"code": "000000"}))
            .await;
        assert_eq!(locked.code(), "mfa_locked", "{locked:?}");
        let wrong = t
            .post(
                "/api/me/password",
                Some(token),
                json!({"current_password": "not the password", "new_password": "a new long passphrase"}),
            )
            .await;
        assert_eq!(wrong.code(), "validation_failed", "{wrong:?}");
    }
    let callers: [Option<&str>; 6] = [
        None,
        Some(&owner),
        Some(&other),
        Some(&botanist),
        Some(&admin),
        Some(&auditor),
    ];
    let table: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        (
            Method::POST,
            "/api/me/mfa/verify".into(),
            Some(json!({"code": "123456"})),
            [401, 429, 429, 429, 429, 429],
        ),
        (
            Method::POST,
            "/api/me/mfa/totp/confirm".into(),
            Some(json!({"code": "123456"})),
            [401, 429, 429, 429, 429, 429],
        ),
        (
            Method::DELETE,
            "/api/me/mfa/totp".into(),
            Some(json!({"code": "123456"})),
            [401, 429, 429, 429, 429, 429],
        ),
        (
            Method::POST,
            "/api/me/mfa/totp".into(),
            Some(json!({"current_password": PASSWORD})),
            [401, 429, 429, 429, 429, 429],
        ),
        (
            Method::POST,
            "/api/me/password".into(),
            Some(json!({"current_password": PASSWORD, "new_password": "a new long passphrase"})),
            [401, 429, 429, 429, 429, 429],
        ),
        (
            Method::GET,
            "/api/me".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
    ];
    walk_matrix(&t, &callers, &table, || async {
        unreachable!("no {{fresh}} route")
    })
    .await;
    // Each 429 is the limit's own, not the per-client rate limit.
    for (method, path, body, _) in &table[..table.len() - 1] {
        let code =
            if path.ends_with("/verify") || path.ends_with("/confirm") || *method == Method::DELETE
            {
                "mfa_locked"
            } else {
                "too_many_password_attempts"
            };
        for token in callers.iter().flatten() {
            let reply = t
                .call(method.clone(), path, Some(token), body.clone())
                .await;
            assert_eq!(reply.code(), code, "{method} {path}: {reply:?}");
            assert!(reply.headers.contains_key("retry-after"));
        }
    }
}

#[sqlx::test]
async fn admins_list_change_roles_and_disable_users(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (admin_id, admin) = t.admin().await;
    let email = unique_email("carol");
    let (carol, carol_token) = t.user(&email).await;

    let listed = t
        .get(&format!("/api/admin/users?q={}", &email[..12]), &admin)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "{listed:?}"
    );
    let admins = t.get("/api/admin/users?role=ADMIN", &admin).await;
    assert_eq!(admins.body["items"][0]["id"], admin_id.to_string());
    assert_eq!(
        t.get("/api/admin/users?role=KING", &admin).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // A new role takes effect at the next request of every open session, both ways.
    assert_eq!(
        t.get("/api/admin/users", &carol_token).await.status,
        StatusCode::FORBIDDEN
    );
    let promoted = t
        .call(
            Method::PUT,
            &format!("/api/admin/users/{carol}/role"),
            Some(&admin),
            Some(json!({"role": "ADMIN"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{promoted:?}");
    assert_eq!(promoted.body["role"], "ADMIN");
    assert_eq!(
        t.get("/api/admin/users", &carol_token).await.status,
        StatusCode::OK,
        "the open session acts as ADMIN at once"
    );
    let demoted = t
        .call(
            Method::PUT,
            &format!("/api/admin/users/{carol}/role"),
            Some(&admin),
            Some(json!({"role": "BOTANIST"})),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{demoted:?}");
    assert_eq!(
        t.get("/api/admin/users", &carol_token).await.status,
        StatusCode::FORBIDDEN,
        "and no longer once demoted"
    );
    assert_eq!(
        t.get("/api/me", &carol_token).await.body["role"],
        "BOTANIST"
    );

    // The event names the admin who acted.
    let metadata: Value = sqlx::query_scalar(
        "SELECT metadata FROM events WHERE aggregate_id = $1 AND event_type = 'UserRoleChanged'",
    )
    .bind(carol.to_string())
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(metadata["actor_id"], admin_id.to_string());
    assert_eq!(metadata["actor_role"], "ADMIN");
    assert!(metadata["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));

    // Disabled: tokens die at once, logging in is refused; enabled: back in.
    let disabled = t
        .call(
            Method::POST,
            &format!("/api/admin/users/{carol}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(disabled.body["status"], "disabled");
    assert_eq!(
        t.get("/api/me", &carol_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let refused = t.login(&email, PASSWORD).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "account_disabled")
    );
    let enabled = t
        .call(
            Method::POST,
            &format!("/api/admin/users/{carol}/enable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(enabled.body["status"], "active");
    assert_eq!(t.login(&email, PASSWORD).await.status, StatusCode::OK);

    let own = t
        .call(
            Method::POST,
            &format!("/api/admin/users/{admin_id}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (own.status, own.code()),
        (StatusCode::CONFLICT, "own_account")
    );
    let unknown = t
        .call(
            Method::POST,
            "/api/admin/users/00000000-0000-0000-0000-000000000009/disable",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad_role = t
        .call(
            Method::PUT,
            &format!("/api/admin/users/{carol}/role"),
            Some(&admin),
            Some(json!({"role": "KING"})),
        )
        .await;
    assert_eq!(bad_role.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("dora");
    t.register(&email, "Dora").await;
    let login = t.login(&email, PASSWORD).await;
    let first_refresh = login.body["refresh_token"].as_str().unwrap().to_string();

    let rotated = t
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": first_refresh}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{rotated:?}");
    let second_refresh = rotated.body["refresh_token"].as_str().unwrap().to_string();
    let access = rotated.body["access_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(t.get("/api/me", &access).await.status, StatusCode::OK);

    // The first token again: stolen-token signal, the whole session goes.
    let reused = t
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": first_refresh}),
        )
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::UNAUTHORIZED, "refresh_token_reused")
    );
    assert_eq!(t.get("/api/me", &access).await.code(), "session_revoked");
    let after = t
        .post(
            "/api/auth/refresh",
            None,
            json!({"refresh_token": second_refresh}),
        )
        .await;
    assert_eq!(
        (after.status, after.code()),
        (StatusCode::UNAUTHORIZED, "invalid_refresh_token")
    );

    let garbage = t
        .post("/api/auth/refresh", None, json!({"refresh_token": "nope"}))
        .await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    let missing = t.post("/api/auth/refresh", None, json!({})).await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// The `__Host-arosaje_refresh` cookie of a reply's Set-Cookie headers: (value, attributes).
fn refresh_cookie(reply: &crate::helpers::Reply) -> Option<(String, String)> {
    reply
        .headers
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, attributes) = v.split_once(';').unwrap_or((v, ""));
            let value = pair.strip_prefix("__Host-arosaje_refresh=")?;
            Some((value.to_string(), attributes.to_string()))
        })
}

async fn refresh_with_cookie(t: &TestApp, cookie: &str) -> crate::helpers::Reply {
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/auth/refresh")
        .header("content-type", "application/json")
        .header(
            "cookie",
            format!("lang=fr; __Host-arosaje_refresh={cookie}"),
        )
        .body(axum::body::Body::from("{}"))
        .unwrap();
    t.raw(request).await
}

#[sqlx::test]
async fn a_browser_session_survives_a_reload_through_its_http_only_cookie(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("reload");
    t.register(&email, "Reload").await;
    let login = t.login(&email, PASSWORD).await;
    let (first, attributes) = refresh_cookie(&login).expect("login sets the cookie");
    assert_eq!(first, login.body["refresh_token"].as_str().unwrap());
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.contains(attribute),
            "{attribute} in {attributes}"
        );
    }
    assert!(!attributes.contains("Domain"), "{attributes}");
    // USER sessions: the idle lifetime (14 days by default) bounds the cookie.
    assert!(attributes.contains("Max-Age=1209600"), "{attributes}");

    // A reload: no token in memory, `{}` and the cookie bring the session back.
    let restored = refresh_with_cookie(&t, &first).await;
    assert_eq!(restored.status, StatusCode::OK, "{restored:?}");
    let access = restored.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(t.get("/api/me", &access).await.body["email"], email);
    let (second, _) = refresh_cookie(&restored).expect("the answer renews the cookie");
    assert_eq!(second, restored.body["refresh_token"].as_str().unwrap());
    assert_ne!(second, first);

    // A body's token wins over the cookie (API clients are unaffected by a stale cookie).
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/auth/refresh")
        .header("content-type", "application/json")
        .header("cookie", "__Host-arosaje_refresh=garbage")
        .body(axum::body::Body::from(
            json!({"refresh_token": second}).to_string(),
        ))
        .unwrap();
    let by_body = t.raw(request).await;
    assert_eq!(by_body.status, StatusCode::OK, "{by_body:?}");
    let (third, _) = refresh_cookie(&by_body).unwrap();

    // Logout clears the cookie; the cleared session's cookie no longer works and is cleared.
    let access = by_body.body["access_token"].as_str().unwrap().to_string();
    let logout = t.post("/api/auth/logout", Some(&access), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let (cleared, attributes) = refresh_cookie(&logout).expect("logout clears the cookie");
    assert_eq!(cleared, "");
    assert!(attributes.contains("Max-Age=0"), "{attributes}");
    let after = refresh_with_cookie(&t, &third).await;
    assert_eq!(
        (after.status, after.code()),
        (StatusCode::UNAUTHORIZED, "invalid_refresh_token")
    );
    assert_eq!(refresh_cookie(&after).map(|(v, _)| v).as_deref(), Some(""));
}

#[sqlx::test]
async fn a_replayed_refresh_cookie_revokes_the_session_and_is_cleared(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("stolen");
    t.register(&email, "Stolen").await;
    let login = t.login(&email, PASSWORD).await;
    let (first, _) = refresh_cookie(&login).unwrap();
    let rotated = refresh_with_cookie(&t, &first).await;
    assert_eq!(rotated.status, StatusCode::OK);
    let access = rotated.body["access_token"].as_str().unwrap().to_string();
    let replayed = refresh_with_cookie(&t, &first).await;
    assert_eq!(
        (replayed.status, replayed.code()),
        (StatusCode::UNAUTHORIZED, "refresh_token_reused")
    );
    assert_eq!(
        refresh_cookie(&replayed).map(|(v, _)| v).as_deref(),
        Some("")
    );
    assert_eq!(t.get("/api/me", &access).await.code(), "session_revoked");
}

#[sqlx::test]
async fn users_list_and_revoke_their_own_sessions(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("eve");
    t.register(&email, "Eve").await;
    let phone = t.login(&email, PASSWORD).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let laptop = t.login(&email, PASSWORD).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let sessions = t.get("/api/me/sessions", &laptop).await;
    let items = sessions.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{sessions:?}");
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_session = items.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let revoked = t
        .delete(&format!("/api/me/sessions/{phone_session}"), &laptop)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get("/api/me", &phone).await.code(), "session_revoked");
    assert_eq!(t.get("/api/me", &laptop).await.status, StatusCode::OK);
    assert_eq!(
        t.delete(&format!("/api/me/sessions/{phone_session}"), &laptop)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Another user's session id is simply not found.
    let (_, mallory) = t.user(&unique_email("mallory")).await;
    let laptop_session = t.get("/api/me/sessions", &laptop).await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        t.delete(&format!("/api/me/sessions/{laptop_session}"), &mallory)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.get("/api/me", &laptop).await.status, StatusCode::OK);
}

#[sqlx::test]
async fn botanist_accounts_wait_for_an_admin_to_approve_or_reject_them(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let apply = |email: String| {
        let t = &t;
        async move {
            let reply = t
                .post(
                    "/api/auth/register",
                    None,
                    json!({"email": email, "password": PASSWORD, "display_name": "Dr Leaf", "botanist": true}),
                )
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
            assert_eq!(reply.body["role"], "USER", "a botanist starts as a USER");
            assert_eq!(reply.body["botanist_status"], "pending");
            reply.body["id"].as_str().unwrap().to_string()
        }
    };
    let leaf_email = unique_email("leaf");
    let leaf = apply(leaf_email.clone()).await;
    let fake = apply(unique_email("fake")).await;

    let pending = t.get("/api/admin/verifications", &admin).await;
    let ids: Vec<&str> = pending.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [leaf.as_str(), fake.as_str()]);

    let approved = t
        .call(
            Method::POST,
            &format!("/api/admin/verifications/{leaf}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{approved:?}");
    assert_eq!(approved.body["role"], "BOTANIST");
    assert_eq!(approved.body["botanist_status"], "approved");
    let again = t
        .call(
            Method::POST,
            &format!("/api/admin/verifications/{leaf}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "no_pending_verification")
    );

    let rejected = t
        .call(
            Method::POST,
            &format!("/api/admin/verifications/{fake}/reject"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rejected.body["role"], "USER");
    assert_eq!(rejected.body["botanist_status"], "rejected");
    assert_eq!(
        t.get("/api/admin/verifications", &admin).await.body["items"],
        json!([])
    );

    let login = t.login(&leaf_email, PASSWORD).await;
    assert_eq!(login.body["user"]["role"], "BOTANIST");
    let stats = t.get("/api/admin/stats", &admin).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.body["users"]["BOTANIST"], 1);
    assert_eq!(stats.body["users"]["ADMIN"], 1);
    assert_eq!(stats.body["users"]["USER"], 1);
    assert_eq!(stats.body["pending_botanist_verifications"], 0);
    let user_token = t.user(&unique_email("nosy")).await.1;
    assert_eq!(
        t.get("/api/admin/stats", &user_token).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        t.get("/api/admin/verifications", &user_token).await.status,
        StatusCode::FORBIDDEN
    );
}

/// The sitting routes, walked by every kind of caller in turn (each row can change the state the
/// next one sees: an application made, withdrawn, the sitting cancelled last).
#[sqlx::test]
async fn every_sitting_route_answers_each_role_as_the_matrix_says(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (owner_id, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (other_id, other) = t.verified_user(&unique_email("other")).await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let body = crate::sittings::sitting_body(&plants, 1, 3, crate::sittings::LYON, "Lyon");
    let sitting = crate::sittings::request(&t, &owner, body.clone())
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let callers: [Option<&str>; 6] = [
        None,
        Some(&owner),
        Some(&other),
        Some(&botanist),
        Some(&admin),
        Some(&auditor),
    ];
    let s = format!("/api/sittings/{sitting}");
    let table: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        // Another user's plants are not the caller's to put in a sitting; botanists and
        // auditors do not ask for sittings; the admin's address is not verified.
        (
            Method::POST,
            "/api/sittings".into(),
            Some(body),
            [401, 201, 422, 403, 403, 403],
        ),
        (
            Method::GET,
            "/api/sittings".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (Method::GET, s.clone(), None, [401, 200, 200, 200, 200, 200]),
        // An admin's reason opens the home (recorded); for anyone else it changes nothing.
        (
            Method::GET,
            format!("{s}?reason=support"),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("{s}?reason={}", "r".repeat(501)),
            None,
            [401, 422, 422, 422, 422, 422],
        ),
        (
            Method::GET,
            "/api/me/applications".into(),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            format!("{s}/applications"),
            None,
            [401, 200, 403, 403, 200, 403],
        ),
        (
            Method::GET,
            format!("{s}/reports"),
            None,
            [401, 200, 403, 200, 200, 403],
        ),
        (
            Method::POST,
            format!("{s}/applications"),
            Some(json!({"message": "Me!"})),
            [401, 409, 201, 403, 403, 403],
        ),
        (
            Method::POST,
            format!("{s}/accept"),
            Some(json!({"sitter_id": owner_id})),
            [401, 409, 403, 403, 403, 403],
        ),
        (
            Method::DELETE,
            format!("{s}/applications/mine"),
            None,
            [401, 409, 204, 409, 409, 409],
        ),
        (
            Method::POST,
            format!("{s}/accept"),
            Some(json!({"sitter_id": other_id})),
            [401, 409, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            format!("{s}/start"),
            None,
            [401, 409, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            format!("{s}/complete"),
            None,
            [401, 409, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            format!("{s}/reports"),
            Some(json!({"plant_id": plants[0], "note": "Watered"})),
            [401, 403, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            format!("{s}/reviews"),
            Some(json!({"rating": 5})),
            [401, 409, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            format!("/api/users/{owner_id}"),
            None,
            [401, 200, 200, 200, 200, 200],
        ),
        // Cancelled by its owner: strangers no longer see it; botanists and admins find it closed.
        (
            Method::POST,
            format!("{s}/cancel"),
            Some(json!({"reason": "Trip cancelled"})),
            [401, 200, 404, 409, 409, 404],
        ),
    ];
    walk_matrix(&t, &callers, &table, || async {
        unreachable!("no {{fresh}} route")
    })
    .await;
}

#[sqlx::test]
async fn every_advice_route_answers_each_role_as_the_matrix_says(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (_, other) = t.verified_user(&unique_email("other")).await;
    let (admin, botanists) = crate::advice::botanists(&t, 2).await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let (botanist, peer) = (&botanists[0].1, &botanists[1].1);
    let plant = &plants[0];
    let advise = |token: String| {
        let t = &t;
        async move {
            let given = crate::advice::advise(t, &token, plant, json!({"body": "Mist it"})).await;
            assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
            given.body["id"].as_str().unwrap().to_string()
        }
    };
    // The botanist column's own advice, and two by a peer (one to validate, one to reject).
    let own = advise(botanist.clone()).await;
    let to_validate = advise(peer.clone()).await;
    let to_reject = advise(peer.clone()).await;
    // Columns: anonymous, USER (the plant's owner), USER (someone else), BOTANIST, ADMIN, AUDITOR.
    let callers: [Option<&str>; 6] = [
        None,
        Some(&owner),
        Some(&other),
        Some(botanist),
        Some(&admin),
        Some(&auditor),
    ];
    let table: Vec<(Method, String, Option<Value>, [u16; 6])> = vec![
        (
            Method::POST,
            format!("/api/plants/{plant}/advice"),
            Some(json!({"body": "Repot it"})),
            [401, 403, 403, 201, 403, 403],
        ),
        (
            Method::GET,
            format!("/api/plants/{plant}/advice"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            Method::PATCH,
            format!("/api/advice/{own}"),
            Some(json!({"body": "Repot it in spring"})),
            [401, 403, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            format!("/api/advice/{own}/versions"),
            None,
            [401, 200, 404, 200, 200, 404],
        ),
        (
            Method::POST,
            format!("/api/advice/{to_validate}/validate"),
            Some(json!({})),
            [401, 403, 403, 200, 403, 403],
        ),
        (
            Method::POST,
            format!("/api/advice/{to_reject}/reject"),
            Some(json!({"comment": "Too much water"})),
            [401, 403, 403, 200, 403, 403],
        ),
        (
            // The author withdraws it, a moderator hides it (with a reason).
            Method::DELETE,
            "/api/advice/{fresh}?reason=spam".into(),
            None,
            [401, 403, 403, 204, 204, 403],
        ),
        (
            Method::GET,
            "/api/botanist/queue".into(),
            None,
            [401, 403, 403, 200, 403, 403],
        ),
        (
            Method::GET,
            "/api/botanist/stats".into(),
            None,
            [401, 403, 403, 200, 403, 403],
        ),
    ];
    walk_matrix(&t, &callers, &table, || advise(botanist.clone())).await;
}
