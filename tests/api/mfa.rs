//! TOTP two-factor authentication, with codes computed here as an authenticator app would:
//! enrolment (with the password, no fresh login), codes that work once, the per-account lock
//! after wrong codes in a row, the per-account cap on password checks, and the mails.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use totp_rs::{Algorithm, Secret, TOTP};
use uuid::Uuid;

use crate::helpers::{
    config, eventually, put_redis_session, redis_session, unique_email, Reply, TestApp, PASSWORD,
};
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
pub async fn enrol(t: &TestApp, token: &str) -> (String, Vec<String>) {
    let started = t
        .post(
            "/api/me/mfa/totp",
            Some(token),
            json!({"current_password": PASSWORD}),
        )
        .await;
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
    let enabled = smtp.wait_for(&email, 2).await;
    assert_eq!(enabled.subject(), "Two-factor authentication was turned on");
    let removal = smtp.wait_for(&email, 3).await;
    assert_eq!(
        removal.subject(),
        "Two-factor authentication was turned off"
    );
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

/// A config whose per-client and per-address limits stay out of the way of tests that make many
/// attempts on purpose (the per-account limits are what they look at).
fn roomy() -> arosaje::config::Config {
    let mut roomy = config();
    roomy.rate_limit_auth = 1000;
    roomy.rate_limit_auth_per_email = 1000;
    roomy
}

fn login_with(email: &str, code: &str) -> serde_json::Value {
    json!({"email": email, "password": PASSWORD, "totp_code": code})
}

/// Moves the session's last proof of identity `minutes` into the past (a stale session).
async fn age_proof(t: &TestApp, user_id: Uuid, token: &str, minutes: i64) {
    let sid = t.app.jwt.verify(token).unwrap().sid;
    let mut session = redis_session(user_id, sid).await;
    session["authenticated_at"] =
        json!((chrono::Utc::now() - chrono::Duration::minutes(minutes)).to_rfc3339());
    put_redis_session(user_id, sid, &session).await;
}

/// Milliseconds a Redis key has left (-2: no such key).
async fn redis_pttl(key: &str) -> i64 {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("pttl")
}

fn retry_after(reply: &Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Asserts a 429 `mfa_locked` with a Retry-After within the 15-minute lock.
fn assert_locked(reply: &Reply, what: &str) {
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::TOO_MANY_REQUESTS, "mfa_locked"),
        "{what}: {reply:?}"
    );
    let secs = retry_after(reply);
    assert!((1..=900).contains(&secs), "{what}: Retry-After {secs}");
}

/// Waits until the mailer has passed every event in the log, so that what it will send is sent.
async fn mailer_caught_up(t: &TestApp) {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    eventually(
        "the mailer to pass the log",
        Duration::from_secs(20),
        || async {
            arosaje::projections::runner::load_checkpoint(&t.pool, "mailer")
                .await
                .is_ok_and(|p| p.global_position >= last)
        },
    )
    .await;
}

#[sqlx::test]
async fn enrolling_needs_the_current_password_and_is_no_fresh_login(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    let t = TestApp::with_config(options, connect, mailing, true).await;
    let email = unique_email("stolen");
    let (user_id, token) = t.user(&email).await;
    // A session whose login is older than the step-up window, as a thief would hold it.
    age_proof(&t, user_id, &token, 6).await;
    let sid = t.app.jwt.verify(&token).unwrap().sid;
    let proof_before = redis_session(user_id, sid).await["authenticated_at"].clone();

    let without = t.post("/api/me/mfa/totp", Some(&token), json!({})).await;
    assert_eq!(
        (without.status, without.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
        "{without:?}"
    );
    assert!(without.body["error"]["fields"]["current_password"].is_string());
    let wrong = t
        .post(
            "/api/me/mfa/totp",
            Some(&token),
            json!({"current_password": "not my password at all"}),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
        "{wrong:?}"
    );
    assert!(wrong.body["error"]["fields"]["current_password"].is_string());
    let pending: Option<String> =
        sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(pending, None, "nothing enrolled without the password");

    // With the password the enrolment goes through, but proves nothing for step-up.
    let (secret, _) = enrol(&t, &token).await;
    assert_eq!(t.get("/api/me", &token).await.body["mfa_enabled"], true);
    let session = redis_session(user_id, sid).await;
    assert_eq!(session["mfa"], true, "the session now has a second factor");
    assert_eq!(session["authenticated_at"], proof_before, "{session}");
    let erase = t.delete("/api/me", &token).await;
    assert_eq!(
        (erase.status, erase.code()),
        (StatusCode::FORBIDDEN, "step_up_required"),
        "{erase:?}"
    );

    // The owner hears of the new app.
    let mail = smtp.wait_for(&email, 2).await;
    assert_eq!(mail.subject(), "Two-factor authentication was turned on");
    assert!(
        mail.body().contains("reset your password"),
        "{}",
        mail.body()
    );

    // A fresh code is a proof; then the erasure passes.
    let verified = t
        .post(
            "/api/me/mfa/verify",
            Some(&token),
            json!({"code": code(&secret, 1)}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::NO_CONTENT, "{verified:?}");
    let erased = t.delete("/api/me", &token).await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT, "{erased:?}");
}

#[sqlx::test]
async fn five_wrong_codes_in_a_row_lock_every_code_route_and_mail_the_owner_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let mut mailing = roomy();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    let t = TestApp::with_config(options, connect, mailing, true).await;
    let email = unique_email("guessed");
    let (user_id, token) = t.user(&email).await;
    let (secret, recovery) = enrol(&t, &token).await;
    let wrong_login = || t.post("/api/auth/login", None, login_with(&email, "000000"));
    let wrong_verify = || {
        t.post(
            "/api/me/mfa/verify",
            Some(&token),
            json!({"code": "000000"}),
        )
    };
    let wrong_removal = || {
        t.call(
            Method::DELETE,
            "/api/me/mfa/totp",
            Some(&token),
            Some(json!({"code": "111111"})),
        )
    };

    // Four wrong codes, across the routes, then a right one: the run starts over.
    for reply in [
        wrong_login().await,
        wrong_verify().await,
        wrong_removal().await,
        wrong_login().await,
    ] {
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNAUTHORIZED, "mfa_invalid"),
            "{reply:?}"
        );
    }
    let right = t
        .post(
            "/api/me/mfa/verify",
            Some(&token),
            json!({"code": recovery[0]}),
        )
        .await;
    assert_eq!(right.status, StatusCode::NO_CONTENT, "{right:?}");
    for reply in [
        wrong_verify().await,
        wrong_removal().await,
        wrong_login().await,
        wrong_verify().await,
    ] {
        assert_eq!(
            reply.code(),
            "mfa_invalid",
            "counted from zero again: {reply:?}"
        );
    }
    assert_eq!(
        redis_pttl(&format!("mfa_lock:{user_id}")).await,
        -2,
        "not locked yet"
    );

    // The fifth wrong code in a row locks the second factor.
    assert_locked(&wrong_login().await, "the fifth wrong code");
    assert!(redis_pttl(&format!("mfa_lock:{user_id}")).await > 890_000);

    // Now every code is refused unchecked, right ones too, on every route that takes one.
    let totp = code(&secret, 1);
    assert_locked(
        &t.post("/api/auth/login", None, login_with(&email, &totp))
            .await,
        "login with a right TOTP code",
    );
    assert_locked(
        &t.post("/api/auth/login", None, login_with(&email, &recovery[1]))
            .await,
        "login with a right recovery code",
    );
    assert_locked(
        &t.post("/api/auth/login", None, login_body(&email, None))
            .await,
        "login with the password alone",
    );
    assert_locked(
        &t.post("/api/me/mfa/verify", Some(&token), json!({"code": totp}))
            .await,
        "step-up",
    );
    assert_locked(
        &t.call(
            Method::DELETE,
            "/api/me/mfa/totp",
            Some(&token),
            Some(json!({"code": recovery[2]})),
        )
        .await,
        "removal",
    );
    assert_locked(
        &t.post(
            "/api/me/mfa/totp/confirm",
            Some(&token),
            json!({"code": totp}),
        )
        .await,
        "confirmation",
    );
    // A wrong password says what it says for any address: nothing about the lock.
    let guess = t.login(&email, "not the password, sorry").await;
    let stranger = t
        .login(&unique_email("nobody"), "not the password, sorry")
        .await;
    assert_eq!(
        (guess.status, guess.code(), &guess.body["error"]["message"]),
        (
            stranger.status,
            stranger.code(),
            &stranger.body["error"]["message"]
        )
    );
    assert_eq!(guess.code(), "invalid_credentials");
    let unspent: Vec<String> =
        sqlx::query_scalar("SELECT unnest(recovery_codes) FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_all(&t.pool)
            .await
            .unwrap();
    assert_eq!(unspent.len(), 9, "refused codes are not spent");

    // The owner is mailed once about the lock, however many codes came during it.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'SecondFactorLocked'",
    )
    .bind(user_id.to_string())
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(locks, 1);
    mailer_caught_up(&t).await;
    let lock_mails: Vec<_> = smtp
        .mails_to(&email)
        .into_iter()
        .filter(|m| m.subject() == "Two-factor codes locked after wrong attempts")
        .collect();
    assert_eq!(lock_mails.len(), 1, "one mail per lock");
    assert!(
        lock_mails[0].body().contains("5 wrong two-factor codes"),
        "{}",
        lock_mails[0].body()
    );

    // The lock is the account's: another account's codes are checked as usual.
    let other_email = unique_email("bystander");
    let (_, other) = t.user(&other_email).await;
    let (other_secret, _) = enrol(&t, &other).await;
    let fine = t
        .post(
            "/api/auth/login",
            None,
            login_with(&other_email, &code(&other_secret, 1)),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{fine:?}");
}

#[sqlx::test]
async fn wrong_confirmation_codes_count_and_the_lock_lifts_after_its_time(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut short = roomy();
    short.mfa_lockout_secs = 1;
    let t = TestApp::with_config(options, connect, short, true).await;
    let email = unique_email("hasty");
    let (user_id, token) = t.user(&email).await;
    let started = t
        .post(
            "/api/me/mfa/totp",
            Some(&token),
            json!({"current_password": PASSWORD}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let secret = started.body["secret"].as_str().unwrap().to_string();
    for _ in 0..4 {
        let wrong = t
            .post(
                "/api/me/mfa/totp/confirm",
                Some(&token),
                json!({"code": "000000"}),
            )
            .await;
        assert_eq!(wrong.code(), "mfa_invalid", "{wrong:?}");
    }
    let fifth = t
        .post(
            "/api/me/mfa/totp/confirm",
            Some(&token),
            json!({"code": "000000"}),
        )
        .await;
    assert_eq!(
        (fifth.status, fifth.code()),
        (StatusCode::TOO_MANY_REQUESTS, "mfa_locked"),
        "{fifth:?}"
    );
    let right = t
        .post(
            "/api/me/mfa/totp/confirm",
            Some(&token),
            json!({"code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(right.code(), "mfa_locked", "even the right code: {right:?}");
    assert_eq!(t.get("/api/me", &token).await.body["mfa_enabled"], false);

    // Once the lock's time is over, the right code works (it was never checked meanwhile).
    let lock = format!("mfa_lock:{user_id}");
    eventually("the lock to lift", Duration::from_secs(5), || async {
        redis_pttl(&lock).await == -2
    })
    .await;
    let confirmed = t
        .post(
            "/api/me/mfa/totp/confirm",
            Some(&token),
            json!({"code": code(&secret, 0)}),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{confirmed:?}");
    let recovery = confirmed.body["recovery_codes"][0]
        .as_str()
        .unwrap()
        .to_string();

    // A run of wrong codes starts over from there: four more are only 401s.
    for _ in 0..4 {
        let wrong = t
            .post("/api/auth/login", None, login_with(&email, "000000"))
            .await;
        assert_eq!(wrong.code(), "mfa_invalid", "{wrong:?}");
    }
    let rescue = t
        .post("/api/auth/login", None, login_with(&email, &recovery))
        .await;
    assert_eq!(rescue.status, StatusCode::OK, "{rescue:?}");
}

#[sqlx::test]
async fn password_checks_are_capped_per_account_from_any_address(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut capped = roomy();
    capped.password_attempts_per_account = 3;
    let t = TestApp::with_config(options, connect, capped, true).await;
    // The same app seen from another client address.
    let elsewhere = TestApp {
        app: t.app.clone(),
        router: arosaje::api::router(t.app.clone()).layer(
            axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::from((
                [10, 200, 0, 1],
                40000,
            ))),
        ),
        pool: t.pool.clone(),
        _projectors: None,
        checked: Default::default(),
    };
    let email = unique_email("target");
    let (user_id, token) = t.user(&email).await;
    let nobody = unique_email("nobody");

    // Right passwords are not counted against the account.
    for _ in 0..4 {
        assert_eq!(t.login(&email, PASSWORD).await.status, StatusCode::OK);
    }
    // Three wrong ones from here are; the fourth attempt, from elsewhere and with the right
    // password, is refused before any check. An address without an account answers the same.
    for address in [&email, &nobody] {
        for guess in ["guess number one", "guess number two", "guess number three"] {
            let reply = t.login(address, guess).await;
            assert_eq!(reply.code(), "invalid_credentials", "{address}: {reply:?}");
        }
        let refused = elsewhere.login(address, PASSWORD).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_password_attempts"),
            "{address}: {refused:?}"
        );
        let secs = retry_after(&refused);
        assert!((3000..=3600).contains(&secs), "Retry-After {secs}");
    }

    // Checks of the current password by a logged-in user count on the same account.
    let changing = t
        .post(
            "/api/me/password",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": "a brand new long passphrase"}),
        )
        .await;
    assert_eq!(
        changing.code(),
        "too_many_password_attempts",
        "{changing:?}"
    );
    let enrolling = t
        .post(
            "/api/me/mfa/totp",
            Some(&token),
            json!({"current_password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (enrolling.status, enrolling.code()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_password_attempts"),
        "{enrolling:?}"
    );
    assert!(enrolling.headers.contains_key("retry-after"));

    // Another account is not held up, and its wrong current password counts for it alone.
    let other_email = unique_email("other");
    let (_, other) = t.user(&other_email).await;
    for _ in 0..3 {
        let wrong = t
            .post(
                "/api/me/mfa/totp",
                Some(&other),
                json!({"current_password": "not the password, sorry"}),
            )
            .await;
        assert_eq!(wrong.code(), "validation_failed", "{wrong:?}");
    }
    let capped = t.login(&other_email, PASSWORD).await;
    assert_eq!(capped.code(), "too_many_password_attempts", "{capped:?}");
    let key = format!(
        "password_attempts:{}",
        arosaje::identity::passwords::attempts_key(
            &t.app
                .email_index
                .hash(&arosaje::commands::values::Email::parse(&email).unwrap())
        )
    );
    assert!(redis_pttl(&key).await > 3_000_000, "kept for the hour");
    assert_eq!(
        t.get("/api/me", &token).await.body["id"],
        user_id.to_string()
    );
}

#[sqlx::test]
async fn recovery_codes_carry_over_112_bits_and_the_log_keeps_only_their_hashes(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let email = unique_email("keeper");
    let (user_id, token) = t.user(&email).await;
    let (_, recovery) = enrol(&t, &token).await;

    const ALPHABET: &str = "abcdefghjkmnpqrstuvwxyz23456789";
    let distinct: std::collections::BTreeSet<&String> = recovery.iter().collect();
    assert_eq!(distinct.len(), 10);
    for code in &recovery {
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.len(), 6, "{code}");
        assert!(groups.iter().all(|g| g.len() == 4), "{code}");
        let symbols: String = groups.concat();
        assert!(symbols.chars().all(|c| ALPHABET.contains(c)), "{code}");
        // 24 symbols out of 31: log2(31^24) > 118 bits.
        assert!(symbols.len() as f64 * 31f64.log2() >= 112.0);
        for form in [code.clone(), symbols.clone()] {
            let found: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM events WHERE payload::text LIKE $1) \
                      + (SELECT count(*) FROM users WHERE array_to_string(recovery_codes, ',') LIKE $1)",
            )
            .bind(format!("%{form}%"))
            .fetch_one(&t.pool)
            .await
            .unwrap();
            assert_eq!(found, 0, "{form} is stored in clear");
        }
    }
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT unnest(recovery_codes) FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_all(&t.pool)
            .await
            .unwrap();
    use sha2::Digest;
    let expected: std::collections::BTreeSet<String> = recovery
        .iter()
        .map(|c| {
            let symbols = c.replace('-', "");
            sha2::Sha256::digest(symbols.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect();
    assert_eq!(
        stored
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        expected,
        "SHA-256 of each code, nothing else"
    );

    // Typed in capitals without the dashes, a code still works, once.
    let typed = recovery[3].replace('-', "").to_uppercase();
    let rescue = t
        .post("/api/auth/login", None, login_with(&email, &typed))
        .await;
    assert_eq!(rescue.status, StatusCode::OK, "{rescue:?}");
    let again = t
        .post("/api/auth/login", None, login_with(&email, &recovery[3]))
        .await;
    assert_eq!(again.code(), "mfa_invalid");
}
