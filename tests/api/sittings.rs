//! Sittings end to end over HTTP: the lifecycle, its refusals, validation, no double booking,
//! location privacy and search near a place.

use axum::http::StatusCode;
use chrono::{Duration as Days, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{unique_email, Reply, TestApp};

/// Lyon, place Bellecour (exact).
pub const LYON: (f64, f64) = (45.757_814, 4.832_011);

pub fn today_plus(days: i64) -> String {
    (Utc::now().date_naive() + Days::days(days)).to_string()
}

/// An owner with a verified address and `n` plants; returns (id, token, plant ids).
pub async fn owner_with_plants(t: &TestApp, n: usize) -> (Uuid, String, Vec<String>) {
    let (id, token) = t.verified_user(&unique_email("owner")).await;
    let mut plants = Vec::new();
    for i in 0..n {
        let plant = t.create_plant(&token, &format!("Plant {i}")).await;
        assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
        plants.push(plant.body["id"].as_str().expect("id").to_string());
    }
    (id, token, plants)
}

pub fn sitting_body(plants: &[String], from: i64, to: i64, at: (f64, f64), city: &str) -> Value {
    json!({
        "plant_ids": plants,
        "starts_on": today_plus(from),
        "ends_on": today_plus(to),
        "location": {"lat": at.0, "lon": at.1, "city": city},
        "instructions": "Key under the blue pot; code 4812",
    })
}

pub async fn request(t: &TestApp, token: &str, body: Value) -> Reply {
    t.post("/api/sittings", Some(token), body).await
}

fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("id").to_string()
}

pub async fn act(t: &TestApp, token: &str, sitting: &str, action: &str, body: Value) -> Reply {
    t.post(
        &format!("/api/sittings/{sitting}/{action}"),
        Some(token),
        body,
    )
    .await
}

/// Runs a sitting from request to both reviews; returns its id. Used by the tour of the API too.
pub async fn full_lifecycle(t: &TestApp) -> String {
    let (owner_id, owner, plants) = owner_with_plants(t, 2).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let created = request(t, &owner, sitting_body(&plants, 0, 6, LYON, "Lyon")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["status"], "open");
    assert_eq!(created.body["location"]["approximate"], false);
    assert!(created.body["position"].as_i64().is_some());
    let sitting = id_of(&created);

    let applied = act(
        t,
        &sitter,
        &sitting,
        "applications",
        json!({"message": "I love ferns"}),
    )
    .await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    assert_eq!(applied.body["applications"], 1);
    let applications = t
        .get(&format!("/api/sittings/{sitting}/applications"), &owner)
        .await;
    assert_eq!(applications.status, StatusCode::OK, "{applications:?}");
    assert_eq!(
        applications.body["items"][0]["applicant"]["id"],
        sitter_id.to_string()
    );
    assert_eq!(applications.body["items"][0]["message"], "I love ferns");

    let accepted = act(
        t,
        &owner,
        &sitting,
        "accept",
        json!({"sitter_id": sitter_id}),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(accepted.body["status"], "accepted");
    assert_eq!(accepted.body["sitter_id"], sitter_id.to_string());
    let started = act(t, &sitter, &sitting, "start", json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{started:?}");
    assert_eq!(started.body["status"], "in_progress");

    let report = act(
        t,
        &sitter,
        &sitting,
        "reports",
        json!({"plant_id": plants[0], "note": "Watered, new leaf"}),
    )
    .await;
    assert_eq!(report.status, StatusCode::CREATED, "{report:?}");
    assert_eq!(report.body["note"], "Watered, new leaf");
    let reports = t
        .get(&format!("/api/sittings/{sitting}/reports"), &owner)
        .await;
    assert_eq!(reports.status, StatusCode::OK);
    assert_eq!(reports.body["items"].as_array().map(Vec::len), Some(1));

    let completed = act(t, &owner, &sitting, "complete", json!({})).await;
    assert_eq!(completed.status, StatusCode::OK, "{completed:?}");
    assert_eq!(completed.body["status"], "completed");
    let review = act(
        t,
        &owner,
        &sitting,
        "reviews",
        json!({"rating": 5, "comment": "Perfect"}),
    )
    .await;
    assert_eq!(review.status, StatusCode::CREATED, "{review:?}");
    let review = act(t, &sitter, &sitting, "reviews", json!({"rating": 4})).await;
    assert_eq!(review.status, StatusCode::CREATED, "{review:?}");

    let profile = t.get(&format!("/api/users/{sitter_id}"), &owner).await;
    assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
    assert_eq!(profile.body["average_rating"], 5.0);
    assert_eq!(profile.body["completed_sittings"], 1);
    assert_eq!(profile.body["recent_reviews"][0]["comment"], "Perfect");
    assert!(
        profile.body.get("email").is_none(),
        "a public profile has no e-mail"
    );
    let owner_profile = t.get(&format!("/api/users/{owner_id}"), &sitter).await;
    assert_eq!(owner_profile.body["average_rating"], 4.0);
    let mine = t.get("/api/sittings?role=sitter", &sitter).await;
    assert_eq!(mine.body["items"][0]["id"], sitting.as_str());
    let owned = t
        .get("/api/sittings?role=owner&status=completed", &owner)
        .await;
    assert_eq!(owned.body["items"][0]["id"], sitting.as_str());
    sitting
}

#[sqlx::test]
async fn a_sitting_goes_from_request_to_reviews(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    full_lifecycle(&t).await;
    let (_, admin) = t.admin().await;
    let stats = t.get("/api/admin/stats", &admin).await;
    assert_eq!(stats.body["sittings"]["completed"], 1, "{stats:?}");
    assert_eq!(stats.body["sittings"]["open"], 0);
}

#[sqlx::test]
async fn each_illegal_transition_answers_409_with_its_own_code(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (other_id, other) = t.verified_user(&unique_email("other")).await;
    let sitting = id_of(&request(&t, &owner, sitting_body(&plants, 0, 3, LYON, "Lyon")).await);
    let expect = |reply: Reply, status: StatusCode, code: &str| {
        assert_eq!((reply.status, reply.code()), (status, code), "{reply:?}");
    };
    let conflict = StatusCode::CONFLICT;
    let forbidden = StatusCode::FORBIDDEN;

    expect(
        act(&t, &owner, &sitting, "applications", json!({})).await,
        conflict,
        "own_sitting",
    );
    expect(
        act(&t, &sitter, &sitting, "start", json!({})).await,
        forbidden,
        "not_a_participant",
    );
    expect(
        act(&t, &owner, &sitting, "start", json!({})).await,
        conflict,
        "sitting_not_accepted",
    );
    expect(
        act(
            &t,
            &owner,
            &sitting,
            "accept",
            json!({"sitter_id": sitter_id}),
        )
        .await,
        conflict,
        "not_an_applicant",
    );
    let withdraw = t
        .delete(
            &format!("/api/sittings/{sitting}/applications/mine"),
            &sitter,
        )
        .await;
    expect(withdraw, conflict, "not_applied");
    assert_eq!(
        act(&t, &sitter, &sitting, "applications", json!({}))
            .await
            .status,
        StatusCode::CREATED
    );
    expect(
        act(&t, &sitter, &sitting, "applications", json!({})).await,
        conflict,
        "already_applied",
    );
    assert_eq!(
        act(&t, &other, &sitting, "applications", json!({}))
            .await
            .status,
        StatusCode::CREATED
    );
    let withdrawn = t
        .delete(
            &format!("/api/sittings/{sitting}/applications/mine"),
            &other,
        )
        .await;
    assert_eq!(withdrawn.status, StatusCode::NO_CONTENT, "{withdrawn:?}");
    expect(
        act(
            &t,
            &other,
            &sitting,
            "accept",
            json!({"sitter_id": sitter_id}),
        )
        .await,
        forbidden,
        "not_the_owner",
    );
    expect(
        act(
            &t,
            &owner,
            &sitting,
            "accept",
            json!({"sitter_id": other_id}),
        )
        .await,
        conflict,
        "not_an_applicant",
    );
    // A withdrawn applicant may apply again, and stays an applicant.
    let again = act(&t, &other, &sitting, "applications", json!({})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    expect(
        act(&t, &sitter, &sitting, "cancel", json!({"reason": "no"})).await,
        forbidden,
        "not_a_participant",
    );
    expect(
        act(&t, &owner, &sitting, "reviews", json!({"rating": 3})).await,
        conflict,
        "sitting_not_completed",
    );
    assert_eq!(
        act(
            &t,
            &owner,
            &sitting,
            "accept",
            json!({"sitter_id": sitter_id})
        )
        .await
        .status,
        StatusCode::OK
    );
    // The applicant who was not chosen no longer sees the sitting at all.
    expect(
        act(&t, &other, &sitting, "applications", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        act(
            &t,
            &sitter,
            &sitting,
            "reports",
            json!({"plant_id": plants[0], "note": "hi"}),
        )
        .await,
        conflict,
        "sitting_not_in_progress",
    );
    expect(
        act(&t, &owner, &sitting, "complete", json!({})).await,
        conflict,
        "sitting_not_in_progress",
    );
    assert_eq!(
        act(&t, &owner, &sitting, "start", json!({})).await.status,
        StatusCode::OK
    );
    expect(
        act(
            &t,
            &owner,
            &sitting,
            "reports",
            json!({"plant_id": plants[0], "note": "hi"}),
        )
        .await,
        forbidden,
        "not_the_sitter",
    );
    let elsewhere = Uuid::now_v7();
    let wrong_plant = act(
        &t,
        &sitter,
        &sitting,
        "reports",
        json!({"plant_id": elsewhere, "note": "hi"}),
    )
    .await;
    expect(
        wrong_plant,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    expect(
        act(&t, &owner, &sitting, "cancel", json!({"reason": "no"})).await,
        conflict,
        "sitting_in_progress",
    );
    expect(
        act(&t, &owner, &sitting, "start", json!({})).await,
        conflict,
        "sitting_not_accepted",
    );
    assert_eq!(
        act(&t, &sitter, &sitting, "complete", json!({}))
            .await
            .status,
        StatusCode::OK
    );
    expect(
        act(&t, &owner, &sitting, "complete", json!({})).await,
        conflict,
        "sitting_closed",
    );
    expect(
        act(&t, &owner, &sitting, "cancel", json!({"reason": "no"})).await,
        conflict,
        "sitting_closed",
    );
    expect(
        act(&t, &other, &sitting, "reviews", json!({"rating": 3})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        act(&t, &owner, &sitting, "reviews", json!({"rating": 3}))
            .await
            .status,
        StatusCode::CREATED
    );
    expect(
        act(&t, &owner, &sitting, "reviews", json!({"rating": 5})).await,
        conflict,
        "already_reviewed",
    );

    // Cancelling: the accepted sitter may back out; the owner may cancel an open one.
    let second = id_of(&request(&t, &owner, sitting_body(&plants, 10, 12, LYON, "Lyon")).await);
    assert_eq!(
        act(&t, &sitter, &second, "applications", json!({}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        act(
            &t,
            &owner,
            &second,
            "accept",
            json!({"sitter_id": sitter_id})
        )
        .await
        .status,
        StatusCode::OK
    );
    expect(
        act(&t, &owner, &second, "start", json!({})).await,
        conflict,
        "sitting_not_started_yet",
    );
    let cancelled = act(
        &t,
        &sitter,
        &second,
        "cancel",
        json!({"reason": "I broke my leg"}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(cancelled.body["cancel_reason"], "I broke my leg");
    let third = id_of(&request(&t, &owner, sitting_body(&plants, 1, 2, LYON, "Lyon")).await);
    let cancelled = act(
        &t,
        &owner,
        &third,
        "cancel",
        json!({"reason": "Trip cancelled"}),
    )
    .await;
    assert_eq!(cancelled.body["status"], "cancelled", "{cancelled:?}");
}

#[sqlx::test]
async fn dates_places_plants_and_searches_are_validated(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, _, others) = owner_with_plants(&t, 1).await;
    let invalid = |reply: &Reply, field: &str| {
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
        assert!(
            reply.body["error"]["fields"].get(field).is_some(),
            "{field}: {reply:?}"
        );
    };
    invalid(
        &request(&t, &owner, sitting_body(&plants, -1, 3, LYON, "Lyon")).await,
        "starts_on",
    );
    invalid(
        &request(&t, &owner, sitting_body(&plants, 5, 3, LYON, "Lyon")).await,
        "ends_on",
    );
    invalid(
        &request(&t, &owner, sitting_body(&plants, 1, 100, LYON, "Lyon")).await,
        "ends_on",
    );
    invalid(
        &request(&t, &owner, sitting_body(&plants, 1, 3, (91.0, 4.8), "Lyon")).await,
        "location.lat",
    );
    invalid(
        &request(
            &t,
            &owner,
            sitting_body(&plants, 1, 3, (45.0, 181.0), "Lyon"),
        )
        .await,
        "location.lon",
    );
    invalid(
        &request(&t, &owner, sitting_body(&plants, 1, 3, LYON, "  ")).await,
        "location.city",
    );
    invalid(
        &request(&t, &owner, sitting_body(&[], 1, 3, LYON, "Lyon")).await,
        "plant_ids",
    );
    invalid(
        &request(&t, &owner, sitting_body(&others, 1, 3, LYON, "Lyon")).await,
        "plant_ids",
    );
    let mut missing = sitting_body(&plants, 1, 3, LYON, "Lyon");
    missing.as_object_mut().expect("object").remove("location");
    invalid(&request(&t, &owner, missing).await, "location");
    let bad_date = json!({"plant_ids": plants, "starts_on": "tomorrow", "ends_on": today_plus(3),
        "location": {"lat": LYON.0, "lon": LYON.1, "city": "Lyon"}});
    let reply = request(&t, &owner, bad_date).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");

    // An address not yet verified may not ask for a sitting.
    let (_, unverified) = t.user(&unique_email("unverified")).await;
    let plant = t.create_plant(&unverified, "Unverified fern").await.body["id"].clone();
    let refused = request(
        &t,
        &unverified,
        json!({"plant_ids": [plant], "starts_on": today_plus(1),
        "ends_on": today_plus(2), "location": {"lat": LYON.0, "lon": LYON.1, "city": "Lyon"}}),
    )
    .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "email_not_verified")
    );

    for (query, field) in [
        ("near=45.7", "near"),
        ("near=95,4", "near"),
        ("near=45.7,4.8&radius_km=500", "radius_km"),
        ("radius_km=5", "near"),
        ("status=lost", "status"),
        ("status=completed", "status"),
        ("from=2027-13-01", "from"),
        ("from=2027-06-10&to=2027-06-01", "to"),
        ("role=boss", "role"),
        ("cursor=zzz", "cursor"),
    ] {
        invalid(
            &t.get(&format!("/api/sittings?{query}"), &owner).await,
            field,
        );
    }
}

#[sqlx::test]
async fn two_owners_accepting_one_sitter_for_overlapping_days_cannot_both_win(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, first, first_plants) = owner_with_plants(&t, 1).await;
    let (_, second, second_plants) = owner_with_plants(&t, 1).await;
    for round in 0..12 {
        let (sitter_id, sitter) = t
            .verified_user(&unique_email(&format!("sitter{round}")))
            .await;
        // Overlapping by one day at least, shifted each round.
        let a = id_of(&request(&t, &first, sitting_body(&first_plants, 1, 5, LYON, "Lyon")).await);
        let b = id_of(
            &request(
                &t,
                &second,
                sitting_body(&second_plants, 5, 8, LYON, "Lyon"),
            )
            .await,
        );
        for sitting in [&a, &b] {
            assert_eq!(
                act(&t, &sitter, sitting, "applications", json!({}))
                    .await
                    .status,
                StatusCode::CREATED
            );
        }
        let body = json!({"sitter_id": sitter_id});
        let (one, two) = tokio::join!(
            act(&t, &first, &a, "accept", body.clone()),
            act(&t, &second, &b, "accept", body.clone()),
        );
        let mut outcomes = [
            (one.status, one.code().to_string()),
            (two.status, two.code().to_string()),
        ];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                (StatusCode::OK, String::new()),
                (StatusCode::CONFLICT, "sitter_unavailable".into())
            ],
            "round {round}: {one:?} / {two:?}"
        );
    }
    // Days that do not overlap are fine; a cancellation frees the days.
    let (sitter_id, sitter) = t.verified_user(&unique_email("free")).await;
    let a = id_of(
        &request(
            &t,
            &first,
            sitting_body(&first_plants, 20, 22, LYON, "Lyon"),
        )
        .await,
    );
    let b = id_of(
        &request(
            &t,
            &second,
            sitting_body(&second_plants, 23, 25, LYON, "Lyon"),
        )
        .await,
    );
    let c = id_of(
        &request(
            &t,
            &second,
            sitting_body(&second_plants, 21, 21, LYON, "Lyon"),
        )
        .await,
    );
    for sitting in [&a, &b, &c] {
        act(&t, &sitter, sitting, "applications", json!({})).await;
    }
    let body = json!({"sitter_id": sitter_id});
    assert_eq!(
        act(&t, &first, &a, "accept", body.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        act(&t, &second, &b, "accept", body.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        act(&t, &second, &c, "accept", body.clone()).await.code(),
        "sitter_unavailable"
    );
    assert_eq!(
        act(&t, &first, &a, "cancel", json!({"reason": "changed plans"}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        act(&t, &second, &c, "accept", body).await.status,
        StatusCode::OK
    );
}

/// Two accepts of one sitting at the same moment (the owner in two tabs): both pass the
/// aggregate, and both try to book the sitting in the sitters' calendar. For two applicants they
/// meet on the booking's primary key (one booking per sitting); for the same applicant on that
/// key or on the calendar's exclusion constraint. Either way the later one is retried and the
/// reloaded sitting refuses it: 200 and 409, never a 500, one sitter booked.
#[sqlx::test]
async fn two_accepts_of_one_sitting_at_once_book_one_sitter_and_answer_409_to_the_other(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (first_id, first) = t.verified_user(&unique_email("first")).await;
    let (second_id, second) = t.verified_user(&unique_email("second")).await;
    for round in 0..20i64 {
        // Days of their own each round, so earlier bookings never stand in the way.
        let sitting = id_of(
            &request(
                &t,
                &owner,
                sitting_body(&plants, 3 * round + 1, 3 * round + 2, LYON, "Lyon"),
            )
            .await,
        );
        for applicant in [&first, &second] {
            let applied = act(&t, applicant, &sitting, "applications", json!({})).await;
            assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
        }
        // Even rounds: two applicants; odd rounds: the same one twice.
        let other = if round % 2 == 0 { second_id } else { first_id };
        let (one, two) = tokio::join!(
            act(
                &t,
                &owner,
                &sitting,
                "accept",
                json!({"sitter_id": first_id})
            ),
            act(&t, &owner, &sitting, "accept", json!({"sitter_id": other})),
        );
        let mut outcomes = [
            (one.status, one.code().to_string()),
            (two.status, two.code().to_string()),
        ];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                (StatusCode::OK, String::new()),
                (StatusCode::CONFLICT, "sitting_not_open".into())
            ],
            "round {round}: {one:?} / {two:?}"
        );
        let winner = if one.status == StatusCode::OK {
            &one
        } else {
            &two
        };
        let booked: Vec<Uuid> =
            sqlx::query_scalar("SELECT sitter_id FROM sitter_bookings WHERE sitting_id = $1")
                .bind(Uuid::parse_str(&sitting).expect("uuid"))
                .fetch_all(&t.pool)
                .await
                .expect("bookings");
        assert_eq!(booked.len(), 1, "round {round}: {booked:?}");
        assert_eq!(
            winner.body["sitter_id"],
            booked[0].to_string(),
            "round {round}: the booked sitter is the accepted one"
        );
        let seen = t.get(&format!("/api/sittings/{sitting}"), &owner).await;
        assert_eq!(seen.body["sitter_id"], booked[0].to_string(), "{seen:?}");
        let accepted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'SitterAccepted'",
        )
        .bind(&sitting)
        .fetch_one(&t.pool)
        .await
        .expect("events");
        assert_eq!(accepted, 1, "round {round}");
    }
}

#[sqlx::test]
async fn strangers_never_see_the_exact_location_or_the_instructions(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let sitting = id_of(&request(&t, &owner, sitting_body(&plants, 0, 3, LYON, "Lyon")).await);
    let exact = |reply: &Reply| {
        let location = &reply.body["location"];
        assert_eq!(location["approximate"], false, "{reply:?}");
        assert_eq!(
            (location["lat"].as_f64(), location["lon"].as_f64()),
            (Some(LYON.0), Some(LYON.1))
        );
        assert_eq!(
            reply.body["instructions"],
            "Key under the blue pot; code 4812"
        );
    };
    let approximate = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let text = reply.body.to_string();
        assert!(
            !text.contains("4.832011") && !text.contains("45.757814"),
            "exact point leaked: {text}"
        );
        assert!(!text.contains("4812"), "instructions leaked: {text}");
        let location = &reply.body["location"];
        assert_eq!(location["approximate"], true);
        assert_eq!(location["city"], "Lyon");
        let (lat, lon) = (
            location["lat"].as_f64().expect("lat"),
            location["lon"].as_f64().expect("lon"),
        );
        // Within about a kilometre, but not the place itself.
        assert!(
            (lat - LYON.0).abs() < 0.01 && (lon - LYON.1).abs() < 0.015,
            "{location}"
        );
        assert!(reply.body["instructions"].is_null());
    };
    let url = format!("/api/sittings/{sitting}");
    exact(&t.get(&url, &owner).await);
    // Admins: the home only for a stated reason (recorded; see secrets.rs).
    approximate(&t.get(&url, &admin).await);
    exact(
        &t.get(&format!("{url}?reason=support%20ticket"), &admin)
            .await,
    );
    approximate(&t.get(&url, &stranger).await);
    approximate(&t.get(&url, &botanist).await);
    let browse = t
        .get(
            &format!("/api/sittings?near={},{}&radius_km=5", LYON.0, LYON.1),
            &stranger,
        )
        .await;
    assert_eq!(browse.status, StatusCode::OK, "{browse:?}");
    let found = &browse.body["items"][0];
    approximate(&Reply {
        status: StatusCode::OK,
        body: found.clone(),
        headers: Default::default(),
    });
    assert!(
        found["distance_km"].as_f64().is_some_and(|d| d < 1.0),
        "{found}"
    );

    act(&t, &sitter, &sitting, "applications", json!({})).await;
    approximate(&t.get(&url, &sitter).await);
    act(
        &t,
        &owner,
        &sitting,
        "accept",
        json!({"sitter_id": sitter_id}),
    )
    .await;
    exact(&t.get(&url, &sitter).await);
    // Once it is no longer open, strangers do not see it at all.
    let gone = t.get(&url, &stranger).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{gone:?}");
    let listed = t.get("/api/sittings", &stranger).await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(0),
        "{listed:?}"
    );
}

#[sqlx::test]
async fn search_near_a_place_finds_what_is_within_the_radius_nearest_first(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, visitor) = t.verified_user(&unique_email("visitor")).await;
    let places = [
        ("Villeurbanne", (45.771_944, 4.890_171)),
        ("Paris", (48.856_613, 2.352_222)),
        ("Lyon", LYON),
        ("Vénissieux", (45.697_2, 4.886_7)),
    ];
    for (city, at) in places {
        let reply = request(&t, &owner, sitting_body(&plants, 1, 2, at, city)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    let near = format!("/api/sittings?near={},{}&radius_km=20", LYON.0, LYON.1);
    let found = t.get(&near, &visitor).await;
    let cities: Vec<&str> = found.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["location"]["city"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(cities, ["Lyon", "Villeurbanne", "Vénissieux"], "{found:?}");
    // Pages follow the same order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{near}&limit=1&cursor={c}"),
            None => format!("{near}&limit=1"),
        };
        let page = t.get(&url, &visitor).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        for item in page.body["items"].as_array().expect("items") {
            seen.push(item["location"]["city"].as_str().unwrap_or("").to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, cities);
    let everywhere = t.get("/api/sittings?limit=10", &visitor).await;
    assert_eq!(everywhere.body["items"].as_array().map(Vec::len), Some(4));
    let dated = t
        .get(&format!("/api/sittings?from={}", today_plus(3)), &visitor)
        .await;
    assert_eq!(
        dated.body["items"].as_array().map(Vec::len),
        Some(0),
        "{dated:?}"
    );
}

/// The redis keys of cached answers of one kind.
async fn cached_keys(kind: &str) -> Vec<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("KEYS")
        .arg(format!("cache:{kind}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys")
}

fn hits(metrics: &str, cache: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cache_requests_total")
                && l.contains(cache)
                && l.contains("result=\"hit\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[sqlx::test]
async fn a_cached_browse_shows_a_new_sitting_right_after_its_creation_answered(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (visitor_id, visitor) = t.verified_user(&unique_email("visitor")).await;
    // A place of this test's own, so other tests' sittings do not share its answers.
    let here = (
        43.0 + f64::from(rand_octet()) / 300.0,
        1.0 + f64::from(rand_octet()) / 300.0,
    );
    let near = format!("/api/sittings?near={},{}&radius_km=3", here.0, here.1);
    let first = request(&t, &owner, sitting_body(&plants, 1, 2, here, "Toulouse")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let before = t.get(&near, &visitor).await;
    assert_eq!(before.body["items"].as_array().map(Vec::len), Some(1));
    let metrics_before = metrics(&t).await;
    let again = t.get(&near, &visitor).await;
    assert_eq!(again.body, before.body, "the cached answer is the same");
    assert!(
        hits(&metrics(&t).await, "sittings_browse") > hits(&metrics_before, "sittings_browse"),
        "the second browse was a cache hit"
    );
    assert!(!cached_keys("sittings").await.is_empty());

    // A new sitting shows at once, to its owner and to everyone else.
    let second = request(&t, &owner, sitting_body(&plants, 3, 4, here, "Toulouse")).await;
    assert_eq!(second.status, StatusCode::CREATED);
    for token in [&visitor, &owner] {
        let after = t.get(&near, token).await;
        assert_eq!(
            after.body["items"].as_array().map(Vec::len),
            Some(2),
            "{after:?}"
        );
    }
    // A cached page is the public view for everyone, its owner included (the owner's own list,
    // `role=owner`, shows the home; see secrets.rs).
    let own = t.get(&near, &owner).await;
    assert_eq!(own.body["items"][0]["location"]["approximate"], true);
    let theirs = t.get(&near, &visitor).await;
    assert_eq!(theirs.body["items"][0]["location"]["approximate"], true);

    // Profiles too: a review shows at once although the profile was cached before it.
    let profile = t.get(&format!("/api/users/{visitor_id}"), &owner).await;
    assert_eq!(profile.body["reviews"], 0);
    let cached = t.get(&format!("/api/users/{visitor_id}"), &owner).await;
    assert_eq!(cached.body, profile.body);
    let renamed = t
        .patch("/api/me", &visitor, json!({"display_name": "Vera"}))
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
    let fresh = t.get(&format!("/api/users/{visitor_id}"), &owner).await;
    assert_eq!(fresh.body["display_name"], "Vera", "{fresh:?}");
}

async fn metrics(t: &TestApp) -> String {
    t.call(axum::http::Method::GET, "/metrics", None, None)
        .await
        .body
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn rand_octet() -> u8 {
    (Uuid::new_v4().as_u128() % 251) as u8
}
