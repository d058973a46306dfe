//! Sittings whose last day passed without them starting: refused applications, acceptance and
//! start (over HTTP), expired once by the job run "as of" a later day, gone from browsing and the
//! botanists' queue, their sitter's days freed, their owner and sitter told live.
//!
//! Time: sittings are made over HTTP with dates from today on, then the job runs as of a later
//! day; a sitting of the past is requested through the command bus with its own "today" (the
//! domain takes the date as an input, as `seed demo` does).

use std::collections::HashMap;
use std::time::Duration;

use arosaje::commands::sitting::{Sitting, SittingCommand};
use arosaje::commands::values::SittingPeriod;
use arosaje::commands::Actor;
use arosaje::events::bookings::SitterCalendar;
use arosaje::events::sitting::Location;
use arosaje::events::store::Committed;
use arosaje::events::user::Role;
use arosaje::events::Metadata;
use arosaje::expiry::{run_expiry, ExpiryRun};
use axum::http::StatusCode;
use chrono::{Duration as Days, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{eventually, unique_email, Reply, TestApp};
use crate::live::{next, open_with_token, send, serve};
use crate::sittings::{act, owner_with_plants, request, sitting_body, LYON};

fn day(offset: i64) -> NaiveDate {
    Utc::now().date_naive() + Days::days(offset)
}

/// A sitting of `plants` from `from` to `to` days from today, over HTTP; returns its id.
async fn sitting(t: &TestApp, owner: &str, plants: &[String], from: i64, to: i64) -> String {
    sitting_at(t, owner, plants, from, to, LYON).await
}

/// [`sitting`] at another place.
async fn sitting_at(
    t: &TestApp,
    owner: &str,
    plants: &[String],
    from: i64,
    to: i64,
    at: (f64, f64),
) -> String {
    let created = request(t, owner, sitting_body(plants, from, to, at, "Lyon")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    created.body["id"].as_str().expect("id").to_string()
}

fn expect(reply: Reply, status: StatusCode, code: &str) {
    assert_eq!((reply.status, reply.code()), (status, code), "{reply:?}");
}

/// `sitter` applies and the owner accepts them.
async fn accepted(t: &TestApp, owner: &str, sitter: (Uuid, &str), sitting: &str) {
    let applied = act(t, sitter.1, sitting, "applications", json!({})).await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    let accepted = act(t, owner, sitting, "accept", json!({"sitter_id": sitter.0})).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
}

async fn settled(t: &TestApp, committed: Committed) {
    let position = committed.position.expect("appended");
    assert!(
        t.app
            .projections
            .wait_for("Sitting", position, Duration::from_secs(10))
            .await,
        "read models at {position:?}"
    );
}

/// A sitting requested on day `from` (in the past) for the days `from` to `to`, in Lyon.
async fn past_sitting(t: &TestApp, owner_id: Uuid, plants: &[String], from: i64, to: i64) -> Uuid {
    past_sitting_at(t, owner_id, plants, from, to, LYON).await
}

/// [`past_sitting`] at another place.
async fn past_sitting_at(
    t: &TestApp,
    owner_id: Uuid,
    plants: &[String],
    from: i64,
    to: i64,
    at: (f64, f64),
) -> Uuid {
    let cipher = t.app.keys.cipher(owner_id).await.expect("owner key");
    let location = serde_json::to_string(&Location {
        lat: at.0,
        lon: at.1,
        city: "Lyon".into(),
    })
    .expect("json");
    let id = Uuid::now_v7();
    let command = SittingCommand::RequestSitting {
        owner_id,
        plant_ids: plants.iter().map(|p| p.parse().expect("uuid")).collect(),
        not_owned: vec![],
        period: SittingPeriod::parse(day(from), day(to), day(from), 90).expect("period"),
        location: cipher.seal(&location),
        instructions: None,
    };
    let committed = t
        .app
        .store
        .execute_new::<Sitting>(
            &id.to_string(),
            command,
            &(),
            &Metadata::system("test: a sitting of the past"),
        )
        .await
        .expect("requested");
    settled(t, committed).await;
    id
}

/// A sitting command dispatched as on some day of the past (the sitters' calendar guard too).
async fn in_the_past(t: &TestApp, sitting: Uuid, command: SittingCommand) {
    let committed = t
        .app
        .store
        .execute_guarded::<Sitting>(
            &sitting.to_string(),
            command,
            &(),
            &Metadata::system("test: a sitting of the past"),
            &SitterCalendar,
        )
        .await
        .expect("command");
    settled(t, committed).await;
}

fn user(id: Uuid) -> Actor {
    Actor {
        id,
        role: Role::User,
    }
}

/// The owner's sittings and their status, as the owner lists them.
async fn statuses(t: &TestApp, owner: &str) -> HashMap<String, String> {
    let listed = t.get("/api/sittings?role=owner&limit=100", owner).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    listed.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn ids(reply: &Reply, field: &str) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item[field].as_str().unwrap_or("").to_string())
        .collect()
}

/// What a stranger browses around `here`: open sittings, nearest first.
async fn browse(t: &TestApp, token: &str, here: (f64, f64)) -> Vec<String> {
    let near = format!(
        "/api/sittings?near={},{}&radius_km=3&limit=100",
        here.0, here.1
    );
    ids(&t.get(&near, token).await, "id")
}

/// The sittings of the plants waiting for a botanist.
async fn queue(t: &TestApp, botanist: &str) -> Vec<String> {
    let reply = t
        .get("/api/botanist/queue?tab=to_review&limit=100", botanist)
        .await;
    ids(&reply, "sitting_id")
}

/// The queue's rows of a sitting, in its table.
async fn queued(t: &TestApp, sitting: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM advice_queue WHERE sitting_id = $1")
        .bind(Uuid::parse_str(sitting).expect("uuid"))
        .fetch_one(&t.pool)
        .await
        .expect("queue")
}

async fn expired_events(t: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'SittingExpired' ORDER BY aggregate_id",
    )
    .fetch_all(&t.pool)
    .await
    .expect("events")
}

#[sqlx::test]
async fn the_job_expires_open_and_accepted_sittings_past_their_last_day_and_no_others(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let mut sitters = Vec::new();
    for i in 0..3 {
        sitters.push(t.verified_user(&unique_email(&format!("sitter{i}"))).await);
    }
    let sitter = |i: usize| (sitters[i].0, sitters[i].1.as_str());
    let open = sitting(&t, &owner, &plants, 1, 3).await;
    let taken = sitting(&t, &owner, &plants, 1, 3).await;
    accepted(&t, &owner, sitter(0), &taken).await;
    let running = sitting(&t, &owner, &plants, 0, 2).await;
    accepted(&t, &owner, sitter(1), &running).await;
    assert_eq!(
        act(&t, sitter(1).1, &running, "start", json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let completed = sitting(&t, &owner, &plants, 0, 0).await;
    accepted(&t, &owner, sitter(2), &completed).await;
    for action in ["start", "complete"] {
        let done = act(&t, sitter(2).1, &completed, action, json!({})).await;
        assert_eq!(done.status, StatusCode::OK, "{done:?}");
    }
    let cancelled = sitting(&t, &owner, &plants, 1, 2).await;
    let done = act(
        &t,
        &owner,
        &cancelled,
        "cancel",
        json!({"reason": "No trip"}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{done:?}");
    let later_open = sitting(&t, &owner, &plants, 1, 10).await;
    let later_accepted = sitting(&t, &owner, &plants, 4, 10).await;
    accepted(&t, &owner, sitter(0), &later_accepted).await;

    // As of day 5: the open and the accepted sittings that ended on day 3 expire; the running,
    // completed and cancelled ones stay as they are, and so do those that end on day 10.
    let run = run_expiry(&t.app, day(5)).await.expect("run");
    assert_eq!(
        run,
        ExpiryRun {
            expired: 2,
            skipped: 0,
            failed: 0,
            standby: false
        }
    );
    let mut expected: HashMap<String, String> = [
        (&open, "expired"),
        (&taken, "expired"),
        (&running, "in_progress"),
        (&completed, "completed"),
        (&cancelled, "cancelled"),
        (&later_open, "open"),
        (&later_accepted, "accepted"),
    ]
    .into_iter()
    .map(|(id, status)| (id.clone(), status.to_string()))
    .collect();
    eventually("the owner's list", Duration::from_secs(10), || async {
        statuses(&t, &owner).await == expected
    })
    .await;
    let mut first_two = vec![open.clone(), taken.clone()];
    first_two.sort();
    assert_eq!(expired_events(&t).await, first_two);

    // Again, as of the same day: nothing more.
    let again = run_expiry(&t.app, day(5)).await.expect("run");
    assert_eq!((again.expired, again.failed), (0, 0), "{again:?}");
    assert_eq!(expired_events(&t).await, first_two);

    // Once their last day has passed, the later ones go too.
    let later = run_expiry(&t.app, day(11)).await.expect("run");
    assert_eq!((later.expired, later.failed), (2, 0), "{later:?}");
    expected.insert(later_open.clone(), "expired".into());
    expected.insert(later_accepted.clone(), "expired".into());
    eventually("the owner's list", Duration::from_secs(10), || async {
        statuses(&t, &owner).await == expected
    })
    .await;
    let mine = t
        .get("/api/sittings?role=owner&status=expired&limit=100", &owner)
        .await;
    let mut listed = ids(&mine, "id");
    listed.sort();
    let mut all_four = vec![open, taken, later_open, later_accepted];
    all_four.sort();
    assert_eq!(listed, all_four);
    assert_eq!(expired_events(&t).await, all_four);

    let (_, admin) = t.admin().await;
    let stats = t.get("/api/admin/stats", &admin).await;
    assert_eq!(stats.status, StatusCode::OK, "{stats:?}");
    assert_eq!(stats.body["sittings"]["expired"], 4, "{stats:?}");
    assert_eq!(stats.body["sittings"]["open"], 0, "{stats:?}");
    assert_eq!(stats.body["sittings"]["in_progress"], 1, "{stats:?}");
    // Strangers browse open sittings only; `expired` is for one's own.
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let refused = t.get("/api/sittings?status=expired", &stranger).await;
    expect(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[sqlx::test]
async fn a_sitting_past_its_last_day_refuses_applications_acceptance_and_start(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (owner_id, owner, plants) = owner_with_plants(&t, 1).await;
    let (applicant_id, applicant) = t.verified_user(&unique_email("applicant")).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, newcomer) = t.verified_user(&unique_email("newcomer")).await;
    let conflict = StatusCode::CONFLICT;

    // Ended, not yet expired by the job: the sitting itself refuses, from the date.
    let open = past_sitting(&t, owner_id, &plants, -6, -2).await;
    in_the_past(
        &t,
        open,
        SittingCommand::Apply {
            applicant: user(applicant_id),
            message: None,
            today: day(-5),
        },
    )
    .await;
    let taken = past_sitting(&t, owner_id, &plants, -6, -2).await;
    in_the_past(
        &t,
        taken,
        SittingCommand::Apply {
            applicant: user(sitter_id),
            message: None,
            today: day(-5),
        },
    )
    .await;
    in_the_past(
        &t,
        taken,
        SittingCommand::AcceptSitter {
            actor: user(owner_id),
            sitter_id,
            today: day(-5),
        },
    )
    .await;
    let (open, taken) = (open.to_string(), taken.to_string());
    assert_eq!(
        statuses(&t, &owner).await.get(&open).map(String::as_str),
        Some("open")
    );
    expect(
        act(&t, &newcomer, &open, "applications", json!({})).await,
        conflict,
        "sitting_expired",
    );
    expect(
        act(
            &t,
            &owner,
            &open,
            "accept",
            json!({"sitter_id": applicant_id}),
        )
        .await,
        conflict,
        "sitting_expired",
    );
    expect(
        act(&t, &sitter, &taken, "start", json!({})).await,
        conflict,
        "sitting_expired",
    );

    // Expired by the job: the same refusals, from the state.
    let later_open = sitting(&t, &owner, &plants, 1, 3).await;
    let applied = act(&t, &applicant, &later_open, "applications", json!({})).await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    let later_taken = sitting(&t, &owner, &plants, 1, 3).await;
    accepted(&t, &owner, (sitter_id, &sitter), &later_taken).await;
    let run = run_expiry(&t.app, day(4)).await.expect("run");
    assert_eq!((run.expired, run.failed), (4, 0), "{run:?}");
    eventually(
        "expired in the read model",
        Duration::from_secs(10),
        || async {
            let now = statuses(&t, &owner).await;
            [&open, &taken, &later_open, &later_taken]
                .iter()
                .all(|id| now.get(*id).map(String::as_str) == Some("expired"))
        },
    )
    .await;
    for sitting in [&open, &later_open] {
        // No longer open: applicants follow it no more than strangers do (their list of
        // applications says `closed`).
        expect(
            act(&t, &applicant, sitting, "applications", json!({})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        expect(
            act(&t, &newcomer, sitting, "applications", json!({})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        expect(
            act(
                &t,
                &owner,
                sitting,
                "accept",
                json!({"sitter_id": applicant_id}),
            )
            .await,
            conflict,
            "sitting_expired",
        );
    }
    for sitting in [&taken, &later_taken] {
        expect(
            act(&t, &sitter, sitting, "start", json!({})).await,
            conflict,
            "sitting_expired",
        );
        expect(
            act(&t, &owner, sitting, "cancel", json!({"reason": "too late"})).await,
            conflict,
            "sitting_closed",
        );
        let seen = t.get(&format!("/api/sittings/{sitting}"), &sitter).await;
        assert_eq!(seen.body["status"], "expired", "{seen:?}");
        // Once expired, the sitter sees it as history, without the home.
        assert!(seen.body["instructions"].is_null(), "{seen:?}");
        assert_eq!(seen.body["location"]["approximate"], true, "{seen:?}");
    }
    let mine = t.get("/api/me/applications", &applicant).await;
    let statuses: Vec<(&str, &str)> = mine.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| {
            (
                a["sitting_id"].as_str().unwrap_or(""),
                a["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(later_open.as_str(), "closed")),
        "{statuses:?}"
    );
}

#[sqlx::test]
async fn expired_sittings_leave_browsing_and_the_botanists_queue(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (owner_id, owner, plants) = owner_with_plants(&t, 3).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let (_, botanists) = crate::advice::botanists(&t, 1).await;
    let botanist = &botanists[0].1;
    // A place of this test's own: browsing answers are cached in the Redis all tests share,
    // under the versions of each test's own (young) read models.
    let octet = |n: u128| (n % 251) as f64 / 300.0;
    let random = Uuid::new_v4().as_u128();
    let here = (44.0 + octet(random), 2.0 + octet(random >> 8));
    let ending = sitting_at(&t, &owner, &plants[..1], 1, 3, here).await;
    let lasting = sitting_at(&t, &owner, &plants[1..2], 1, 10, here).await;
    let ended = past_sitting_at(&t, owner_id, &plants[2..], -6, -2, here)
        .await
        .to_string();
    // All three are open in the read model, and in the queue's table.
    let before = statuses(&t, &owner).await;
    for id in [&ending, &lasting, &ended] {
        assert_eq!(before.get(id).map(String::as_str), Some("open"), "{id}");
    }
    assert_eq!(queued(&t, &ended).await, 1);
    // The one whose last day has passed is neither browsed nor queued, even before the job.
    let mut both = vec![ending.clone(), lasting.clone()];
    both.sort();
    for shown in [browse(&t, &stranger, here).await, queue(&t, botanist).await] {
        let mut shown = shown;
        shown.sort();
        shown.dedup();
        assert_eq!(shown, both);
    }

    let run = run_expiry(&t.app, day(5)).await.expect("run");
    assert_eq!((run.expired, run.failed), (2, 0), "{run:?}");
    eventually("browsing without them", Duration::from_secs(10), || async {
        browse(&t, &stranger, here).await == vec![lasting.clone()]
            && browse(&t, botanist, here).await == vec![lasting.clone()]
    })
    .await;
    eventually(
        "the queue without them",
        Duration::from_secs(10),
        || async {
            queue(&t, botanist).await == vec![lasting.clone()]
                && queued(&t, &ending).await == 0
                && queued(&t, &ended).await == 0
        },
    )
    .await;
}

#[sqlx::test]
async fn an_expired_accepted_sitting_frees_its_sitters_days(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, first, first_plants) = owner_with_plants(&t, 1).await;
    let (_, second, second_plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let never_started = sitting(&t, &first, &first_plants, 1, 3).await;
    accepted(&t, &first, (sitter_id, &sitter), &never_started).await;
    // Day 3 is booked.
    let overlapping = sitting(&t, &second, &second_plants, 3, 6).await;
    let applied = act(&t, &sitter, &overlapping, "applications", json!({})).await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    let body = json!({"sitter_id": sitter_id});
    expect(
        act(&t, &second, &overlapping, "accept", body.clone()).await,
        StatusCode::CONFLICT,
        "sitter_unavailable",
    );

    let run = run_expiry(&t.app, day(4)).await.expect("run");
    assert_eq!((run.expired, run.failed), (1, 0), "{run:?}");
    let booked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sitter_bookings WHERE sitting_id = $1")
            .bind(Uuid::parse_str(&never_started).expect("uuid"))
            .fetch_one(&t.pool)
            .await
            .expect("bookings");
    assert_eq!(booked, 0);
    let accepted = act(&t, &second, &overlapping, "accept", body).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(accepted.body["sitter_id"], sitter_id.to_string());
}

#[sqlx::test]
async fn owner_and_sitter_hear_live_that_a_sitting_expired(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let addr = serve(t.app.clone()).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let id = sitting(&t, &owner, &plants, 1, 2).await;
    accepted(&t, &owner, (sitter_id, &sitter), &id).await;
    // The acceptance's frames are out before the sockets open.
    crate::live::fanned_out(&t).await;
    let mut owner_socket = open_with_token(addr, &owner).await;
    let mut sitter_socket = open_with_token(addr, &sitter).await;
    let mut stranger_socket = open_with_token(addr, &stranger).await;
    for socket in [&mut owner_socket, &mut sitter_socket, &mut stranger_socket] {
        send(socket, json!({"type": "ping"})).await;
        assert_eq!(next(socket).await["type"], "pong");
    }

    let run = run_expiry(&t.app, day(3)).await.expect("run");
    assert_eq!(run.expired, 1, "{run:?}");
    for socket in [&mut owner_socket, &mut sitter_socket] {
        // Frames of the acceptance may still be on their way; the expiry follows them.
        let frame: Value = loop {
            let frame = next(socket).await;
            if frame["data"]["event"] == "SittingExpired" {
                break frame;
            }
            let event = frame["data"]["event"].as_str().unwrap_or("");
            assert!(
                ["ApplicationSubmitted", "SitterAccepted"].contains(&event),
                "{frame}"
            );
        };
        assert_eq!(frame["type"], "sitting.updated", "{frame}");
        assert_eq!(frame["data"]["sitting_id"], id.as_str(), "{frame}");
        assert_eq!(frame["data"]["status"], "expired", "{frame}");
    }
    send(&mut stranger_socket, json!({"type": "ping"})).await;
    assert_eq!(
        next(&mut stranger_socket).await["type"],
        "pong",
        "the stranger heard nothing"
    );
}

#[sqlx::test]
async fn the_job_runs_in_one_instance_at_a_time(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    sitting(&t, &owner, &plants, 1, 2).await;
    // Another instance's run holds the lock: this one stands by.
    let mut other = sqlx::PgConnection::connect_with(&t.pool.connect_options())
        .await
        .expect("connection");
    let (class, name) = arosaje::expiry::LOCK;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .execute(&mut other)
        .await
        .expect("lock");
    let run = run_expiry(&t.app, day(3)).await.expect("run");
    assert_eq!(
        run,
        ExpiryRun {
            standby: true,
            ..ExpiryRun::default()
        }
    );
    assert!(expired_events(&t).await.is_empty());
    sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .execute(&mut other)
        .await
        .expect("unlock");
    let run = run_expiry(&t.app, day(3)).await.expect("run");
    assert_eq!((run.expired, run.standby), (1, false), "{run:?}");
}

#[sqlx::test]
async fn serve_runs_the_expiry_job_by_itself(options: PgPoolOptions, connect: PgConnectOptions) {
    let mut quick = crate::helpers::config();
    quick.sitting_expiry_interval_secs = 1;
    let t = TestApp::with_config(options, connect, quick, true).await;
    let (owner_id, owner, plants) = owner_with_plants(&t, 1).await;
    let ended = past_sitting(&t, owner_id, &plants, -3, -1)
        .await
        .to_string();
    let lasting = sitting(&t, &owner, &plants, 0, 1).await;

    // Nobody calls the job here: the background task started with the app does.
    eventually(
        "the ended sitting expired",
        Duration::from_secs(20),
        || async { statuses(&t, &owner).await.get(&ended).map(String::as_str) == Some("expired") },
    )
    .await;
    assert_eq!(expired_events(&t).await, vec![ended]);
    assert_eq!(
        statuses(&t, &owner).await.get(&lasting).map(String::as_str),
        Some("open")
    );
}
