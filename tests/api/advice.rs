//! Advice end to end over HTTP: versions, cross-validation, moderation, who reads it, the
//! botanists' work queue and their statistics.

use axum::http::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{unique_email, Reply, TestApp};
use crate::sittings::{owner_with_plants, request, sitting_body, LYON};

/// An admin's token and `n` botanists (id, token).
pub async fn botanists(t: &TestApp, n: usize) -> (String, Vec<(Uuid, String)>) {
    let (_, admin) = t.admin().await;
    let mut botanists = Vec::new();
    for _ in 0..n {
        botanists.push(t.user_with_role(&admin, "BOTANIST").await);
    }
    (admin, botanists)
}

pub async fn advise(t: &TestApp, token: &str, plant: &str, body: Value) -> Reply {
    t.post(&format!("/api/plants/{plant}/advice"), Some(token), body)
        .await
}

fn id_of(reply: &Reply) -> String {
    match reply.body["id"].as_str() {
        Some(id) => id.to_string(),
        None => panic!("no id in {reply:?}"),
    }
}

/// A sitting of `plants` starting in `from` days; returns its id.
async fn sitting(t: &TestApp, owner: &str, plants: &[String], from: i64) -> String {
    let created = request(t, owner, sitting_body(plants, from, from + 3, LYON, "Lyon")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    id_of(&created)
}

/// Whether a sitting action succeeded.
async fn act(t: &TestApp, token: &str, sitting: &str, action: &str, body: Value) -> bool {
    let reply = t
        .post(
            &format!("/api/sittings/{sitting}/{action}"),
            Some(token),
            body,
        )
        .await;
    reply.status.is_success()
}

async fn to_review(t: &TestApp, token: &str) -> Vec<Value> {
    items(&t.get("/api/botanist/queue?tab=to_review", token).await)
}

fn items(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["items"].as_array().expect("items").clone()
}

#[sqlx::test]
async fn every_edit_is_a_version_and_all_versions_stay_readable(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, botanists) = botanists(&t, 1).await;
    let botanist = &botanists[0].1;
    let given = advise(
        &t,
        botanist,
        &plants[0],
        json!({"body": "Water once a week"}),
    )
    .await;
    assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
    assert_eq!(given.body["revision"], 1);
    assert_eq!(given.body["priority"], "normal");
    assert_eq!(given.body["validation"]["status"], "pending");
    assert!(given.body["position"].as_i64().is_some());
    let advice = id_of(&given);
    let edits = [
        ("Water every ten days", None),
        ("Water every ten days; mist the leaves", Some("follow_up")),
        (
            "Water every ten days; mist the leaves; repot in spring",
            None,
        ),
    ];
    for (i, (body, priority)) in edits.iter().enumerate() {
        let mut change = json!({ "body": body });
        if let Some(priority) = priority {
            change["priority"] = json!(priority);
        }
        let revised = t
            .patch(&format!("/api/advice/{advice}"), botanist, change)
            .await;
        assert_eq!(revised.status, StatusCode::OK, "{revised:?}");
        assert_eq!(revised.body["revision"], i + 2);
        assert_eq!(revised.body["body"], *body);
    }
    // The plant's list shows the current version, with the priority the second edit set.
    let listed = items(
        &t.get(&format!("/api/plants/{}/advice", plants[0]), &owner)
            .await,
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["revision"], 4);
    assert_eq!(listed[0]["priority"], "follow_up");
    assert_eq!(listed[0]["body"], edits[2].0);

    // Every version, oldest first, also page by page.
    let versions = items(
        &t.get(&format!("/api/advice/{advice}/versions"), &owner)
            .await,
    );
    let bodies: Vec<&str> = versions
        .iter()
        .map(|v| v["body"].as_str().expect("body"))
        .collect();
    assert_eq!(
        bodies,
        ["Water once a week", edits[0].0, edits[1].0, edits[2].0]
    );
    let revisions: Vec<i64> = versions
        .iter()
        .map(|v| v["revision"].as_i64().expect("revision"))
        .collect();
    assert_eq!(revisions, [1, 2, 3, 4]);
    assert_eq!(versions[2]["priority"], "follow_up");
    let first = t
        .get(&format!("/api/advice/{advice}/versions?limit=3"), &owner)
        .await;
    assert_eq!(items(&first).len(), 3);
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let rest = items(
        &t.get(
            &format!("/api/advice/{advice}/versions?limit=3&cursor={cursor}"),
            &owner,
        )
        .await,
    );
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["revision"], 4);

    // The log holds the text sealed, never in clear.
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Advice' \
            AND payload::text LIKE '%Water%'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(clear, 0, "advice text in clear in the log");
}

#[sqlx::test]
async fn other_botanists_validate_or_reject_once_and_never_their_own(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, botanists) = botanists(&t, 3).await;
    let (author, peer, third) = (&botanists[0].1, &botanists[1].1, &botanists[2].1);
    let advice = id_of(&advise(&t, author, &plants[0], json!({"body": "Less sun"})).await);
    let url = |verdict: &str| format!("/api/advice/{advice}/{verdict}");

    let own = t.post(&url("validate"), Some(author), json!({})).await;
    assert_eq!(
        (own.status, own.code()),
        (StatusCode::FORBIDDEN, "own_advice")
    );

    let validated = t
        .post(
            &url("validate"),
            Some(peer),
            json!({"comment": "Agreed, it scorches"}),
        )
        .await;
    assert_eq!(validated.status, StatusCode::OK, "{validated:?}");
    assert_eq!(validated.body["validation"]["status"], "validated");
    assert_eq!(validated.body["validation"]["validations"], 1);
    assert_eq!(
        validated.body["reviews"][0]["comment"],
        "Agreed, it scorches"
    );
    assert_eq!(validated.body["reviews"][0]["verdict"], "validated");
    assert_eq!(
        validated.body["reviews"][0]["botanist_id"],
        botanists[1].0.to_string()
    );

    for verdict in ["validate", "reject"] {
        let again = t.post(&url(verdict), Some(peer), json!({})).await;
        assert_eq!(
            (again.status, again.code()),
            (StatusCode::CONFLICT, "already_reviewed"),
            "{again:?}"
        );
    }
    let rejected = t
        .post(
            &url("reject"),
            Some(third),
            json!({"comment": "It needs full sun"}),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{rejected:?}");
    assert_eq!(rejected.body["validation"]["status"], "contested");
    assert_eq!(rejected.body["validation"]["rejections"], 1);

    // The owner sees the same status and counts.
    let listed = items(
        &t.get(&format!("/api/plants/{}/advice", plants[0]), &owner)
            .await,
    );
    assert_eq!(listed[0]["validation"]["validations"], 1);
    assert_eq!(listed[0]["validation"]["rejections"], 1);
    assert_eq!(listed[0]["reviews"].as_array().map(Vec::len), Some(2));

    // Statistics on both sides.
    let stats = t.get("/api/botanist/stats", author).await;
    assert_eq!(stats.status, StatusCode::OK, "{stats:?}");
    assert_eq!(stats.body["advice"]["total"], 1);
    assert_eq!(stats.body["advice"]["contested"], 1);
    assert_eq!(stats.body["verdicts_received"]["validated"], 1);
    assert_eq!(stats.body["verdicts_received"]["rejected"], 1);
    assert_eq!(stats.body["verdicts_given"]["validated"], 0);
    let peer_stats = t.get("/api/botanist/stats", peer).await;
    assert_eq!(peer_stats.body["advice"]["total"], 0);
    assert_eq!(peer_stats.body["verdicts_given"]["validated"], 1);
    assert_eq!(peer_stats.body["verdicts_given"]["rejected"], 0);

    // A comment too long is refused before anything is recorded.
    let (_, late) = t
        .user_with_role(&botanists_admin(&t).await, "BOTANIST")
        .await;
    let long = t
        .post(
            &url("reject"),
            Some(&late),
            json!({"comment": "x".repeat(1001)}),
        )
        .await;
    assert_eq!(
        (long.status, long.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
}

async fn botanists_admin(t: &TestApp) -> String {
    t.admin().await.1
}

#[sqlx::test]
async fn hidden_advice_is_gone_for_users_and_kept_for_auditors(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (admin, botanists) = botanists(&t, 2).await;
    let (author, peer) = (&botanists[0].1, &botanists[1].1);
    let advice = id_of(
        &advise(
            &t,
            author,
            &plants[0],
            json!({"body": "Buy my miracle fertiliser"}),
        )
        .await,
    );
    let url = format!("/api/advice/{advice}");

    // A moderator says why.
    let no_reason = t.delete(&url, &admin).await;
    assert_eq!(
        (no_reason.status, no_reason.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
    assert!(no_reason.body["error"]["fields"]["reason"].is_string());
    let hidden = t.delete(&format!("{url}?reason=advertising"), &admin).await;
    assert_eq!(hidden.status, StatusCode::NO_CONTENT, "{hidden:?}");
    let again = t.delete(&format!("{url}?reason=again"), &admin).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "already_hidden")
    );

    // Users and botanists, its author included, no longer see it anywhere.
    let plant_advice = format!("/api/plants/{}/advice", plants[0]);
    for token in [&owner, author, peer] {
        assert!(items(&t.get(&plant_advice, token).await).is_empty());
        let versions = t.get(&format!("{url}/versions"), token).await;
        assert_eq!(versions.status, StatusCode::NOT_FOUND, "{versions:?}");
    }
    let revise = t.patch(&url, author, json!({"body": "Still great"})).await;
    assert_eq!(revise.status, StatusCode::NOT_FOUND, "{revise:?}");
    let validate = t
        .post(&format!("{url}/validate"), Some(peer), json!({}))
        .await;
    assert_eq!(validate.status, StatusCode::NOT_FOUND, "{validate:?}");
    let reviewed = items(&t.get("/api/botanist/queue?tab=reviewed", author).await);
    assert!(reviewed.is_empty(), "{reviewed:?}");

    // The moderator sees it with the moderation record.
    let moderated = items(&t.get(&plant_advice, &admin).await);
    assert_eq!(moderated.len(), 1);
    assert_eq!(moderated[0]["moderation"]["reason"], "advertising");
    assert_eq!(moderated[0]["body"], "Buy my miracle fertiliser");

    // The log keeps the advice and its moderation: who hid it, when and why (what the audit API
    // serves to auditors).
    let trail: Vec<(String, Value, Value)> = sqlx::query_as(
        "SELECT event_type, payload, metadata FROM events \
          WHERE aggregate_type = 'Advice' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&advice)
    .fetch_all(&t.pool)
    .await
    .unwrap();
    let types: Vec<&str> = trail.iter().map(|(kind, ..)| kind.as_str()).collect();
    assert_eq!(types, ["AdviceGiven", "AdviceHidden"]);
    assert_eq!(trail[1].1["AdviceHidden"]["reason"], "advertising");
    assert!(trail[1].2.to_string().contains("ADMIN"), "{:?}", trail[1].2);

    let stats = t.get("/api/admin/stats", &admin).await;
    assert_eq!(stats.body["advice"]["hidden"], 1, "{stats:?}");
    assert_eq!(stats.body["advice"]["active"], 0);
}

#[sqlx::test]
async fn authors_withdraw_their_own_advice_only(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, botanists) = botanists(&t, 2).await;
    let (author, peer) = (&botanists[0].1, &botanists[1].1);
    let advice = id_of(&advise(&t, author, &plants[0], json!({"body": "Prune"})).await);
    let url = format!("/api/advice/{advice}");
    let not_yours = t.delete(&url, peer).await;
    assert_eq!(
        (not_yours.status, not_yours.code()),
        (StatusCode::FORBIDDEN, "not_the_author")
    );
    let not_yours = t.patch(&url, peer, json!({"body": "Mine now"})).await;
    assert_eq!(
        (not_yours.status, not_yours.code()),
        (StatusCode::FORBIDDEN, "not_the_author")
    );
    let owners = t.delete(&url, &owner).await;
    assert_eq!(owners.status, StatusCode::FORBIDDEN, "{owners:?}");
    let withdrawn = t.delete(&url, author).await;
    assert_eq!(withdrawn.status, StatusCode::NO_CONTENT, "{withdrawn:?}");
    assert!(items(
        &t.get(&format!("/api/plants/{}/advice", plants[0]), &owner)
            .await
    )
    .is_empty());
    let twice = t.delete(&url, author).await;
    assert_eq!(twice.status, StatusCode::NOT_FOUND, "{twice:?}");
    let stats = t.get("/api/botanist/stats", author).await;
    assert_eq!(stats.body["advice"]["withdrawn"], 1);
    assert_eq!(stats.body["advice"]["total"], 0);
}

#[sqlx::test]
async fn only_botanists_write_advice(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (admin, botanists) = botanists(&t, 1).await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let body = json!({"body": "Water it"});
    for token in [&owner, &auditor, &admin] {
        let refused = advise(&t, token, &plants[0], body.clone()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{refused:?}"
        );
    }
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Advice'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(count, 0);

    // Bad input is named, never a 500.
    let botanist = &botanists[0].1;
    for (body, field) in [
        (json!({"body": ""}), "body"),
        (json!({"body": "x".repeat(5001)}), "body"),
        (json!({"body": "ok", "priority": "asap"}), "priority"),
        (json!({"body": "ok", "sitting_id": "nope"}), "sitting_id"),
        (
            json!({"body": "ok", "sitting_id": Uuid::now_v7()}),
            "sitting_id",
        ),
    ] {
        let refused = advise(&t, botanist, &plants[0], body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{refused:?}"
        );
        assert!(
            refused.body["error"]["fields"][field].is_string(),
            "{refused:?}"
        );
    }
    let unknown = advise(
        &t,
        botanist,
        &Uuid::now_v7().to_string(),
        json!({"body": "ok"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    let unknown_fields = advise(&t, botanist, &plants[0], json!({"text": "ok"})).await;
    assert_eq!(unknown_fields.status, StatusCode::UNPROCESSABLE_ENTITY);

    // A sitting of other plants, or one that is over, is refused.
    let (_, other_owner, other_plants) = owner_with_plants(&t, 1).await;
    let elsewhere = sitting(&t, &other_owner, &other_plants, 1).await;
    let wrong = advise(
        &t,
        botanist,
        &plants[0],
        json!({"body": "ok", "sitting_id": elsewhere}),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY, "{wrong:?}");
    let over = sitting(&t, &owner, &plants, 1).await;
    let cancelled = t
        .post(
            &format!("/api/sittings/{over}/cancel"),
            Some(&owner),
            json!({"reason": "trip cancelled"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    let closed = advise(
        &t,
        botanist,
        &plants[0],
        json!({"body": "ok", "sitting_id": over}),
    )
    .await;
    assert_eq!(
        (closed.status, closed.code()),
        (StatusCode::CONFLICT, "sitting_closed")
    );
}

#[sqlx::test]
async fn the_owner_and_the_sitter_during_the_sitting_read_the_advice(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let (_, botanists) = botanists(&t, 1).await;
    let id = sitting(&t, &owner, &plants, 0).await;
    assert!(act(&t, &sitter, &id, "applications", json!({})).await);
    assert!(act(&t, &owner, &id, "accept", json!({"sitter_id": sitter_id})).await);
    let given = advise(
        &t,
        &botanists[0].1,
        &plants[0],
        json!({"body": "Keep the soil moist", "sitting_id": id, "priority": "urgent"}),
    )
    .await;
    assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
    assert_eq!(given.body["sitting_id"], id.as_str());
    let advice = id_of(&given);
    let list = format!("/api/plants/{}/advice", plants[0]);
    let versions = format!("/api/advice/{advice}/versions");
    for token in [&owner, &sitter] {
        assert_eq!(items(&t.get(&list, token).await).len(), 1);
        assert_eq!(items(&t.get(&versions, token).await).len(), 1);
    }
    for uri in [&list, &versions] {
        let hidden = t.get(uri, &stranger).await;
        assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{hidden:?}");
    }
    // Once the sitting is over, the sitter no longer sees the plant nor its advice.
    assert!(act(&t, &sitter, &id, "start", json!({})).await);
    assert!(act(&t, &owner, &id, "complete", json!({})).await);
    let after = t.get(&list, &sitter).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{after:?}");
}

#[sqlx::test]
async fn the_queue_moves_a_plant_from_to_review_to_reviewed_once_advised(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 2).await;
    let (_, other_owner, other_plants) = owner_with_plants(&t, 1).await;
    let (_, botanists) = botanists(&t, 2).await;
    let (botanist, colleague) = (&botanists[0].1, &botanists[1].1);
    // The other owner's plant was flagged urgent by a botanist before its sitting was requested.
    let flagged = advise(
        &t,
        colleague,
        &other_plants[0],
        json!({"body": "Root rot: check it", "priority": "urgent"}),
    )
    .await;
    assert_eq!(flagged.status, StatusCode::CREATED, "{flagged:?}");
    let first = sitting(&t, &owner, &plants, 2).await;
    let later = sitting(&t, &other_owner, &other_plants, 9).await;

    let queue = to_review(&t, botanist).await;
    let order: Vec<(&str, bool)> = queue
        .iter()
        .map(|i| {
            (
                i["plant_id"].as_str().expect("plant"),
                i["urgent"].as_bool().expect("urgent"),
            )
        })
        .collect();
    // Flagged first although its sitting starts later; then by start.
    assert_eq!(order.len(), 3, "{queue:?}");
    assert_eq!(order[0], (other_plants[0].as_str(), true));
    assert_eq!(queue[0]["sitting_id"], later.as_str());
    assert_eq!(queue[1]["sitting_id"], first.as_str());
    assert_eq!(queue[1]["sitting_status"], "open");
    assert!(queue[1]["plant_name"].is_string());

    // Page by page, the same order.
    let page = t
        .get("/api/botanist/queue?tab=to_review&limit=2", botanist)
        .await;
    let cursor = page.body["next_cursor"].as_str().expect("more").to_string();
    let rest = items(
        &t.get(
            &format!("/api/botanist/queue?tab=to_review&limit=2&cursor={cursor}"),
            botanist,
        )
        .await,
    );
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["plant_id"], queue[2]["plant_id"]);

    // Advising moves the plant from to_review to my reviewed tab.
    let advised = queue[1]["plant_id"].as_str().expect("plant").to_string();
    let given = advise(&t, botanist, &advised, json!({"body": "Fine as is"})).await;
    let advice = id_of(&given);
    let queue = to_review(&t, botanist).await;
    assert_eq!(queue.len(), 2);
    assert!(queue.iter().all(|i| i["plant_id"] != advised.as_str()));
    let reviewed = items(&t.get("/api/botanist/queue?tab=reviewed", botanist).await);
    assert_eq!(reviewed.len(), 1);
    assert_eq!(reviewed[0]["plant_id"], advised.as_str());
    assert_eq!(reviewed[0]["my_advice"]["id"], advice.as_str());
    assert_eq!(reviewed[0]["my_advice"]["body"], "Fine as is");
    // The colleague's reviewed tab has their own advice only.
    let theirs = items(&t.get("/api/botanist/queue?tab=reviewed", colleague).await);
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["plant_id"], other_plants[0].as_str());

    // Withdrawn, the plant waits for advice again; a cancelled sitting leaves the queue.
    let withdrawn = t.delete(&format!("/api/advice/{advice}"), botanist).await;
    assert_eq!(withdrawn.status, StatusCode::NO_CONTENT);
    assert_eq!(to_review(&t, botanist).await.len(), 3);
    let cancelled = t
        .post(
            &format!("/api/sittings/{first}/cancel"),
            Some(&owner),
            json!({"reason": "staying home"}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    let queue = to_review(&t, botanist).await;
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0]["sitting_id"], later.as_str());

    let bad = t.get("/api/botanist/queue?tab=everything", botanist).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = t.get("/api/botanist/queue?cursor=garbage", botanist).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let users = t.get("/api/botanist/queue", &owner).await;
    assert_eq!(users.status, StatusCode::FORBIDDEN);
}
