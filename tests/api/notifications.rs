//! Sitting mails end to end: the real API drives a sitting, the mailer sends through a real SMTP
//! server on loopback, and each mail arrives once, to the right person, naming people by display
//! name only, with no one else's address and no exact place. The start reminder and expiry jobs
//! are run for a given day, again, and on a second instance: one mail per recipient.

use std::time::Duration;

use arosaje::expiry::run_expiry;
use arosaje::reminders::{run_start_reminders, RemindersRun};
use axum::http::StatusCode;
use chrono::{Duration as Days, Utc};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{config, eventually, unique_email, TestApp, PASSWORD};
use crate::sittings::{request, sitting_body, LYON};
use crate::smtp::{Received, SmtpServer};

const PUBLIC_URL: &str = "https://app.arosaje.example";
const APPLICATION: &str = "New application to sit your plants";
const ACCEPTED: &str = "Your application to sit plants was accepted";
const REPORT: &str = "New care report on your plants";
const REMINDER: &str = "Your plant sitting starts tomorrow";
const EXPIRED: &str = "Your plant sitting request has expired";

fn mailing(smtp: &SmtpServer) -> arosaje::config::Config {
    let mut mailing = config();
    mailing.smtp_url = Some(arosaje::config::ConnectionUrl::new(smtp.url.clone()));
    mailing.public_url = PUBLIC_URL.into();
    mailing
}

struct Member {
    id: Uuid,
    token: String,
    email: String,
}

/// A user with a verified address and a display name of their own.
async fn member(t: &TestApp, prefix: &str, display_name: &str) -> Member {
    let email = unique_email(prefix);
    let registered = t.register(&email, display_name).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    let login = t.login(&email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let id = login.body["user"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("user id");
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let link = t
        .app
        .tokens
        .issue(arosaje::infra::tokens::Purpose::VerifyEmail, id, 0)
        .expect("verification token");
    let verified = t
        .post("/api/auth/verify-email", None, json!({ "token": link }))
        .await;
    assert_eq!(verified.status, StatusCode::NO_CONTENT, "{verified:?}");
    Member { id, token, email }
}

async fn plants(t: &TestApp, owner: &Member, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let plant = t.create_plant(&owner.token, &format!("Fern {i}")).await;
        assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
        ids.push(plant.body["id"].as_str().expect("id").to_string());
    }
    ids
}

/// Posts a sitting starting in `from` days and ending in `to`, in Lyon; returns its id.
async fn sitting(t: &TestApp, owner: &Member, plants: &[String], from: i64, to: i64) -> String {
    let created = request(
        t,
        &owner.token,
        sitting_body(plants, from, to, LYON, "Lyon"),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    created.body["id"].as_str().expect("id").to_string()
}

async fn act(t: &TestApp, who: &Member, sitting: &str, action: &str, body: serde_json::Value) {
    let reply = t
        .post(
            &format!("/api/sittings/{sitting}/{action}"),
            Some(&who.token),
            body,
        )
        .await;
    assert!(reply.status.is_success(), "{action}: {reply:?}");
}

/// Applies and accepts: `sitter` sits `sitting`.
async fn accepted(t: &TestApp, owner: &Member, sitter: &Member, sitting: &str) {
    act(t, sitter, sitting, "applications", json!({})).await;
    act(t, owner, sitting, "accept", json!({"sitter_id": sitter.id})).await;
}

/// Mails to `to` with this subject so far.
fn mails(smtp: &SmtpServer, to: &str, subject: &str) -> Vec<Received> {
    smtp.mails_to(to)
        .into_iter()
        .filter(|m| m.subject() == subject)
        .collect()
}

/// Waits for the first mail to `to` with this subject.
async fn mail(smtp: &SmtpServer, to: &str, subject: &str) -> Received {
    eventually(
        &format!("{subject:?} to {to}"),
        Duration::from_secs(20),
        || async { !mails(smtp, to, subject).is_empty() },
    )
    .await;
    mails(smtp, to, subject).remove(0)
}

/// Waits until the mailer has worked through every event appended so far: whatever it was
/// going to send is sent.
async fn mailer_caught_up(t: &TestApp) {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let pool = t.pool.clone();
    eventually(
        "the mailer at the head of the log",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT last_position FROM projection_checkpoints WHERE name = 'mailer'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    >= head
            }
        },
    )
    .await;
}

/// Replays the whole log through the mailer; it returns once every event was handled again.
async fn replay_mailer(t: &TestApp) {
    sqlx::query("UPDATE projection_checkpoints SET last_position = 0 WHERE name = 'mailer'")
        .execute(&t.pool)
        .await
        .unwrap();
    t.app.projections.catch_up("mailer").await.unwrap();
}

/// The mail says nothing of `other`'s address and nothing of the exact (or rounded) place.
fn assert_discreet(mail: &Received, other: &Member) {
    let body = mail.body();
    for leak in [other.email.as_str(), "45.7", "4.83"] {
        assert!(!body.contains(leak), "{leak:?} in {body}");
        assert!(!mail.data.contains(leak), "{leak:?} in {}", mail.data);
    }
}

#[sqlx::test]
async fn each_step_of_a_sitting_is_mailed_once_to_the_right_person(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let t = TestApp::with_config(options, connect, mailing(&smtp), true).await;
    let owner = member(&t, "owner", "Olga Owner").await;
    let sitter = member(&t, "sitter", "Sam Sitter").await;
    let plants = plants(&t, &owner, 2).await;
    let id = sitting(&t, &owner, &plants, 0, 5).await;
    let link = format!("{PUBLIC_URL}/sittings/{id}");

    act(
        &t,
        &sitter,
        &id,
        "applications",
        json!({"message": "I love ferns"}),
    )
    .await;
    let applied = mail(&smtp, &owner.email, APPLICATION).await;
    assert!(applied.body().contains("Sam Sitter"), "{}", applied.body());
    assert!(applied.body().contains(&link), "{}", applied.body());
    assert!(
        !applied.body().contains("I love ferns"),
        "{}",
        applied.body()
    );
    assert_discreet(&applied, &sitter);

    act(&t, &owner, &id, "accept", json!({"sitter_id": sitter.id})).await;
    let accepted = mail(&smtp, &sitter.email, ACCEPTED).await;
    let body = accepted.body();
    for expected in [
        "Olga Owner",
        "Lyon",
        "2 plants",
        &link,
        &Utc::now().date_naive().to_string(),
        &(Utc::now().date_naive() + Days::days(5)).to_string(),
    ] {
        assert!(body.contains(expected), "{expected:?} not in {body}");
    }
    assert!(!body.contains("Key under the blue pot"), "{body}");
    assert_discreet(&accepted, &owner);

    act(&t, &sitter, &id, "start", json!({})).await;
    act(
        &t,
        &sitter,
        &id,
        "reports",
        json!({"plant_id": plants[0], "note": "Watered, new leaf"}),
    )
    .await;
    let reported = mail(&smtp, &owner.email, REPORT).await;
    assert!(
        reported.body().contains("Sam Sitter"),
        "{}",
        reported.body()
    );
    assert!(reported.body().contains(&link), "{}", reported.body());
    assert!(!reported.body().contains("Watered"), "{}", reported.body());
    assert_discreet(&reported, &sitter);

    // Once each, to the right person only, even after the mailer replays the whole log.
    mailer_caught_up(&t).await;
    replay_mailer(&t).await;
    for (to, subject) in [
        (&owner.email, APPLICATION),
        (&sitter.email, ACCEPTED),
        (&owner.email, REPORT),
    ] {
        assert_eq!(mails(&smtp, to, subject).len(), 1, "{subject} to {to}");
    }
    for (to, subject) in [
        (&sitter.email, APPLICATION),
        (&owner.email, ACCEPTED),
        (&sitter.email, REPORT),
    ] {
        assert!(mails(&smtp, to, subject).is_empty(), "{subject} to {to}");
    }
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM sent_mails \
          WHERE kind IN ('application_received', 'sitter_accepted', 'report_posted') \
          GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            ("application_received".to_string(), 1),
            ("report_posted".to_string(), 1),
            ("sitter_accepted".to_string(), 1),
        ]
    );
}

#[sqlx::test]
async fn the_start_reminder_reaches_owner_and_sitter_once_across_runs_and_instances(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let first = TestApp::with_config(options.clone(), connect.clone(), mailing(&smtp), true).await;
    let second = TestApp::with_config(options, connect, mailing(&smtp), true).await;
    let owner = member(&first, "owner", "Olga Owner").await;
    let sitter = member(&first, "sitter", "Sam Sitter").await;
    let plants = plants(&first, &owner, 1).await;
    let tomorrow = sitting(&first, &owner, &plants, 1, 2).await;
    let later = sitting(&first, &owner, &plants, 3, 5).await;
    accepted(&first, &owner, &sitter, &tomorrow).await;
    accepted(&first, &owner, &sitter, &later).await;
    let today = Utc::now().date_naive();

    // Both instances at once, then each again: one reminder between them.
    let (a, b) = tokio::join!(
        run_start_reminders(&first.app, today),
        run_start_reminders(&second.app, today)
    );
    let (a, b) = (a.expect("first run"), b.expect("second run"));
    assert_eq!(a.issued + b.issued, 1, "{a:?} {b:?}");
    assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}");
    for app in [&first, &second] {
        let again = run_start_reminders(&app.app, today).await.expect("run");
        assert_eq!(
            again,
            RemindersRun {
                issued: 0,
                skipped: 1,
                failed: 0
            }
        );
    }

    let to_owner = mail(&smtp, &owner.email, REMINDER).await;
    let to_sitter = mail(&smtp, &sitter.email, REMINDER).await;
    let link = format!("{PUBLIC_URL}/sittings/{tomorrow}");
    let starts_on = (today + Days::days(1)).to_string();
    for expected in ["Sam Sitter", &link, &starts_on] {
        assert!(
            to_owner.body().contains(expected),
            "{expected:?} not in {}",
            to_owner.body()
        );
    }
    for expected in ["Olga Owner", "Lyon", &link, &starts_on] {
        assert!(
            to_sitter.body().contains(expected),
            "{expected:?} not in {}",
            to_sitter.body()
        );
    }
    assert_discreet(&to_owner, &sitter);
    assert_discreet(&to_sitter, &owner);

    mailer_caught_up(&first).await;
    replay_mailer(&first).await;
    assert_eq!(mails(&smtp, &owner.email, REMINDER).len(), 1);
    assert_eq!(mails(&smtp, &sitter.email, REMINDER).len(), 1);
    // The sitting three days away has had none yet.
    let later_link = format!("{PUBLIC_URL}/sittings/{later}");
    for to in [&owner.email, &sitter.email] {
        assert!(mails(&smtp, to, REMINDER)
            .iter()
            .all(|m| !m.body().contains(&later_link)));
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT user_id, kind FROM sent_mails WHERE kind = 'sitting_starts_tomorrow' \
          ORDER BY user_id",
    )
    .fetch_all(&first.pool)
    .await
    .unwrap();
    let mut expected = vec![owner.id, sitter.id];
    expected.sort();
    assert_eq!(
        rows.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        expected,
        "one row per recipient of the one reminder"
    );

    // Its turn comes the day before it starts.
    let run = run_start_reminders(&second.app, today + Days::days(2))
        .await
        .expect("run");
    assert_eq!(run.issued, 1, "{run:?}");
    for to in [&owner.email, &sitter.email] {
        eventually("the second reminder", Duration::from_secs(20), || async {
            mails(&smtp, to, REMINDER).len() >= 2
        })
        .await;
        let mail = mails(&smtp, to, REMINDER).remove(1);
        assert!(mail.body().contains(&later_link), "{}", mail.body());
    }
}

#[sqlx::test]
async fn the_owner_hears_once_that_a_sitting_expired_across_runs_and_instances(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let first = TestApp::with_config(options.clone(), connect.clone(), mailing(&smtp), true).await;
    let second = TestApp::with_config(options, connect, mailing(&smtp), true).await;
    let owner = member(&first, "owner", "Olga Owner").await;
    let sitter = member(&first, "sitter", "Sam Sitter").await;
    let plants = plants(&first, &owner, 1).await;
    let unsat = sitting(&first, &owner, &plants, 1, 2).await;
    let never_started = sitting(&first, &owner, &plants, 1, 3).await;
    accepted(&first, &owner, &sitter, &never_started).await;
    let as_of = Utc::now().date_naive() + Days::days(5);

    // Both instances at once (one runs, the other stands by or finds nothing left), then each
    // again: one expiry of each sitting between them.
    let (a, b) = tokio::join!(
        run_expiry(&first.app, as_of),
        run_expiry(&second.app, as_of)
    );
    let (a, b) = (a.expect("first run"), b.expect("second run"));
    assert_eq!(a.expired + b.expired, 2, "{a:?} {b:?}");
    assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}");
    for app in [&first, &second] {
        let again = run_expiry(&app.app, as_of).await.expect("run");
        assert_eq!((again.expired, again.failed), (0, 0), "{again:?}");
    }
    let expired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SittingExpired'")
            .fetch_one(&first.pool)
            .await
            .unwrap();
    assert_eq!(expired, 2);

    for id in [&unsat, &never_started] {
        let link = format!("{PUBLIC_URL}/sittings/{id}");
        eventually("the expiry mail", Duration::from_secs(20), || async {
            mails(&smtp, &owner.email, EXPIRED)
                .iter()
                .any(|m| m.body().contains(&link))
        })
        .await;
    }
    let to_owner = mails(&smtp, &owner.email, EXPIRED);
    let about = |id: &str| {
        let link = format!("{PUBLIC_URL}/sittings/{id}");
        to_owner
            .iter()
            .find(|m| m.body().contains(&link))
            .expect("a mail")
            .clone()
    };
    let nobody = about(&unsat);
    assert!(
        nobody.body().contains("Nobody was accepted"),
        "{}",
        nobody.body()
    );
    assert!(nobody.body().contains("Lyon"), "{}", nobody.body());
    let never = about(&never_started);
    for expected in ["Sam Sitter", "never started", "Lyon"] {
        assert!(
            never.body().contains(expected),
            "{expected:?} not in {}",
            never.body()
        );
    }
    assert_discreet(&never, &sitter);

    // Once each, to the owner only, even after the mailer replays the whole log.
    mailer_caught_up(&first).await;
    replay_mailer(&first).await;
    assert_eq!(mails(&smtp, &owner.email, EXPIRED).len(), 2);
    assert!(mails(&smtp, &sitter.email, EXPIRED).is_empty());
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sent_mails WHERE kind = 'sitting_expired'")
            .fetch_one(&first.pool)
            .await
            .unwrap();
    assert_eq!(rows, 2);
}

#[sqlx::test]
async fn serve_runs_the_reminder_job_by_itself(options: PgPoolOptions, connect: PgConnectOptions) {
    let smtp = SmtpServer::start().await;
    let mut quick = mailing(&smtp);
    quick.start_reminder_interval_secs = 1;
    let t = TestApp::with_config(options, connect, quick, true).await;
    let owner = member(&t, "owner", "Olga Owner").await;
    let sitter = member(&t, "sitter", "Sam Sitter").await;
    let plants = plants(&t, &owner, 1).await;
    let id = sitting(&t, &owner, &plants, 1, 3).await;
    accepted(&t, &owner, &sitter, &id).await;

    // Nobody calls the job here: the background task started with the app does.
    let link = format!("{PUBLIC_URL}/sittings/{id}");
    for to in [&owner.email, &sitter.email] {
        let reminder = mail(&smtp, to, REMINDER).await;
        assert!(reminder.body().contains(&link), "{}", reminder.body());
    }
    let issued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'SittingStartReminderIssued'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(issued, 1);
}

#[sqlx::test]
async fn urgent_advice_is_mailed_once_to_the_owner_and_the_sitter(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let smtp = SmtpServer::start().await;
    let t = TestApp::with_config(options, connect, mailing(&smtp), true).await;
    let owner = member(&t, "owner", "Olga Owner").await;
    let sitter = member(&t, "sitter", "Sam Sitter").await;
    let botanist = member(&t, "botanist", "Bea Botanist").await;
    let (_, admin) = t.admin().await;
    let promoted = t
        .call(
            axum::http::Method::PUT,
            &format!("/api/admin/users/{}/role", botanist.id),
            Some(&admin),
            Some(json!({"role": "BOTANIST"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{promoted:?}");
    let plants = plants(&t, &owner, 2).await;
    let id = sitting(&t, &owner, &plants, 0, 5).await;
    accepted(&t, &owner, &sitter, &id).await;

    // Normal advice is read in the app; urgent advice is mailed. No sitting named: the plant's
    // current sitter is found and told too.
    for (plant, priority) in [(&plants[1], "normal"), (&plants[0], "urgent")] {
        let given = crate::advice::advise(
            &t,
            &botanist.token,
            plant,
            json!({"body": "Move it out of the sun today", "priority": priority}),
        )
        .await;
        assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
    }
    let subject = "Urgent advice on Fern 0";
    let link = format!("{PUBLIC_URL}/plants/{}", plants[0]);
    for to in [&owner, &sitter] {
        let urgent = mail(&smtp, &to.email, subject).await;
        let body = urgent.body();
        assert!(body.contains("Bea Botanist"), "{body}");
        assert!(body.contains(&link), "{body}");
        assert!(
            !body.contains("Move it out"),
            "the advice stays in the app: {body}"
        );
        assert_discreet(&urgent, &botanist);
    }

    mailer_caught_up(&t).await;
    replay_mailer(&t).await;
    for to in [&owner, &sitter] {
        assert_eq!(mails(&smtp, &to.email, subject).len(), 1, "to {}", to.email);
        assert!(mails(&smtp, &to.email, "Urgent advice on Fern 1").is_empty());
    }
    assert!(
        mails(&smtp, &botanist.email, subject).is_empty(),
        "not to its author"
    );
}
