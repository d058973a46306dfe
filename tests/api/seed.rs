//! `arosaje seed demo` and `arosaje seed load`: the demo world answers every list route for its
//! accounts (logged in over HTTP through the router), refuses a second run, and a load makes
//! exactly the population asked for, in the log and in the read models, that the aggregates and
//! the tamper evidence accept.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use arosaje::seed::demo::{self, DemoOptions, DemoWorld, DEMO_PASSWORD};
use arosaje::seed::load::{self, LoadOptions, LOAD_PASSWORD, SITTING_KINDS};
use arosaje::seed::SeedError;

use crate::helpers::{config, TestApp};

/// Logs a demo account in over HTTP (with a recovery code when it has TOTP); its access token.
async fn login(t: &TestApp, world: &DemoWorld, local: &str) -> String {
    let account = world.account(local).expect("demo account");
    let mut body = json!({"email": account.email, "password": DEMO_PASSWORD});
    if let Some(code) = account.recovery_codes.first() {
        body["totp_code"] = json!(code);
    }
    let reply = t.post("/api/auth/login", None, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{local}: {reply:?}");
    reply.body["access_token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// The documented GET routes that answer a page (`{items, next_cursor}`), as path templates.
fn documented_list_routes() -> BTreeSet<String> {
    let document = serde_json::to_value(arosaje::api::docs::openapi()).expect("document");
    let mut lists = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        let schema = &item["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        let reference = schema["$ref"].as_str().unwrap_or("");
        let name = reference.rsplit('/').next().unwrap_or("");
        let resolved = if reference.is_empty() {
            schema
        } else {
            &document["components"]["schemas"][name]
        };
        if resolved["properties"]["items"].is_object()
            && resolved["properties"]["next_cursor"].is_object()
        {
            lists.insert(path.clone());
        }
    }
    lists
}

#[sqlx::test]
async fn seed_demo_fills_every_list_route_and_refuses_a_second_run(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let world = demo::seed(&t.app, DemoOptions::default())
        .await
        .expect("seed demo");
    assert!(world.events > 100, "{} events", world.events);
    let mut statuses: Vec<&str> = world.sittings.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    statuses.dedup();
    assert_eq!(
        statuses,
        [
            "accepted",
            "cancelled",
            "completed",
            "expired",
            "in_progress",
            "open"
        ]
    );
    let mut advice_states: Vec<&str> = world.advice.iter().map(|(s, _)| *s).collect();
    advice_states.sort();
    advice_states.dedup();
    assert_eq!(
        advice_states,
        [
            "given",
            "hidden",
            "rejected",
            "revised",
            "validated",
            "withdrawn"
        ]
    );

    // Each sitting and advice is in the state its label says, in the read models.
    for (status, id) in &world.sittings {
        let actual: String = sqlx::query_scalar("SELECT status FROM sittings WHERE id = $1")
            .bind(id)
            .fetch_one(&t.pool)
            .await
            .expect("sitting");
        assert_eq!(actual, *status);
    }
    for (label, id) in &world.advice {
        let (state, revision, validations, rejections): (String, i32, i32, i32) = sqlx::query_as(
            "SELECT state, revision, validations, rejections FROM advice WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&t.pool)
        .await
        .expect("advice");
        let expected = match *label {
            "given" => ("active", 1, 0, 0),
            "revised" => ("active", 2, 0, 0),
            "validated" => ("active", 1, 1, 0),
            "rejected" => ("active", 1, 0, 1),
            "withdrawn" => ("withdrawn", 1, 0, 0),
            "hidden" => ("hidden", 1, 0, 0),
            other => panic!("advice labelled {other}"),
        };
        assert_eq!(
            (state.as_str(), revision, validations, rejections),
            expected,
            "{label}"
        );
    }

    let owner = login(&t, &world, "camille").await;
    let sitter = login(&t, &world, "hugo").await;
    let botanist = login(&t, &world, "elise").await;
    let admin = login(&t, &world, "admin").await;
    let auditor = login(&t, &world, "auditeur").await;
    let tokens = [
        ("lucas", login(&t, &world, "lucas").await),
        ("sarah", login(&t, &world, "sarah").await),
        ("antoine", login(&t, &world, "antoine").await),
        ("chloe", login(&t, &world, "chloe").await),
    ];
    let token_of = |local: &str| {
        tokens
            .iter()
            .find(|(l, _)| *l == local)
            .map(|(_, token)| token.clone())
            .expect("token")
    };

    let running = world.sitting("in_progress").expect("running sitting");
    let open = world.sitting("open").expect("open sitting");
    let plant = world.plants[0];
    let revised = world
        .advice
        .iter()
        .find(|(s, _)| *s == "revised")
        .map(|(_, id)| *id)
        .expect("revised advice");
    let conversation = world.conversations[0];
    let hugo = world.account("hugo").expect("hugo").id;

    // Each list route of the document, with the template it answers for, as a demo account.
    let mut calls: Vec<(&str, String, String)> = vec![
        ("/api/plants", "/api/plants".into(), owner.clone()),
        (
            "/api/plants",
            "/api/plants?q=Monstera".into(),
            botanist.clone(),
        ),
        (
            "/api/plants/{id}/photos",
            format!("/api/plants/{plant}/photos"),
            owner.clone(),
        ),
        (
            "/api/plants/{id}/advice",
            format!("/api/plants/{plant}/advice"),
            owner.clone(),
        ),
        (
            "/api/advice/{id}/versions",
            format!("/api/advice/{revised}/versions"),
            botanist.clone(),
        ),
        ("/api/sittings", "/api/sittings".into(), sitter.clone()),
        (
            "/api/sittings",
            "/api/sittings?role=owner".into(),
            owner.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=sitter".into(),
            sitter.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?near=48.86,2.35&radius_km=20".into(),
            sitter.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=open".into(),
            owner.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=in_progress".into(),
            owner.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=completed".into(),
            owner.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=accepted".into(),
            token_of("lucas"),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=cancelled".into(),
            token_of("sarah"),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=cancelled".into(),
            token_of("antoine"),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=owner&status=expired".into(),
            token_of("chloe"),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=sitter&status=in_progress".into(),
            sitter.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?role=sitter&status=completed".into(),
            sitter.clone(),
        ),
        (
            "/api/sittings",
            "/api/sittings?status=completed".into(),
            admin.clone(),
        ),
        (
            "/api/sittings/{id}/applications",
            format!("/api/sittings/{open}/applications"),
            owner.clone(),
        ),
        (
            "/api/me/applications",
            "/api/me/applications".into(),
            sitter.clone(),
        ),
        (
            "/api/sittings/{id}/reports",
            format!("/api/sittings/{running}/reports"),
            owner.clone(),
        ),
        (
            "/api/botanist/queue",
            "/api/botanist/queue?tab=to_review".into(),
            botanist.clone(),
        ),
        (
            "/api/botanist/queue",
            "/api/botanist/queue?tab=reviewed".into(),
            botanist.clone(),
        ),
        (
            "/api/conversations",
            "/api/conversations".into(),
            owner.clone(),
        ),
        (
            "/api/conversations/{id}/messages",
            format!("/api/conversations/{conversation}/messages"),
            owner.clone(),
        ),
        (
            "/api/messages/search",
            "/api/messages/search?q=basilic".into(),
            owner.clone(),
        ),
        ("/api/me/sessions", "/api/me/sessions".into(), owner.clone()),
        ("/api/admin/users", "/api/admin/users".into(), admin.clone()),
        (
            "/api/admin/users",
            "/api/admin/users?role=BOTANIST".into(),
            admin.clone(),
        ),
        (
            "/api/admin/users",
            "/api/admin/users?role=AUDITOR".into(),
            admin.clone(),
        ),
        (
            "/api/admin/verifications",
            "/api/admin/verifications".into(),
            admin.clone(),
        ),
        (
            "/api/audit/events",
            "/api/audit/events?aggregate_type=Sitting".into(),
            auditor.clone(),
        ),
        (
            "/api/audit/events",
            format!("/api/audit/events?actor_id={hugo}"),
            auditor.clone(),
        ),
    ];
    let mut covered = BTreeSet::new();
    for (template, uri, token) in calls.drain(..) {
        let reply = t.get(&uri, &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {reply:?}");
        let items = reply.body["items"].as_array().expect("a page");
        assert!(!items.is_empty(), "{uri} answers no item for the demo");
        covered.insert(template.to_string());
    }
    let lists = documented_list_routes();
    assert!(lists.len() >= 10, "{lists:?}");
    let missing: Vec<&String> = lists.difference(&covered).collect();
    assert!(missing.is_empty(), "list routes not checked: {missing:?}");

    // What is not a page: counts, a profile with reviews, a stream in the log, a photo.
    let stats = t.get("/api/admin/stats", &admin).await;
    assert_eq!(stats.status, StatusCode::OK, "{stats:?}");
    let by_status = stats.body["sittings"]
        .as_object()
        .expect("sittings by status");
    assert_eq!(by_status.len(), 6, "{stats:?}");
    for (status, count) in by_status {
        assert!(count.as_i64() > Some(0), "{status}: {stats:?}");
    }
    let mine = t.get("/api/botanist/stats", &botanist).await;
    assert_eq!(mine.status, StatusCode::OK, "{mine:?}");
    let profile = t.get(&format!("/api/users/{hugo}"), &owner).await;
    assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
    assert!(
        profile.body["completed_sittings"].as_i64() >= Some(1),
        "{profile:?}"
    );
    let history = t
        .get(
            &format!("/api/audit/aggregates/Sitting/{running}"),
            &auditor,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let types: Vec<&str> = history.body["events"]["items"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    for expected in [
        "SittingRequested",
        "ApplicationSubmitted",
        "SitterAccepted",
        "SittingStarted",
        "CareReported",
    ] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    let photos = t.get(&format!("/api/plants/{plant}/photos"), &owner).await;
    let url = photos.body["items"][0]["url"]
        .as_str()
        .expect("url")
        .to_string();
    let image = t.get(&url, &owner).await;
    assert_eq!(image.status, StatusCode::OK);
    assert_eq!(image.headers["content-type"], "image/jpeg");

    // A second run refuses and appends nothing.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&t.pool)
        .await
        .expect("count");
    let again = demo::seed(&t.app, DemoOptions::default()).await;
    assert!(
        matches!(again, Err(SeedError::NotEmpty(n)) if n == before),
        "{again:?}"
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&t.pool)
        .await
        .expect("count");
    assert_eq!(before, after);
}

#[sqlx::test]
async fn seed_demo_with_force_adds_the_world_to_a_database_in_use(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    t.admin().await;
    let refused = demo::seed(&t.app, DemoOptions::default()).await;
    assert!(
        matches!(refused, Err(SeedError::NotEmpty(_))),
        "{refused:?}"
    );
    let forced = DemoOptions {
        force: true,
        ..Default::default()
    };
    let world = demo::seed(&t.app, forced).await.expect("seed demo --force");
    let token = login(&t, &world, "camille").await;
    let plants = t.get("/api/plants", &token).await;
    assert_eq!(
        plants.body["items"].as_array().map(Vec::len),
        Some(4),
        "{plants:?}"
    );
}

async fn count(t: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&t.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[sqlx::test]
async fn seed_load_makes_exactly_the_counts_asked_for(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // Projectors off during the load: the test catches them up itself, as `seed load` does.
    let t = TestApp::with_config(options, connect, config(), false).await;
    let sizes = LoadOptions {
        users: 7,
        plants: 9,
        sittings: 23,
        messages: 25,
        conversations: Some(3),
        batch: 10,
        ..Default::default()
    };
    let plan = sizes.plan().expect("plan");
    assert_eq!(plan.sittings_by_status, [5, 5, 5, 4, 4]);
    let progress = std::sync::Mutex::new(Vec::new());
    let report = load::load(&t.app, &sizes, &|done, total| {
        progress.lock().expect("progress").push((done, total));
    })
    .await
    .expect("seed load");
    let seen = progress.into_inner().expect("progress");
    assert!(seen.len() > 5, "batches of 10 events: {seen:?}");
    assert_eq!(seen.last(), Some(&(plan.events, plan.events)));
    let events = 2 * 7 + 9 + (5 * 2 + 5 * 3 + 5 * 4 + 4 * 8 + 4 * 2) + 3 + 25;
    assert_eq!(plan.events, events);
    assert_eq!(report.plan, plan);

    // The log.
    let by_type: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_type, count(*) FROM events GROUP BY 1 ORDER BY 1")
            .fetch_all(&t.pool)
            .await
            .expect("log");
    let sitting_events = events as i64 - 14 - 9 - 3 - 25;
    assert_eq!(
        by_type,
        [
            ("Conversation".to_string(), 3),
            ("Message".to_string(), 25),
            ("Plant".to_string(), 9),
            ("Sitting".to_string(), sitting_events),
            ("User".to_string(), 14),
        ]
    );
    assert_eq!(
        report.last_position - report.first_position + 1,
        events as i64
    );

    // The read models, caught up.
    load::catch_up(&t.app).await.expect("catch up");
    assert_eq!(count(&t, "SELECT count(*) FROM parked_events").await, 0);
    assert_eq!(
        count(&t, "SELECT count(*) FROM users WHERE email_verified").await,
        7
    );
    assert_eq!(count(&t, "SELECT count(*) FROM plants").await, 9);
    assert_eq!(count(&t, "SELECT count(*) FROM sittings").await, 23);
    for (kind, expected) in SITTING_KINDS.iter().zip(plan.sittings_by_status) {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sittings WHERE status = $1")
            .bind(kind)
            .fetch_one(&t.pool)
            .await
            .expect("count");
        assert_eq!(n, expected as i64, "{kind}");
    }
    assert_eq!(count(&t, "SELECT count(*) FROM care_reports").await, 4);
    assert_eq!(count(&t, "SELECT count(*) FROM reviews").await, 8);
    let booked = plan.sittings_by_status[1..=3].iter().sum::<u64>() as i64;
    assert_eq!(booked, 14);
    assert_eq!(
        count(&t, "SELECT count(*) FROM sitter_bookings").await,
        booked
    );
    assert_eq!(
        count(&t, "SELECT count(*) FROM messaging.conversations").await,
        3
    );
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM messaging.messages WHERE body IS NOT NULL"
        )
        .await,
        25
    );

    // The aggregates take it from there: a loaded user logs in, applies to a loaded open
    // sitting and writes into a loaded conversation.
    let _projectors = t.app.start_projectors();
    let (owner, open): (Uuid, Uuid) =
        sqlx::query_as("SELECT owner_id, id FROM sittings WHERE status = 'open' LIMIT 1")
            .fetch_one(&t.pool)
            .await
            .expect("open sitting");
    let (someone, email): (Uuid, String) = sqlx::query_as(
        "SELECT u.id, u.email FROM users u \
          WHERE u.id <> $1 AND NOT EXISTS (SELECT 1 FROM sitting_applications a \
                                            WHERE a.sitting_id = $2 AND a.applicant_id = u.id) \
          LIMIT 1",
    )
    .bind(owner)
    .bind(open)
    .fetch_one(&t.pool)
    .await
    .expect("another user");
    let login = t.login(&email, LOAD_PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let applied = t
        .post(
            &format!("/api/sittings/{open}/applications"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    let conversation: Uuid = sqlx::query_scalar(
        "SELECT conversation_id FROM messaging.participants WHERE user_id = $1 LIMIT 1",
    )
    .bind(someone)
    .fetch_one(&t.pool)
    .await
    .expect("a conversation of theirs");
    let sent = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&token),
            json!({"body": "Toujours là !"}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    let messages = t
        .get(
            &format!("/api/conversations/{conversation}/messages?limit=100"),
            &token,
        )
        .await;
    let bodies: Vec<&Value> = messages.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .collect();
    assert!(bodies.len() > 1, "{messages:?}");

    // The tamper evidence holds over the loaded log.
    let key = arosaje::audit::checkpoint_key(&t.app.config);
    let verified = arosaje::audit::verify(&t.pool, &key, &|_, _| {})
        .await
        .expect("verify");
    assert!(verified.broken.is_none(), "{:?}", verified.broken);
    // The load, then a login from a new device, the application and the message.
    assert_eq!(verified.events, events + 3);
    assert_eq!(
        count(&t, "SELECT count(*) FROM events").await,
        events as i64 + 3
    );
}

/// After a load the log is as autovacuum would leave it: analysed, and every page summarised in
/// its BRIN index on time (a range past the last summarised one is read by every time-window
/// scan). The load spans several ranges of 128 pages.
#[sqlx::test]
async fn seed_load_leaves_the_log_analysed_and_summarised(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::with_config(options, connect, config(), false).await;
    let sizes = LoadOptions {
        users: 2,
        conversations: Some(1),
        messages: 6_000,
        ..Default::default()
    };
    load::load(&t.app, &sizes, &|_, _| {})
        .await
        .expect("seed load");
    let (analysed, pages): (bool, i32) = sqlx::query_as(
        "SELECT s.last_analyze IS NOT NULL, c.relpages FROM pg_stat_user_tables s \
           JOIN pg_class c ON c.oid = s.relid WHERE s.relid = 'events'::regclass",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert!(analysed, "events analysed after the load");
    assert!(
        pages > 2 * 128,
        "the log spans several BRIN ranges: {pages} pages"
    );
    let unsummarised: i32 =
        sqlx::query_scalar("SELECT brin_summarize_new_values('events_timestamp_brin')")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(unsummarised, 0, "ranges the load left unsummarised");
}
