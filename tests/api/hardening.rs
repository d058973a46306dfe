//! The hardening of the spine and the accounts: each test reproduces a finding first.

use std::time::Duration;

use arosaje::events::user::Role;
use arosaje::infra::tokens::Purpose;
use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

use crate::helpers::{
    capture_logs, config, eventually, put_redis_session, redis_session, unique_email, TestApp,
    PASSWORD,
};

fn session_of(t: &TestApp, token: &str) -> Uuid {
    t.app.jwt.verify(token).expect("token").sid
}

#[sqlx::test]
async fn a_forged_role_claim_changes_nothing(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (user_id, token) = t.user(&unique_email("mallory")).await;
    // Even signed with the real key (a leaked key, or the old public development default), a
    // token claiming ADMIN acts with the role of its session.
    let claims = t.app.jwt.verify(&token).unwrap();
    let forged = t
        .app
        .jwt
        .issue(user_id, Role::Admin, claims.sid)
        .expect("sign");
    let reply = t.get("/api/admin/users", &forged).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{reply:?}"
    );
    // A token naming no session is refused whatever it claims.
    let orphan = t
        .app
        .jwt
        .issue(user_id, Role::Admin, Uuid::new_v4())
        .expect("sign");
    assert_eq!(
        t.get("/api/admin/users", &orphan).await.code(),
        "session_revoked"
    );
}

/// Holds the `users` projector still (its checkpoint row locked) until dropped or released.
struct UsersProjectionHeld(sqlx::PgConnection);

impl UsersProjectionHeld {
    async fn hold(t: &TestApp) -> UsersProjectionHeld {
        let options = t.pool.connect_options();
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .expect("connect");
        sqlx::query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        sqlx::query("SELECT 1 FROM projection_checkpoints WHERE name = 'users' FOR UPDATE")
            .execute(&mut conn)
            .await
            .expect("lock");
        UsersProjectionHeld(conn)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK")
            .execute(&mut self.0)
            .await
            .expect("release");
    }
}

async fn stale_app(options: PgPoolOptions, connect: PgConnectOptions) -> TestApp {
    let mut short = config();
    short.read_your_writes_timeout_ms = 300;
    TestApp::with_config(options, connect, short, true).await
}

#[sqlx::test]
async fn a_login_against_a_stale_read_model_cannot_use_the_old_password(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = stale_app(options, connect).await;
    let email = unique_email("stale");
    let (user_id, token) = t.user(&email).await;

    let held = UsersProjectionHeld::hold(&t).await;
    let reset_token = t
        .app
        .tokens
        .issue(Purpose::ResetPassword, user_id, 0)
        .unwrap();
    let new_password = "a brand new passphrase";
    let confirmed = t
        .post(
            "/api/auth/password-reset/confirm",
            None,
            json!({"token": reset_token, "new_password": new_password}),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::NO_CONTENT, "{confirmed:?}");
    assert_eq!(
        t.get("/api/me", &token).await.code(),
        "session_revoked",
        "sessions end at once, whatever the read model's lag"
    );
    // The read model still holds the old hash: the old password must not open a session.
    let old = t.login(&email, PASSWORD).await;
    assert_eq!(
        (old.status, old.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "account_settling"),
        "{old:?}"
    );
    let sessions: Vec<(Uuid, _)> = t.app.sessions.list(user_id).await.unwrap();
    assert!(sessions.is_empty(), "the refused login left no session");

    held.release().await;
    eventually(
        "the old password to be refused",
        Duration::from_secs(10),
        || async { t.login(&email, PASSWORD).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_eq!(t.login(&email, new_password).await.status, StatusCode::OK);
}

#[sqlx::test]
async fn a_login_against_a_stale_read_model_cannot_outlive_a_disable(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = stale_app(options, connect).await;
    let (_, admin) = t.admin().await;
    let email = unique_email("leaving");
    let (user_id, _) = t.user(&email).await;

    let held = UsersProjectionHeld::hold(&t).await;
    let disabled = t
        .call(
            Method::POST,
            &format!("/api/admin/users/{user_id}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(disabled.status, StatusCode::ACCEPTED, "{disabled:?}");
    let login = t.login(&email, PASSWORD).await;
    assert_ne!(login.status, StatusCode::OK, "{login:?}");
    assert!(t.app.sessions.list(user_id).await.unwrap().is_empty());

    held.release().await;
    eventually(
        "the account to read disabled",
        Duration::from_secs(10),
        || async { t.login(&email, PASSWORD).await.code() == "account_disabled" },
    )
    .await;
}

#[sqlx::test]
async fn a_refresh_that_fails_midway_leaves_the_refresh_token_usable(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("retry");
    t.user(&email).await;
    let login = t.login(&email, PASSWORD).await;
    let refresh = login.body["refresh_token"].as_str().unwrap().to_string();

    // The database fails during the refresh (as a late error or a time-out would).
    sqlx::query("ALTER TABLE users RENAME TO users_away")
        .execute(&t.pool)
        .await
        .unwrap();
    let failed = t
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(
        failed.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{failed:?}"
    );
    sqlx::query("ALTER TABLE users_away RENAME TO users")
        .execute(&t.pool)
        .await
        .unwrap();

    // The client retries with the same token: it still works, once.
    let retried = t
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    let access = retried.body["access_token"].as_str().unwrap();
    assert_eq!(t.get("/api/me", access).await.status, StatusCode::OK);
}

/// Moves a session's clock: its login `created_ago`, its last refresh `seen_ago`.
async fn age_session(user_id: Uuid, session_id: Uuid, created_ago: i64, seen_ago: i64) {
    let now = chrono::Utc::now();
    let mut session = redis_session(user_id, session_id).await;
    session["created_at"] = json!((now - chrono::Duration::seconds(created_ago)).to_rfc3339());
    session["last_seen_at"] = json!((now - chrono::Duration::seconds(seen_ago)).to_rfc3339());
    put_redis_session(user_id, session_id, &session).await;
}

#[sqlx::test]
async fn sessions_end_after_their_roles_idle_and_absolute_limits(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const MINUTE: i64 = 60;
    const DAY: i64 = 24 * 3600;
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("phone");
    let (user_id, first) = t.user(&email).await;
    let first_sid = session_of(&t, &first);
    let seen = redis_session(user_id, first_sid).await["last_seen_at"].clone();

    // Another login and a refresh of that other session leave the first session alone.
    let second = t.login(&email, PASSWORD).await;
    let refresh = second.body["refresh_token"].as_str().unwrap();
    let refreshed = t
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    assert_eq!(
        redis_session(user_id, first_sid).await["last_seen_at"],
        seen
    );
    let second_access = refreshed.body["access_token"].as_str().unwrap().to_string();
    let second_sid = session_of(&t, &second_access);

    // A USER session idle for 13 days, 29 days after its login, still works...
    age_session(user_id, first_sid, 29 * DAY, 13 * DAY).await;
    assert_eq!(t.get("/api/me", &first).await.status, StatusCode::OK);
    // ...idle for 15 days it is over; 31 days after its login too, however active.
    age_session(user_id, first_sid, 20 * DAY, 15 * DAY).await;
    assert_eq!(t.get("/api/me", &first).await.code(), "session_revoked");
    age_session(user_id, second_sid, 31 * DAY, MINUTE).await;
    assert_eq!(
        t.get("/api/me", &second_access).await.code(),
        "session_revoked"
    );

    // ADMIN sessions: 30 minutes idle, 12 hours in all.
    let (_, admin) = t.admin().await;
    let admin_claims = t.app.jwt.verify(&admin).unwrap();
    age_session(admin_claims.sub, admin_claims.sid, 11 * 3600, 29 * MINUTE).await;
    assert_eq!(
        t.get("/api/admin/users", &admin).await.status,
        StatusCode::OK
    );
    age_session(admin_claims.sub, admin_claims.sid, 11 * 3600, 31 * MINUTE).await;
    assert_eq!(t.get("/api/me", &admin).await.code(), "session_revoked");
    let (_, admin) = t.admin().await;
    let admin_claims = t.app.jwt.verify(&admin).unwrap();
    age_session(admin_claims.sub, admin_claims.sid, 13 * 3600, MINUTE).await;
    assert_eq!(t.get("/api/me", &admin).await.code(), "session_revoked");
}

#[sqlx::test]
async fn changing_the_password_needs_the_current_one_and_ends_the_other_sessions(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("changer");
    let (_, laptop) = t.user(&email).await;
    let phone = t.login(&email, PASSWORD).await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let new_password = "an entirely new passphrase";

    let wrong = t
        .post(
            "/api/me/password",
            Some(&laptop),
            json!({"current_password": "not my password", "new_password": new_password}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY, "{wrong:?}");
    assert!(wrong.body["error"]["fields"]["current_password"].is_string());
    let same = t
        .post(
            "/api/me/password",
            Some(&laptop),
            json!({"current_password": PASSWORD, "new_password": PASSWORD}),
        )
        .await;
    assert!(
        same.body["error"]["fields"]["new_password"].is_string(),
        "{same:?}"
    );
    assert_eq!(t.get("/api/me", &phone).await.status, StatusCode::OK);

    let changed = t
        .post(
            "/api/me/password",
            Some(&laptop),
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    assert_eq!(t.get("/api/me", &laptop).await.status, StatusCode::OK);
    assert_eq!(t.get("/api/me", &phone).await.code(), "session_revoked");
    assert_eq!(
        t.login(&email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(t.login(&email, new_password).await.status, StatusCode::OK);
}

#[sqlx::test]
async fn log_out_everywhere_else_keeps_only_this_session(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("tidy");
    let (user_id, here) = t.user(&email).await;
    let mut elsewhere = Vec::new();
    for _ in 0..3 {
        let login = t.login(&email, PASSWORD).await;
        elsewhere.push(login.body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(t.app.sessions.list(user_id).await.unwrap().len(), 4);
    let reply = t.delete("/api/me/sessions", &here).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get("/api/me", &here).await.status, StatusCode::OK);
    for token in &elsewhere {
        assert_eq!(t.get("/api/me", token).await.code(), "session_revoked");
    }
    let listed = t.get("/api/me/sessions", &here).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
}

#[test]
fn serve_refuses_to_start_without_real_secrets() {
    let run = |jwt: Option<&str>, pepper: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_arosaje"));
        command
            .arg("serve")
            .env_remove("AROSAJE_DEV")
            .env_remove("JWT_SECRET")
            .env_remove("EMAIL_PEPPER")
            // Nothing listens there: the refusal must come before any connection.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("BIND_ADDR", "127.0.0.1:0");
        if let Some(jwt) = jwt {
            command.env("JWT_SECRET", jwt);
        }
        if let Some(pepper) = pepper {
            command.env("EMAIL_PEPPER", pepper);
        }
        let output = command.output().expect("run arosaje");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(None, None);
    assert!(!ok);
    assert!(stderr.contains("JWT_SECRET is not set"), "{stderr}");
    assert!(stderr.contains("EMAIL_PEPPER is not set"), "{stderr}");
    let (ok, stderr) = run(
        Some(arosaje::config::DEV_JWT_SECRET),
        Some("change-me-local-compose-email-pepper"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("JWT_SECRET is a publicly known development value"),
        "{stderr}"
    );
    assert!(
        stderr.contains("EMAIL_PEPPER is a publicly known development value"),
        "{stderr}"
    );
}

#[sqlx::test]
async fn an_app_will_not_build_on_an_invalid_configuration(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = crate::helpers::pool(options, connect).await;
    let mut broken = config();
    broken.jwt_secret = None;
    broken.group_commit_max = 0;
    let err = arosaje::App::with_pool(broken, pool)
        .await
        .err()
        .expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("JWT_SECRET is not set"), "{message}");
    assert!(
        message.contains("GROUP_COMMIT_MAX must be at least 1"),
        "{message}"
    );
}

#[sqlx::test]
async fn another_databases_open_transaction_leaves_commands_answering_201(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut timely = config();
    timely.read_your_writes_timeout_ms = 2000;
    let t = TestApp::with_config(options, connect.clone(), timely, true).await;
    let (_, token) = t.user(&unique_email("busy")).await;
    let mut elsewhere = sqlx::PgConnection::connect_with(&connect.database("postgres"))
        .await
        .expect("connect");
    for statement in [
        "BEGIN",
        "CREATE TEMP TABLE nightly (n int)",
        "INSERT INTO nightly VALUES (1)",
    ] {
        sqlx::query(statement)
            .execute(&mut elsewhere)
            .await
            .expect("held transaction");
    }
    for name in ["Aloe", "Fern"] {
        let plant = t.create_plant(&token, name).await;
        assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
    }
    sqlx::query("ROLLBACK")
        .execute(&mut elsewhere)
        .await
        .expect("rollback");
}

#[sqlx::test]
async fn a_poison_event_in_a_read_model_is_parked_shown_and_passed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut quick = config();
    quick.projection_max_attempts = 2;
    let t = TestApp::with_config(options, connect, quick, true).await;
    let (user_id, token) = t.user(&unique_email("poisoned")).await;
    // An event the users projection cannot decode (as a bug or a bad manual insert would leave).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         SELECT 'User', $1, max(sequence) + 1, 'UserProfileUpdated', '1', \
                '{\"UserProfileUpdated\": 42}', '{}' \
           FROM events WHERE aggregate_id = $1",
    )
    .bind(user_id.to_string())
    .execute(&t.pool)
    .await
    .unwrap();
    t.app.wakeups.appended("User");

    eventually(
        "the poison event to be parked",
        Duration::from_secs(20),
        || async {
            let ready = t.call(Method::GET, "/ready", None, None).await;
            ready.body["projections"]["users"]["parked"] == 1
        },
    )
    .await;
    // The read model goes on: a new account registers and reads itself back at once.
    let (_, other) = t.user(&unique_email("after")).await;
    assert_eq!(t.get("/api/me", &other).await.status, StatusCode::OK);
    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        text.contains("projection_events_parked_total{projection=\"users\"}"),
        "{text}"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_arosaje"))
        .args(["projections", "status"])
        .env(
            "DATABASE_URL",
            t.pool.connect_options().to_url_lossy().to_string(),
        )
        .output()
        .expect("projections status");
    let printed = String::from_utf8_lossy(&status.stdout);
    let users = printed
        .lines()
        .find(|l| l.starts_with("users "))
        .unwrap_or_default();
    assert!(users.trim_end().ends_with(" 1"), "{printed}");
    drop(token);
}

#[sqlx::test]
async fn guessable_passwords_are_refused_with_the_reason(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("weak");
    for weak in ["password1234", "qwertyuiop123"] {
        let reply = t
            .post(
                "/api/auth/register",
                None,
                json!({"email": email, "password": weak, "display_name": "Weak"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
        let reason = reply.body["error"]["fields"]["password"].as_str().unwrap();
        assert!(reason.starts_with("is too easy to guess:"), "{reason}");
    }
    let short = t
        .post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": "Xk9#mQ2$vL", "display_name": "Weak"}),
        )
        .await;
    assert_eq!(
        short.body["error"]["fields"]["password"],
        "must be at least 12 characters"
    );
}

#[sqlx::test]
async fn display_names_refuse_invisible_and_direction_characters(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("ana")).await;
    let reply = t
        .patch(
            "/api/me",
            &token,
            json!({"display_name": "Ana\u{202E}nimdA"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    assert!(reply.body["error"]["fields"]["display_name"].is_string());
    let registered = t
        .post(
            "/api/auth/register",
            None,
            json!({"email": unique_email("z"), "password": PASSWORD, "display_name": "\u{200B}Ana"}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test]
async fn a_failed_login_writes_one_json_security_line_with_no_secret(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("target");
    t.user(&email).await;

    let (captured, guard) = capture_logs();
    let wrong = "a wrong guess at the password";
    let reply = t.login(&email, wrong).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(t.login(&email, PASSWORD).await.status, StatusCode::OK);
    drop(guard);

    let text = captured.text();
    let lines = captured.lines();
    let failed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["event"] == "login_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    let line = failed[0];
    assert_eq!(line["target"], "security");
    assert_eq!(line["fields"]["reason"], "invalid_credentials");
    assert_eq!(line["fields"]["email"].as_str().unwrap().len(), 16);
    assert!(
        !line["span"]["request_id"].as_str().unwrap().is_empty(),
        "{line}"
    );
    assert!(
        line["span"]["client_ip"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["event"] == "login_succeeded"),
        "{text}"
    );
    for secret in [wrong, PASSWORD, email.as_str(), "$argon2", "Bearer"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    assert!(metrics
        .body
        .as_str()
        .unwrap_or_default()
        .contains("failed_logins_total{reason=\"invalid_credentials\"}"));
}

#[sqlx::test]
async fn the_log_holds_no_password_hash_in_clear_and_old_events_still_work(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("hashed");
    let (user_id, token) = t.user(&email).await;
    let changed = t
        .post(
            "/api/me/password",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT);
    let in_clear: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%$argon2%'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(in_clear, 0, "hashes are sealed in the log");
    let versions: Vec<String> = sqlx::query_scalar(
        "SELECT event_version FROM events WHERE aggregate_id = $1 \
           AND event_type IN ('UserRegistered', 'PasswordChanged') ORDER BY sequence",
    )
    .bind(user_id.to_string())
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(versions, ["2", "2"]);

    // An account registered before (version 1: the hash in clear) is read through the upcaster.
    let old_id = Uuid::now_v7();
    let old_email = unique_email("veteran");
    let mut tx = arosaje::infra::db::begin(&t.pool).await.unwrap();
    let cipher = t.app.keys.create_in(&mut tx, old_id).await.unwrap();
    tx.commit().await.unwrap();
    let password = arosaje::commands::values::Password::parse(PASSWORD, &[]).unwrap();
    let hash = arosaje::identity::passwords::hash_password(password)
        .await
        .unwrap();
    let v1 = json!({"UserRegistered": {
        "email": cipher.seal(&old_email),
        "display_name": cipher.seal("Veteran"),
        "password_hash": hash,
        "role": "USER",
        "botanist_requested": false,
    }});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         VALUES ('User', $1, 1, 'UserRegistered', '1', $2, '{}')",
    )
    .bind(old_id.to_string())
    .bind(v1)
    .execute(&t.pool)
    .await
    .unwrap();
    t.app.wakeups.appended("User");
    eventually(
        "the old account to log in",
        Duration::from_secs(10),
        || async { t.login(&old_email, PASSWORD).await.status == StatusCode::OK },
    )
    .await;
    // The command side loads it through the same upcaster.
    let login = t.login(&old_email, PASSWORD).await;
    let old_token = login.body["access_token"].as_str().unwrap();
    let changed = t
        .post(
            "/api/me/password",
            Some(old_token),
            json!({"current_password": PASSWORD, "new_password": "a modern long passphrase"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    assert_eq!(
        t.login(&old_email, "a modern long passphrase").await.status,
        StatusCode::OK
    );
}
