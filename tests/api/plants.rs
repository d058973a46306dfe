//! Plants end to end: commands, read model, read-your-writes, ownership and pagination.

use std::collections::HashSet;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{config, unique_email, TestApp};

#[sqlx::test]
async fn a_created_plant_is_listed_at_once(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (owner, token) = t.user(&unique_email("owner")).await;
    for i in 0..5 {
        let created = t
            .post(
                "/api/plants",
                Some(&token),
                json!({"name": format!("Monstera {i}"), "species": "Monstera deliciosa",
                       "care": {"watering_interval_days": 7, "light": "bright, indirect"}}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        assert_eq!(created.body["owner_id"], owner.to_string());
        assert_eq!(created.body["version"], 1);
        assert!(created.body["position"].as_i64().unwrap() > 0);
        // Read-your-writes: the very next read sees it, with no wait in between.
        let list = t.get("/api/plants", &token).await;
        assert_eq!(list.status, StatusCode::OK);
        let ids: Vec<&str> = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&created.body["id"].as_str().unwrap()),
            "{list:?}"
        );
        let one = t
            .get(
                &format!("/api/plants/{}", created.body["id"].as_str().unwrap()),
                &token,
            )
            .await;
        assert_eq!(one.body["care"]["light"], "bright, indirect");
    }
}

/// The creation's answer is built from the event, not read back: it must be exactly what the
/// read model then serves (timestamps to the microsecond, cleared and absent fields alike).
#[sqlx::test]
async fn a_created_plant_answers_what_the_read_model_serves(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    for body in [
        json!({"name": "  Ficus lyrata ", "species": "Ficus", "description": "by the window",
               "care": {"watering_interval_days": 10, "light": "bright", "notes": "rotate"}}),
        json!({"name": "Cactus", "species": null, "care": {"light": null}}),
        json!({"name": "Pilea"}),
    ] {
        let created = t.post("/api/plants", Some(&token), body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let id = created.body["id"].as_str().unwrap();
        let one = t.get(&format!("/api/plants/{id}"), &token).await;
        assert_eq!(one.status, StatusCode::OK);
        let mut answered = created.body.clone();
        let position = answered.as_object_mut().unwrap().remove("position");
        assert!(position.and_then(|p| p.as_i64()).is_some_and(|p| p > 0));
        assert_eq!(answered, one.body);
    }
}

#[sqlx::test]
async fn plants_are_updated_and_deleted_by_their_owner(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let created = t.create_plant(&token, "Pothos").await;
    let url = format!("/api/plants/{}", created.body["id"].as_str().unwrap());

    let updated = t
        .patch(
            &url,
            &token,
            json!({"species": "Epipremnum aureum", "care": {"notes": "let soil dry"}}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    assert_eq!(updated.body["species"], "Epipremnum aureum");
    assert_eq!(updated.body["care"]["notes"], "let soil dry");
    assert_eq!(
        updated.body["care"]["watering_interval_days"], 7,
        "care is merged, not replaced"
    );
    assert_eq!(updated.body["version"], 2);

    let unchanged = t.patch(&url, &token, json!({"name": "Pothos"})).await;
    assert_eq!(unchanged.status, StatusCode::OK);
    assert_eq!(unchanged.body["version"], 2, "a no-op writes no event");

    let cleared = t.patch(&url, &token, json!({"species": null})).await;
    assert!(cleared.body["species"].is_null());

    let invalid = t
        .patch(
            &url,
            &token,
            json!({"name": "", "care": {"watering_interval_days": 1000}}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.body["error"]["fields"]["care.watering_interval_days"].is_string());
    let unknown_field = t.patch(&url, &token, json!({"colour": "green"})).await;
    assert_eq!(unknown_field.status, StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(t.delete(&url, &token).await.status, StatusCode::NO_CONTENT);
    assert_eq!(t.get(&url, &token).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.patch(&url, &token, json!({"name": "Back"})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.delete(&url, &token).await.status, StatusCode::NOT_FOUND);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Plant' ORDER BY sequence",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "PlantCreated",
            "PlantUpdated",
            "PlantUpdated",
            "PlantDeleted"
        ]
    );
}

#[sqlx::test]
async fn nobody_reads_or_changes_another_users_plant(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, alice) = t.user(&unique_email("alice")).await;
    let (_, bob) = t.user(&unique_email("bob")).await;
    let plant = t.create_plant(&alice, "Alice's fern").await;
    let url = format!("/api/plants/{}", plant.body["id"].as_str().unwrap());

    for reply in [
        t.get(&url, &bob).await,
        t.patch(&url, &bob, json!({"name": "Mine now"})).await,
        t.delete(&url, &bob).await,
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
        assert_eq!(reply.code(), "not_found");
    }
    assert_eq!(t.get("/api/plants", &bob).await.body["items"], json!([]));
    let owner_filter = t
        .get(
            &format!(
                "/api/plants?owner_id={}",
                plant.body["owner_id"].as_str().unwrap()
            ),
            &bob,
        )
        .await;
    assert_eq!(
        owner_filter.body["items"],
        json!([]),
        "a user cannot list others' plants by filter"
    );
    assert_eq!(
        t.get(&url, &alice).await.body["name"],
        "Alice's fern",
        "unchanged"
    );

    for missing in [
        "/api/plants/00000000-0000-0000-0000-000000000000",
        "/api/plants/not-a-uuid",
    ] {
        assert_eq!(t.get(missing, &alice).await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            t.patch(missing, &alice, json!({"name": "x"})).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[sqlx::test]
async fn botanists_read_all_plants_but_do_not_create_them(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, alice) = t.user(&unique_email("alice")).await;
    let (_, admin) = t.admin().await;
    let (_, botanist) = t.user_with_role(&admin, "BOTANIST").await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let plant = t.create_plant(&alice, "Calathea").await;

    let all = t.get("/api/plants?q=calath", &botanist).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1, "{all:?}");
    let url = format!("/api/plants/{}", plant.body["id"].as_str().unwrap());
    assert_eq!(t.get(&url, &botanist).await.status, StatusCode::OK);
    assert_eq!(
        t.patch(&url, &botanist, json!({"name": "x"})).await.status,
        StatusCode::FORBIDDEN,
        "botanists read plants but do not change them"
    );

    for token in [&botanist, &auditor] {
        let refused = t.create_plant(token, "Nope").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
        assert_eq!(refused.code(), "forbidden");
    }
    assert_eq!(t.get(&url, &auditor).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn lists_page_with_a_cursor(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("pager")).await;
    for i in 0..5 {
        assert_eq!(
            t.create_plant(&token, &format!("Plant {i}")).await.status,
            StatusCode::CREATED
        );
    }
    let mut seen = HashSet::new();
    let mut pages = Vec::new();
    let mut url = "/api/plants?limit=2".to_string();
    loop {
        let page = t.get(&url, &token).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let items = page.body["items"].as_array().unwrap();
        pages.push(items.len());
        for item in items {
            assert!(
                seen.insert(item["id"].as_str().unwrap().to_string()),
                "duplicate across pages"
            );
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => url = format!("/api/plants?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, [2, 2, 1]);
    let newest = t.get("/api/plants?limit=1", &token).await;
    assert_eq!(newest.body["items"][0]["name"], "Plant 4", "newest first");

    for bad in [
        "/api/plants?limit=0",
        "/api/plants?limit=101",
        "/api/plants?limit=abc",
        "/api/plants?cursor=%%%",
    ] {
        let reply = t.get(bad, &token).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {reply:?}"
        );
    }
}

#[sqlx::test]
async fn concurrent_changes_get_409_only_once_the_retry_budget_is_spent(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut no_retries = config();
    no_retries.command_retries = 0;
    let t = TestApp::with_config(options, connect, no_retries, true).await;
    let (_, token) = t.user(&unique_email("racer")).await;
    let plant = t.create_plant(&token, "Contested").await;
    let url = format!("/api/plants/{}", plant.body["id"].as_str().unwrap());

    let replies = futures::future::join_all(
        (0..12).map(|i| t.patch(&url, &token, json!({"name": format!("Name {i}")}))),
    )
    .await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let conflicts: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .collect();
    assert_eq!(
        ok + conflicts.len(),
        replies.len(),
        "only 200 or 409: {replies:?}"
    );
    assert!(
        !conflicts.is_empty(),
        "without retries, racing writers conflict"
    );
    assert!(conflicts
        .iter()
        .all(|r| r.code() == "concurrent_modification"));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(plant.body["id"].as_str().unwrap())
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(
        events,
        1 + ok as i64,
        "exactly the winners' events, none lost or doubled"
    );
}

#[sqlx::test]
async fn with_a_retry_budget_racing_changes_all_succeed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut retries = config();
    retries.command_retries = 50;
    let t = TestApp::with_config(options, connect, retries, true).await;
    let (_, token) = t.user(&unique_email("racer")).await;
    let plant = t.create_plant(&token, "Contested").await;
    let url = format!("/api/plants/{}", plant.body["id"].as_str().unwrap());
    let replies = futures::future::join_all(
        (0..12).map(|i| t.patch(&url, &token, json!({"description": format!("Take {i}")}))),
    )
    .await;
    assert!(
        replies.iter().all(|r| r.status == StatusCode::OK),
        "{replies:?}"
    );
    let final_state = t.get(&url, &token).await;
    assert_eq!(final_state.body["version"], 13);
}

#[sqlx::test]
async fn a_command_whose_read_model_lags_answers_202_with_its_position(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options.clone(), connect.clone()).await;
    let (_, token) = t.user(&unique_email("lag")).await;
    // A second instance of the API on the same database, without projectors, and a short wait.
    let mut short = config();
    short.read_your_writes_timeout_ms = 50;
    let lagging = TestApp::with_config(options, connect, short, false).await;
    drop(t);

    let reply = lagging.create_plant(&token, "Eventually").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(reply.body["status"], "pending");
    assert_eq!(reply.body["version"], 1);
    assert!(reply.body["position"].as_i64().unwrap() > 0);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PlantCreated'")
            .fetch_one(&lagging.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1, "the command itself is durable");
}

/// An instance without projectors learns from the database when another instance's projectors
/// have applied its command (201), and its waiting requests share one reader per checkpoint:
/// 16 creates that each wait 1 s for a projector that never comes read it about 200 times (one
/// read per 5 ms), not 16 times as often.
#[sqlx::test]
async fn an_instance_without_projectors_follows_each_checkpoint_once_for_all_its_waiters(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options.clone(), connect.clone()).await;
    let (_, token) = t.user(&unique_email("follow")).await;
    let mut waits = config();
    waits.read_your_writes_timeout_ms = 1_000;
    let api_only = TestApp::with_config(options, connect, waits, false).await;

    let applied = api_only.create_plant(&token, "Seen elsewhere").await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    drop(t);
    let before = api_only.app.projections.checkpoint_reads();
    let names: Vec<String> = (0..16).map(|i| format!("Waiting {i}")).collect();
    let replies =
        futures::future::join_all(names.iter().map(|name| api_only.create_plant(&token, name)))
            .await;
    assert!(
        replies.iter().all(|r| r.status == StatusCode::ACCEPTED),
        "{replies:?}"
    );
    let reads = api_only.app.projections.checkpoint_reads() - before;
    assert!(reads >= 20, "the checkpoint was followed: {reads} reads");
    assert!(
        reads <= 500,
        "16 waiters of 1 s share one reader (about 200 reads): {reads} reads"
    );
}

#[sqlx::test]
async fn a_request_over_the_time_limit_gets_a_json_408(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options.clone(), connect.clone()).await;
    let (_, token) = t.user(&unique_email("slow")).await;
    // No projectors and a read-your-writes wait longer than the request limit.
    let mut slow = config();
    slow.request_timeout_secs = 1;
    slow.read_your_writes_timeout_ms = 5_000;
    let stalled = TestApp::with_config(options, connect, slow, false).await;
    drop(t);
    let reply = stalled.create_plant(&token, "Patience").await;
    assert_eq!(reply.status, StatusCode::REQUEST_TIMEOUT, "{reply:?}");
    assert_eq!(reply.code(), "request_timeout");
}
