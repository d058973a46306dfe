//! TOTP two-factor authentication, with codes computed here as an authenticator app would.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use totp_rs::{Algorithm, Secret, TOTP};

use crate::helpers::{config, put_redis_session, redis_session, unique_email, TestApp, PASSWORD};
use crate::smtp::SmtpServer;

/// The code an app shows `steps` time steps from now.
fn code(secret: &str, steps: i64) -> String {
    let bytes = Secret::Encoded(secret.to_string()).to_bytes().unwrap();
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes, None, String::new());
    let now = chrono::Utc::now().timestamp() + steps * 30;
    totp.generate(now as u64)
}

fn login_body(email: &str, totp: Option<&str>) -> serde_json::Value {
    match totp {
        Some(code) => json!({"email": email, "password": PASSWORD, "totp_code": code}),
        None => json!({"email": email, "password": PASSWORD}),
    }
}

/// Enrols and confirms TOTP for the holder of `token`; returns (secret, recovery codes).
async fn enrol(t: &TestApp, token: &str) -> (String, Vec<String>) {
    let started = t.post("/api/me/mfa/totp", Some(token), json!({})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let secret = started.body["secret"].as_str().unwrap().to_string();
    let url = started.body["otpauth_url"].as_str().unwrap();
    assert!(url.starts_with("otpauth://totp/"), "{url}");
    assert!(url.contains(&format!("secret={secret}")), "{url}");
    let wrong = t
        .post(
            "/api/me/mfa/totp/confirm",
            Some(token),
            json!({"code": "000000"}),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::UNAUTHORIZED, "mfa_invalid")
    );
    let confirmed = t
        .post(
            "/api/me/mfa/totp/confirm",
            Some(token),
            json!({"code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{confirmed:?}");
    let codes: Vec<String> = confirmed.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

#[sqlx::test]
async fn totp_guards_login_codes_work_once_and_removal_is_mailed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    let t = TestApp::with_config(options, connect, mailing, true).await;
    let email = unique_email("careful");
    let (_, token) = t.user(&email).await;
    let (secret, recovery) = enrol(&t, &token).await;
    assert_eq!(t.get("/api/me", &token).await.body["mfa_enabled"], true);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE $1")
        .bind(format!("%{secret}%"))
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the secret is sealed in the log");

    let bare = t
        .post("/api/auth/login", None, login_body(&email, None))
        .await;
    assert_eq!(
        (bare.status, bare.code()),
        (StatusCode::UNAUTHORIZED, "mfa_required")
    );
    // The code that confirmed enrolment was used: it does not log in.
    let replayed = t
        .post(
            "/api/auth/login",
            None,
            login_body(&email, Some(&code(&secret, 0))),
        )
        .await;
    assert_eq!(replayed.code(), "mfa_invalid", "{replayed:?}");
    let next = code(&secret, 1);
    let ok = t
        .post("/api/auth/login", None, login_body(&email, Some(&next)))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    let again = t
        .post("/api/auth/login", None, login_body(&email, Some(&next)))
        .await;
    assert_eq!(again.code(), "mfa_invalid", "each code works once");

    // A recovery code stands in for the app, once.
    let rescue = t
        .post(
            "/api/auth/login",
            None,
            login_body(&email, Some(&recovery[0])),
        )
        .await;
    assert_eq!(rescue.status, StatusCode::OK, "{rescue:?}");
    let reused = t
        .post(
            "/api/auth/login",
            None,
            login_body(&email, Some(&recovery[0])),
        )
        .await;
    assert_eq!(reused.code(), "mfa_invalid");

    // Removal needs a code, and the owner hears of it.
    let refused = t
        .call(
            Method::DELETE,
            "/api/me/mfa/totp",
            Some(&token),
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let removed = t
        .call(
            Method::DELETE,
            "/api/me/mfa/totp",
            Some(&token),
            Some(json!({"code": recovery[1]})),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{removed:?}");
    assert_eq!(
        t.post("/api/auth/login", None, login_body(&email, None))
            .await
            .status,
        StatusCode::OK
    );
    let mail = smtp.wait_for(&email, 2).await;
    assert_eq!(mail.subject(), "Two-factor authentication was turned off");
}

#[sqlx::test]
async fn admins_without_mfa_may_only_enrol_and_role_changes_need_a_recent_proof(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut strict = config();
    strict.admin_mfa = arosaje::config::MfaPolicy::Required;
    let t = TestApp::with_config(options, connect, strict, true).await;
    let (admin_id, admin) = t.admin().await;
    let (target, _) = t.user(&unique_email("promoted")).await;

    let refused = t.get("/api/admin/users", &admin).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "mfa_enrollment_required")
    );
    assert_eq!(t.get("/api/me", &admin).await.status, StatusCode::OK);
    let (secret, _) = enrol(&t, &admin).await;
    assert_eq!(
        t.get("/api/admin/users", &admin).await.status,
        StatusCode::OK,
        "the session that enrolled carries on"
    );

    // A role change needs a login or a code from the last five minutes.
    let sid = t.app.jwt.verify(&admin).unwrap().sid;
    let mut session = redis_session(admin_id, sid).await;
    session["authenticated_at"] =
        json!((chrono::Utc::now() - chrono::Duration::minutes(6)).to_rfc3339());
    put_redis_session(admin_id, sid, &session).await;
    let path = format!("/api/admin/users/{target}/role");
    let stale = t
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"role": "BOTANIST"})),
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::FORBIDDEN, "step_up_required"),
        "{stale:?}"
    );
    let verified = t
        .post(
            "/api/me/mfa/verify",
            Some(&admin),
            json!({"code": code(&secret, 1)}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::NO_CONTENT, "{verified:?}");
    let changed = t
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"role": "BOTANIST"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
}
