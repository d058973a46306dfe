//! E-mail verification and password reset, with mails read from a real SMTP server on loopback.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{config, unique_email, TestApp, PASSWORD};
use crate::smtp::{Behaviour, SmtpServer};

async fn app_with_smtp(options: PgPoolOptions, connect: PgConnectOptions) -> (TestApp, SmtpServer) {
    app_with(options, connect, SmtpServer::start().await).await
}

async fn app_with(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    smtp: SmtpServer,
) -> (TestApp, SmtpServer) {
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    mailing.public_url = "https://app.arosaje.example".into();
    (
        TestApp::with_config(options, connect, mailing, true).await,
        smtp,
    )
}

#[sqlx::test]
async fn registration_mails_a_link_that_verifies_the_address(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, smtp) = app_with_smtp(options, connect).await;
    let email = unique_email("gina");
    let (_, token) = t.user(&email).await;
    assert_eq!(t.get("/api/me", &token).await.body["email_verified"], false);

    let mail = smtp.wait_for(&email, 1).await;
    assert_eq!(mail.subject(), "Confirm your e-mail address");
    assert!(
        mail.body()
            .contains("https://app.arosaje.example/verify-email#token="),
        "{}",
        mail.body()
    );
    let verified = t
        .post(
            "/api/auth/verify-email",
            None,
            json!({"token": mail.token()}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::NO_CONTENT, "{verified:?}");
    assert_eq!(t.get("/api/me", &token).await.body["email_verified"], true);
    // Following the link twice is harmless.
    let again = t
        .post(
            "/api/auth/verify-email",
            None,
            json!({"token": mail.token()}),
        )
        .await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);

    for bad in ["garbage", "a.b.c"] {
        let reply = t
            .post("/api/auth/verify-email", None, json!({"token": bad}))
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, "invalid_token")
        );
    }
    // An access token is not a verification token.
    let reply = t
        .post("/api/auth/verify-email", None, json!({"token": token}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Replaying the log through the mailer sends nothing twice.
    sqlx::query("UPDATE projection_checkpoints SET last_position = 0 WHERE name = 'mailer'")
        .execute(&t.pool)
        .await
        .unwrap();
    t.app.projections.catch_up("mailer").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(smtp.mails_to(&email).len(), 1, "no duplicate mail");
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sent_mails WHERE kind = 'verify_email'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

#[sqlx::test]
async fn a_password_reset_link_works_once_and_ends_every_session(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, smtp) = app_with_smtp(options, connect).await;
    let email = unique_email("hugo");
    let (_, old_token) = t.user(&email).await;
    smtp.wait_for(&email, 1).await; // the verification mail

    let stranger = unique_email("nobody");
    for address in [&email, &stranger] {
        let reply = t
            .post("/api/auth/password-reset", None, json!({"email": address}))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "the same answer for both"
        );
    }
    let mail = smtp.wait_for(&email, 2).await;
    assert_eq!(mail.subject(), "Reset your password");
    let reset = mail.token();

    let weak = t
        .post(
            "/api/auth/password-reset/confirm",
            None,
            json!({"token": reset, "new_password": "short"}),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    let new_password = "a brand new passphrase";
    let done = t
        .post(
            "/api/auth/password-reset/confirm",
            None,
            json!({"token": reset, "new_password": new_password}),
        )
        .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{done:?}");
    assert_eq!(t.get("/api/me", &old_token).await.code(), "session_revoked");
    assert_eq!(
        t.login(&email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(t.login(&email, new_password).await.status, StatusCode::OK);

    let reused = t
        .post(
            "/api/auth/password-reset/confirm",
            None,
            json!({"token": reset, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::BAD_REQUEST, "invalid_token")
    );
    assert!(
        smtp.mails_to(&stranger).is_empty(),
        "nothing is sent to an unknown address"
    );
    let malformed = t
        .post(
            "/api/auth/password-reset",
            None,
            json!({"email": "not an address"}),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[sqlx::test]
async fn the_verified_guard_waits_for_the_email_link_unless_configured_off(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use arosaje::api::guard::Verified;
    use axum::routing::get;
    use tower::ServiceExt;

    // Sittings will take `Verified`; until they exist, a probe route exercises the guard.
    let probe = |app: arosaje::App| {
        axum::Router::new()
            .route(
                "/probe",
                get(|_: Verified| async { StatusCode::NO_CONTENT }),
            )
            .with_state(app)
    };
    let call = |router: axum::Router, token: String| async move {
        let request = axum::http::Request::get("/probe")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    };

    let (t, smtp) = app_with_smtp(options.clone(), connect.clone()).await;
    let email = unique_email("ivy");
    let (_, token) = t.user(&email).await;
    assert_eq!(
        call(probe(t.app.clone()), token.clone()).await,
        StatusCode::FORBIDDEN
    );
    let body = t.get("/api/me", &token).await;
    assert_eq!(body.body["email_verified"], false);

    let mail = smtp.wait_for(&email, 1).await;
    t.post(
        "/api/auth/verify-email",
        None,
        json!({"token": mail.token()}),
    )
    .await;
    assert_eq!(
        call(probe(t.app.clone()), token.clone()).await,
        StatusCode::NO_CONTENT
    );

    let mut relaxed = config();
    relaxed.require_email_verification = false;
    let demo = TestApp::with_config(options, connect, relaxed, true).await;
    let (_, unverified) = demo.user(&unique_email("demo")).await;
    assert_eq!(
        call(probe(demo.app.clone()), unverified).await,
        StatusCode::NO_CONTENT
    );
}

#[sqlx::test]
async fn addresses_the_mailer_cannot_use_are_refused_at_registration(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, smtp) = app_with_smtp(options, connect).await;
    // Each was accepted by the old hand-written parser and refused by the SMTP library.
    for bad in [
        "a,b@example.org",
        "a b@example.org",
        "a@b@example.org",
        "<a>@example.org",
    ] {
        let reply = t.register(bad, "Bad").await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {reply:?}"
        );
        assert!(
            reply.body["error"]["fields"]["email"].is_string(),
            "{reply:?}"
        );
    }
    // The next registration's mail arrives.
    let email = unique_email("ok");
    t.user(&email).await;
    smtp.wait_for(&email, 1).await;
}

#[sqlx::test]
async fn a_mail_refused_for_good_is_recorded_and_the_next_one_still_goes_out(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start_with(Behaviour {
        refuse: vec!["refused-".into()],
        ..Behaviour::default()
    })
    .await;
    let (t, smtp) = app_with(options, connect, smtp).await;
    let refused = unique_email("refused");
    t.user(&refused).await;
    let email = unique_email("fine");
    t.user(&email).await;
    smtp.wait_for(&email, 1).await;

    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, error FROM sent_mails ORDER BY event_position")
            .fetch_all(&t.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, "failed");
    assert!(
        rows[0].1.as_deref().unwrap_or("").contains("550"),
        "{rows:?}"
    );
    assert_eq!(rows[1], ("sent".to_string(), None));
    assert!(smtp.mails_to(&refused).is_empty());
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "a refusal is an outcome, not a poison event");
}

#[sqlx::test]
async fn a_slow_smtp_server_delays_no_command(options: PgPoolOptions, connect: PgConnectOptions) {
    let smtp = SmtpServer::start_with(Behaviour {
        delay: Duration::from_secs(1),
        ..Behaviour::default()
    })
    .await;
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    mailing.read_your_writes_timeout_ms = 2000;
    let t = TestApp::with_config(options, connect, mailing, true).await;
    // Registration makes the mailer talk to the slow server for several seconds...
    let email = unique_email("patient");
    let (_, token) = t.user(&email).await;
    // ...meanwhile commands answer once their read models have caught up, well within time.
    for name in ["Basil", "Thyme", "Sage"] {
        let plant = t.create_plant(&token, name).await;
        assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
    }
    assert!(
        smtp.mails_to(&email).is_empty(),
        "the mail was still on its way"
    );
    smtp.wait_for(&email, 1).await;
}

#[sqlx::test]
async fn two_instances_send_each_mail_once(options: PgPoolOptions, connect: PgConnectOptions) {
    let smtp = SmtpServer::start().await;
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    let first = TestApp::with_config(options.clone(), connect.clone(), mailing.clone(), true).await;
    let second = TestApp::with_config(options, connect, mailing, true).await;
    let mut emails = Vec::new();
    for i in 0..6 {
        let email = unique_email("twice");
        let app = if i % 2 == 0 { &first } else { &second };
        app.user(&email).await;
        emails.push(email);
    }
    for email in &emails {
        smtp.wait_for(email, 1).await;
    }
    // Both instances run the mailer; one holds its lock and the other stands by.
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM sent_mails")
        .fetch_one(&first.pool)
        .await
        .unwrap();
    assert_eq!(sent, 6);
    for email in &emails {
        assert_eq!(smtp.mails_to(email).len(), 1, "{email}");
    }
}

#[sqlx::test]
async fn a_password_change_is_mailed_to_the_owner(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, smtp) = app_with_smtp(options, connect).await;
    let email = unique_email("alerted");
    let (_, token) = t.user(&email).await;
    smtp.wait_for(&email, 1).await;
    let changed = t
        .post(
            "/api/me/password",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": "a fresh long passphrase"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    let mail = smtp.wait_for(&email, 2).await;
    assert_eq!(mail.subject(), "Your A'rosa-je password was changed");
    assert!(mail.body().contains("other sessions were ended"));
}

#[sqlx::test]
async fn a_login_from_a_new_device_is_mailed_but_not_the_first_one(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, smtp) = app_with_smtp(options, connect).await;
    let email = unique_email("traveller");
    t.user(&email).await;
    smtp.wait_for(&email, 1).await; // the verification link
    let login = |agent: &'static str| {
        let request = axum::http::Request::post("/api/auth/login")
            .header("content-type", "application/json")
            .header("user-agent", agent)
            .body(axum::body::Body::from(
                json!({"email": email, "password": PASSWORD}).to_string(),
            ))
            .unwrap();
        t.raw(request)
    };
    assert_eq!(login("Phone/1.0").await.status, StatusCode::OK);
    assert_eq!(login("Phone/1.0").await.status, StatusCode::OK);
    let mail = smtp.wait_for(&email, 2).await;
    assert_eq!(mail.subject(), "New login to your A'rosa-je account");
    assert!(mail.body().contains("Phone/1.0"), "{}", mail.body());
    // Two devices, two records; the same device again adds none (the aggregate's unit test).
    let pool = t.pool.clone();
    crate::helpers::eventually("both devices recorded", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE event_type = 'LoggedInFromNewDevice'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 2
        }
    })
    .await;
    assert_eq!(
        smtp.mails_to(&email).len(),
        2,
        "no mail for the first device"
    );
}
