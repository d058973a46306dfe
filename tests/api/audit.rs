//! The audit API: filters and keyset pages over the event log, one stream with its state as of a
//! time, who may read it, and what it never shows.

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, Reply, TestApp};

fn items(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["items"].as_array().expect("items").clone()
}

fn positions(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect()
}

#[sqlx::test]
async fn auditors_filter_and_page_the_log_in_global_order(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let alice_email = unique_email("alice");
    let (alice_id, alice) = t.user(&alice_email).await;
    let (_, bob) = t.user(&unique_email("bob")).await;
    let mut alice_plants = Vec::new();
    for name in ["Fern", "Cactus", "Ivy"] {
        let plant = t.create_plant(&alice, name).await;
        alice_plants.push(plant.body["id"].as_str().expect("id").to_string());
    }
    let renamed = t
        .patch(
            &format!("/api/plants/{}", alice_plants[0]),
            &alice,
            json!({"name": "Big fern"}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:?}");
    t.create_plant(&bob, "Bob's palm").await;

    // By aggregate type: every plant event, in global order.
    let plants = items(
        &t.get("/api/audit/events?aggregate_type=Plant&limit=100", &auditor)
            .await,
    );
    assert_eq!(plants.len(), 5, "{plants:?}");
    assert!(plants.iter().all(|e| e["aggregate_type"] == "Plant"));
    let order = positions(&plants);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");

    // By stream, by event type, by actor.
    let fern = items(
        &t.get(
            &format!("/api/audit/events?aggregate_id={}", alice_plants[0]),
            &auditor,
        )
        .await,
    );
    let kinds: Vec<&str> = fern
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["PlantCreated", "PlantUpdated"]);
    assert_eq!(fern[1]["sequence"], 2);
    assert_eq!(fern[1]["metadata"]["actor_id"], alice_id.to_string());
    let updates = items(
        &t.get("/api/audit/events?event_type=PlantUpdated", &auditor)
            .await,
    );
    assert_eq!(updates.len(), 1);
    let by_alice = items(
        &t.get(
            &format!("/api/audit/events?actor_id={alice_id}&aggregate_type=Plant"),
            &auditor,
        )
        .await,
    );
    assert_eq!(by_alice.len(), 4, "{by_alice:?}");

    // Pages of 2 walk the same events as one page, none twice; `after` starts past a position.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            None => "/api/audit/events?aggregate_type=Plant&limit=2".to_string(),
            Some(c) => format!("/api/audit/events?aggregate_type=Plant&limit=2&cursor={c}"),
        };
        let page = t.get(&uri, &auditor).await;
        walked.extend(positions(&items(&page)));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(walked, order);
    let after = items(
        &t.get(
            &format!("/api/audit/events?aggregate_type=Plant&after={}", order[2]),
            &auditor,
        )
        .await,
    );
    assert_eq!(positions(&after), order[3..].to_vec());

    // A time window: nothing before the log began, everything up to now.
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let until_now = items(
        &t.get(
            &format!(
                "/api/audit/events?aggregate_type=Plant&to={}",
                urlencode(&now)
            ),
            &auditor,
        )
        .await,
    );
    assert_eq!(until_now.len(), 5);
    let since_now = items(
        &t.get(
            &format!("/api/audit/events?from={}", urlencode(&now)),
            &auditor,
        )
        .await,
    );
    // Only the records of the auditor's own queries came since (each query is an access).
    assert_eq!(since_now.len(), 2, "{since_now:?}");
    assert!(
        since_now.iter().all(|e| e["aggregate_type"] == "Access"),
        "{since_now:?}"
    );

    // Credentials never reach auditors, even sealed.
    let registered = items(
        &t.get(
            &format!("/api/audit/events?aggregate_id={alice_id}&event_type=UserRegistered"),
            &auditor,
        )
        .await,
    );
    assert_eq!(
        registered[0]["payload"]["UserRegistered"]["password_hash"],
        "[redacted]"
    );

    // Bad parameters are named; other roles are refused.
    for (query, field) in [
        ("actor_id=nope", "actor_id"),
        ("from=yesterday", "from"),
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("cursor=garbage", "cursor"),
    ] {
        let bad = t.get(&format!("/api/audit/events?{query}"), &auditor).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        assert!(bad.body["error"]["fields"][field].is_string(), "{bad:?}");
    }
    let refused = t.get("/api/audit/events", &alice).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let everything = items(&t.get("/api/audit/events?limit=100", &auditor).await);
    assert!(everything.len() >= 10, "{everything:?}");
    let for_admin = items(&t.get("/api/audit/events?limit=100", &admin).await);
    // The same log, plus the record of the auditor's query just before.
    let mut expected = positions(&everything);
    expected.push(expected.last().copied().unwrap_or(0) + 1);
    assert_eq!(positions(&for_admin), expected);
    assert_eq!(
        for_admin.last().map(|e| e["aggregate_type"].clone()),
        Some(json!("Access"))
    );
}

fn urlencode(value: &str) -> String {
    value.replace('+', "%2B").replace(':', "%3A")
}

#[sqlx::test]
async fn an_aggregate_reads_as_it_was_at_any_earlier_time(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let plant = t.create_plant(&owner, "Fern").await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let between = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let renamed = t
        .patch(
            &format!("/api/plants/{plant}"),
            &owner,
            json!({"name": "Big fern", "care": {"watering_interval_days": 3}}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{renamed:?}");
    let deleted = t.delete(&format!("/api/plants/{plant}"), &owner).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");

    let uri = format!("/api/audit/aggregates/Plant/{plant}");
    let now = t.get(&uri, &auditor).await;
    assert_eq!(now.status, StatusCode::OK, "{now:?}");
    assert_eq!(now.body["version"], 3);
    assert_eq!(now.body["state"]["name"], "Big fern");
    assert_eq!(now.body["state"]["deleted"], true);
    assert_eq!(
        now.body["events"]["items"].as_array().map(Vec::len),
        Some(3)
    );

    let then = t
        .get(
            &format!("{uri}?at={}&reason=complaint+42", urlencode(&between)),
            &auditor,
        )
        .await;
    assert_eq!(then.status, StatusCode::OK, "{then:?}");
    assert_eq!(then.body["version"], 1);
    assert_eq!(then.body["state"]["name"], "Fern");
    assert_eq!(then.body["state"]["deleted"], false);
    assert_eq!(then.body["state"]["care"]["watering_interval_days"], 7);
    assert_eq!(
        then.body["events"]["items"].as_array().map(Vec::len),
        Some(1)
    );

    // The stream pages like any list.
    let first = t.get(&format!("{uri}?limit=2"), &auditor).await;
    let cursor = first.body["events"]["next_cursor"].as_str().expect("more");
    let rest = t
        .get(&format!("{uri}?limit=2&cursor={cursor}"), &auditor)
        .await;
    assert_eq!(
        rest.body["events"]["items"][0]["event_type"],
        "PlantDeleted"
    );

    // Before its first event, an unknown stream, an unknown type: 404.
    let before = t
        .get(&format!("{uri}?at=2020-01-01T00:00:00Z"), &auditor)
        .await;
    assert_eq!(before.status, StatusCode::NOT_FOUND, "{before:?}");
    let unknown = t
        .get(
            &format!("/api/audit/aggregates/Plant/{}", uuid::Uuid::now_v7()),
            &auditor,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let kind = t
        .get(
            &format!("/api/audit/aggregates/Spaceship/{plant}"),
            &auditor,
        )
        .await;
    assert_eq!(kind.status, StatusCode::NOT_FOUND);
    let bad = t.get(&format!("{uri}?at=tuesday"), &auditor).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused = t.get(&uri, &owner).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

/// Runs `sql` as an attacker with database access would: with the immutability trigger off.
async fn tamper(t: &TestApp, sql: &str, stream: &str, sequence: i64) {
    let mut tx = arosaje::infra::db::begin(&t.pool).await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_no_update")
        .execute(&mut *tx)
        .await
        .unwrap();
    let changed = sqlx::query(sql)
        .bind(stream)
        .bind(sequence)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1, "{sql}");
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_no_update")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

const EDIT_NAME: &str = "UPDATE events SET payload = jsonb_set(payload, '{PlantCreated,name}', \
                         '\"Stolen fern\"') WHERE aggregate_id = $1 AND sequence = $2";
/// The edit, with the row's hash recomputed the way the trigger does (the function is there).
const EDIT_NAME_AND_HASH: &str = "UPDATE events SET \
     payload = jsonb_set(payload, '{PlantCreated,name}', '\"Stolen fern\"'), \
     hash = sha256(event_hash_input(aggregate_type, aggregate_id, sequence, event_type, \
                   event_version, jsonb_set(payload, '{PlantCreated,name}', '\"Stolen fern\"'), \
                   metadata, timestamp)) \
     WHERE aggregate_id = $1 AND sequence = $2";

async fn verify(t: &TestApp) -> arosaje::audit::Report {
    let key = arosaje::audit::checkpoint_key(&t.app.config);
    arosaje::audit::verify(&t.pool, &key, &|_, _| {})
        .await
        .expect("verify runs")
}

async fn position_of(t: &TestApp, stream: &str, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE aggregate_id = $1 AND sequence = $2",
    )
    .bind(stream)
    .bind(sequence)
    .fetch_one(&t.pool)
    .await
    .unwrap()
}

/// A user with a plant created then renamed; returns the plant's id.
async fn plant_with_history(t: &TestApp) -> String {
    let (_, owner) = t.user(&unique_email("owner")).await;
    let plant = t.create_plant(&owner, "Fern").await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let renamed = t
        .patch(
            &format!("/api/plants/{plant}"),
            &owner,
            json!({"name": "Big fern"}),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
    t.create_plant(&owner, "Ivy").await;
    plant
}

#[sqlx::test]
async fn verify_passes_an_untouched_log_and_finds_an_edited_event(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let plant = plant_with_history(&t).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let clean = verify(&t).await;
    assert_eq!(clean.broken, None);
    assert_eq!(clean.events, total as u64);
    let key = arosaje::audit::checkpoint_key(&t.app.config);
    let signed = arosaje::audit::checkpoint(&t.pool, &key).await.unwrap();
    assert!(signed.is_some());
    assert_eq!(
        arosaje::audit::checkpoint(&t.pool, &key).await.unwrap(),
        None
    );
    let clean = verify(&t).await;
    assert_eq!((clean.broken, clean.checkpoints), (None, 1));

    tamper(&t, EDIT_NAME, &plant, 1).await;
    let broken = verify(&t).await.broken.expect("the edit is found");
    assert_eq!(
        (
            broken.aggregate_type.as_str(),
            broken.aggregate_id.as_str(),
            broken.sequence
        ),
        ("Plant", plant.as_str(), 1)
    );
    assert_eq!(broken.position, position_of(&t, &plant, 1).await);
}

#[sqlx::test]
async fn an_edit_with_its_hash_recomputed_breaks_the_next_link(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let plant = plant_with_history(&t).await;
    tamper(&t, EDIT_NAME_AND_HASH, &plant, 1).await;
    let broken = verify(&t).await.broken.expect("the next link breaks");
    assert_eq!(
        (broken.aggregate_id.as_str(), broken.sequence),
        (plant.as_str(), 2)
    );
}

#[sqlx::test]
async fn rewriting_the_end_of_a_stream_or_deleting_events_fails_the_signed_checkpoint(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner) = t.user(&unique_email("owner")).await;
    let plant = t.create_plant(&owner, "Fern").await.body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let key = arosaje::audit::checkpoint_key(&t.app.config);
    arosaje::audit::checkpoint(&t.pool, &key).await.unwrap();
    // The plant's only event, edited and re-hashed: no later link to break, but the checkpoint
    // signed its old hash.
    tamper(&t, EDIT_NAME_AND_HASH, &plant, 1).await;
    let broken = verify(&t).await.broken.expect("the checkpoint disagrees");
    assert!(broken.problem.contains("checkpoint"), "{broken}");

    // Deleting the newest events, signed before, shows as well.
    let t2_plant = plant.clone();
    tamper(
        &t,
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = $2",
        &t2_plant,
        1,
    )
    .await;
    let broken = verify(&t).await.broken.expect("deleted events are missed");
    assert!(broken.problem.contains("deleted"), "{broken}");
}

#[sqlx::test]
async fn a_forged_checkpoint_does_not_verify_without_the_key(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    plant_with_history(&t).await;
    arosaje::audit::checkpoint(&t.pool, b"someone else's key")
        .await
        .unwrap();
    let broken = verify(&t)
        .await
        .broken
        .expect("the forged checkpoint is refused");
    assert!(broken.problem.contains("checkpoint"), "{broken}");
}

#[sqlx::test]
async fn sealed_data_reads_opened_for_auditors_until_its_key_is_gone(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let (_, talker) = t.user(&unique_email("talker")).await;
    let (listener, _) = t.user(&unique_email("listener")).await;
    let conversation = t
        .post(
            "/api/conversations",
            Some(&talker),
            json!({"participant_ids": [listener]}),
        )
        .await;
    let conversation = conversation.body["id"].as_str().expect("id").to_string();
    let sent = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&talker),
            json!({"body": "The key is under the pot"}),
        )
        .await;
    let message = sent.body["id"].as_str().expect("id").to_string();
    let uri = format!("/api/audit/events?aggregate_type=Message&aggregate_id={message}");
    let before = items(&t.get(&uri, &auditor).await);
    assert_eq!(
        before[0]["payload"]["MessageSent"]["body"],
        "The key is under the pot"
    );
    // Retention deletes the message's key: the text is gone for auditors too; the fact stays.
    sqlx::query("DELETE FROM message_keys WHERE message_id = $1")
        .bind(message.parse::<uuid::Uuid>().unwrap())
        .execute(&t.pool)
        .await
        .unwrap();
    let after = items(&t.get(&uri, &auditor).await);
    assert_eq!(after[0]["payload"]["MessageSent"]["body"], "[erased]");
    assert_eq!(after[0]["event_type"], "MessageSent");
}

#[sqlx::test]
async fn time_windows_hold_exactly_the_events_stamped_inside_them(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    // Events stamped hours apart (as an old log has them), in commit order.
    for (sequence, hours_ago) in [(1, 5), (2, 3), (3, 1), (4, 0)] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                 event_version, payload, metadata, timestamp) \
             VALUES ('Probe', 'p', $1, 'Probed', '1', '{}', '{}', now() - make_interval(hours => $2))",
        )
        .bind(sequence as i64)
        .bind(hours_ago)
        .execute(&t.pool)
        .await
        .unwrap();
    }
    let two_hours_ago = (Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let sequences = |items: Vec<Value>| -> Vec<i64> {
        items
            .iter()
            .map(|e| e["sequence"].as_i64().expect("sequence"))
            .collect()
    };
    let since = items(
        &t.get(
            &format!(
                "/api/audit/events?aggregate_type=probe&from={}",
                urlencode(&two_hours_ago)
            ),
            &auditor,
        )
        .await,
    );
    assert_eq!(sequences(since), [3, 4]);
    let until = items(
        &t.get(
            &format!(
                "/api/audit/events?aggregate_type=Probe&to={}",
                urlencode(&two_hours_ago)
            ),
            &auditor,
        )
        .await,
    );
    assert_eq!(sequences(until), [1, 2]);
}
