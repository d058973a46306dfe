//! GDPR over HTTP: export by replay (everything the person took part in, nobody else's
//! identity), erasure by crypto-shredding (nothing readable of the person left in PostgreSQL,
//! Redis or storage; the other party's conversations and sittings still work; a rebuild equals
//! the live model), access auditing and its retention.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::advice::{advise, botanists};
use crate::helpers::{eventually, unique_email, Reply, TestApp, PASSWORD};
use crate::photos::{jpeg, upload};
use crate::sittings::{act, owner_with_plants, request, sitting_body};
use arosaje::projections::rebuild::{self, RebuildOptions};

const LYON: (f64, f64) = (45.764, 4.8357);
const NANTES: (f64, f64) = (47.2184, -1.5536);

fn id_of(reply: &Reply) -> String {
    match reply.body["id"].as_str() {
        Some(id) => id.to_string(),
        None => panic!("no id in {reply:?}"),
    }
}

async fn ok(reply: Reply, status: StatusCode) -> Reply {
    assert_eq!(reply.status, status, "{reply:?}");
    reply
}

/// Eve's world: what an erasure or an export must cover. Eve owns two plants (one with a photo),
/// a completed sitting kept by Sam (with a report, reviews both ways and advice), an open
/// sitting Sam applied to, sits Olga's accepted sitting, applied to Olga's open one, and talks
/// with Sam.
struct World {
    eve: Uuid,
    eve_token: String,
    eve_email: String,
    eve_name: String,
    eve_phone: String,
    eve_text: String,
    sam: Uuid,
    sam_token: String,
    sam_email: String,
    sam_name: String,
    olga: Uuid,
    olga_token: String,
    conversation: String,
    completed: String,
    eve_open: String,
    olga_open: String,
    olga_accepted: String,
    botanist: Uuid,
}

async fn world(t: &TestApp) -> World {
    let tag = Uuid::new_v4().simple().to_string();
    let eve_name = format!("Evelyne {}", &tag[..10]);
    let eve_email = unique_email("eve");
    let (eve, eve_token) = t.verified_user_named(&eve_email, &eve_name).await;
    let digits = format!("{:08}", Uuid::new_v4().as_u128() % 100_000_000);
    let eve_phone = format!("+33 6 {} {}", &digits[..4], &digits[4..]);
    let eve_text = format!("my door code is {}", &tag[18..26]);
    ok(
        t.patch(
            "/api/me",
            &eve_token,
            json!({"phone": eve_phone, "city": "Lyon", "bio": format!("{eve_name} loves ferns")}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut plants = Vec::new();
    for name in ["Fern", "Olive tree"] {
        plants.push(id_of(
            &ok(t.create_plant(&eve_token, name).await, StatusCode::CREATED).await,
        ));
    }
    ok(
        upload(t, &eve_token, &plants[0], "fern.jpg", &jpeg(64, 48)).await,
        StatusCode::CREATED,
    )
    .await;

    let sam_email = unique_email("sam");
    let sam_name = format!("Samuel {}", &tag[26..32]);
    let (sam, sam_token) = t.verified_user_named(&sam_email, &sam_name).await;
    let (olga, olga_token, olga_plants) = owner_with_plants(t, 2).await;

    // Completed: Eve owns, Sam sits, reports, both review.
    let completed = id_of(
        &ok(
            request(
                t,
                &eve_token,
                sitting_body(&plants[..1], 0, 3, LYON, "Lyon"),
            )
            .await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        act(
            t,
            &sam_token,
            &completed,
            "applications",
            json!({"message": "Happy to help"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    ok(
        act(
            t,
            &eve_token,
            &completed,
            "accept",
            json!({"sitter_id": sam}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    ok(
        act(t, &sam_token, &completed, "start", json!({})).await,
        StatusCode::OK,
    )
    .await;
    ok(
        act(
            t,
            &sam_token,
            &completed,
            "reports",
            json!({"plant_id": plants[0], "note": "Watered the fern"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let (_, botanists) = botanists(t, 1).await;
    let (botanist, botanist_token) = botanists[0].clone();
    ok(
        advise(
            t,
            &botanist_token,
            &plants[0],
            json!({"body": "Mist it twice a week"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    ok(
        act(t, &eve_token, &completed, "complete", json!({})).await,
        StatusCode::OK,
    )
    .await;
    ok(
        act(
            t,
            &eve_token,
            &completed,
            "reviews",
            json!({"rating": 5, "comment": format!("{eve_name} says: perfect")}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    ok(
        act(
            t,
            &sam_token,
            &completed,
            "reviews",
            json!({"rating": 4, "comment": "Lovely ferns"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    // Eve's open sitting, Sam applied.
    let eve_open = id_of(
        &ok(
            request(
                t,
                &eve_token,
                sitting_body(&plants[1..], 20, 25, LYON, "Lyon"),
            )
            .await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        act(t, &sam_token, &eve_open, "applications", json!({})).await,
        StatusCode::CREATED,
    )
    .await;
    // Olga's open sitting, Eve applied; Olga's accepted sitting, Eve sits it.
    let olga_open = id_of(
        &ok(
            request(
                t,
                &olga_token,
                sitting_body(&olga_plants[..1], 30, 32, NANTES, "Nantes"),
            )
            .await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        act(
            t,
            &eve_token,
            &olga_open,
            "applications",
            json!({"message": format!("Call me on {eve_phone}")}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let olga_accepted = id_of(
        &ok(
            request(
                t,
                &olga_token,
                sitting_body(&olga_plants[1..], 40, 42, NANTES, "Nantes"),
            )
            .await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        act(t, &eve_token, &olga_accepted, "applications", json!({})).await,
        StatusCode::CREATED,
    )
    .await;
    ok(
        act(
            t,
            &olga_token,
            &olga_accepted,
            "accept",
            json!({"sitter_id": eve}),
        )
        .await,
        StatusCode::OK,
    )
    .await;

    // Eve and Sam talk.
    let conversation = id_of(
        &ok(
            t.post(
                "/api/conversations",
                Some(&eve_token),
                json!({"participant_ids": [sam]}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await,
    );
    for (token, text) in [
        (&eve_token, eve_text.as_str()),
        (&sam_token, "Noted, thanks!"),
    ] {
        ok(
            t.post(
                &format!("/api/conversations/{conversation}/messages"),
                Some(token),
                json!({"body": text}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    World {
        eve,
        eve_token,
        eve_email,
        eve_name,
        eve_phone,
        eve_text,
        sam,
        sam_token,
        sam_email,
        sam_name,
        olga,
        olga_token,
        conversation,
        completed,
        eve_open,
        olga_open,
        olga_accepted,
        botanist,
    }
}

/// Every row of every table (partitions included) whose text holds one of `needles`, as
/// "table: needle".
async fn rows_holding(pool: &PgPool, needles: &[&str]) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
           FROM information_schema.tables \
          WHERE table_type = 'BASE TABLE' \
            AND table_schema NOT IN ('pg_catalog', 'information_schema') \
          ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables.iter().any(|t| t == "public.events"), "{tables:?}");
    let mut found = Vec::new();
    for table in tables {
        for needle in needles {
            let count: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} t WHERE strpos(lower(t::text), lower($1)) > 0"
            ))
            .bind(needle)
            .fetch_one(pool)
            .await
            .expect("scan");
            if count > 0 {
                found.push(format!("{table}: {needle}"));
            }
        }
    }
    found
}

/// Every Redis key (and value) holding one of `needles`.
async fn redis_holding(needles: &[&str]) -> Vec<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    let mut scanned = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        for key in keys {
            scanned += 1;
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("type");
            let values: Vec<String> = match kind.as_str() {
                "string" => redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
                    .expect("get")
                    .map(|v| vec![String::from_utf8_lossy(&v).into_owned()])
                    .unwrap_or_default(),
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<Vec<Vec<u8>>>(&mut conn)
                    .await
                    .expect("hgetall")
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect(),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("smembers"),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .expect("lrange"),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .expect("zrange"),
                _ => Vec::new(),
            };
            for needle in needles {
                let needle = needle.to_lowercase();
                if key.to_lowercase().contains(&needle)
                    || values.iter().any(|v| v.to_lowercase().contains(&needle))
                {
                    found.push(format!("{key}: {needle}"));
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(
        scanned > 0,
        "Redis holds the other users' sessions at least"
    );
    found
}

/// Files under `dir`, and those holding one of `needles`.
fn files_holding(dir: &str, needles: &[&str]) -> (usize, Vec<String>) {
    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, files);
                } else {
                    files.push(path);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(std::path::Path::new(dir), &mut files);
    let mut found = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for needle in needles {
            if text.contains(&needle.to_lowercase()) {
                found.push(format!("{}: {needle}", file.display()));
            }
        }
    }
    (files.len(), found)
}

/// Every read model rebuilt aside from the log equals the live one.
async fn rebuild_equals_live(t: &TestApp) {
    for projection in t.app.projections.projections() {
        if projection.tables().is_empty() {
            continue;
        }
        t.app
            .projections
            .catch_up(projection.name())
            .await
            .expect("catch up");
        let options = RebuildOptions {
            batch_size: 13,
            dry_run: true,
            ..Default::default()
        };
        let report = rebuild::rebuild(&t.pool, projection.as_ref(), &options, &|_| {})
            .await
            .expect("dry run");
        assert_eq!(report.parked, 0, "{}: {report:?}", projection.name());
        let differences = report.differences.expect("differences");
        assert!(
            differences.iter().all(|d| d.is_empty()),
            "{}: {differences:?}",
            projection.name()
        );
    }
}

#[sqlx::test]
async fn after_an_erasure_nothing_readable_of_the_person_remains_and_the_others_carry_on(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let w = world(&t).await;
    let (_, admin) = t.admin().await;
    // The cached answers that quote Eve: a public profile, an admin search.
    ok(
        t.get(&format!("/api/users/{}", w.eve), &w.sam_token).await,
        StatusCode::OK,
    )
    .await;
    ok(
        t.get(&format!("/api/admin/users?q={}", w.eve_email), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    // A plant of Eve's, photographed, then deleted: its photo objects go with it.
    let (before, _) = files_holding(&t.app.config.storage_dir, &[]);
    let cactus = id_of(
        &ok(
            t.create_plant(&w.eve_token, "Cactus").await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        upload(&t, &w.eve_token, &cactus, "cactus.jpg", &jpeg(64, 48)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(files_holding(&t.app.config.storage_dir, &[]).0, before + 2);
    assert_eq!(
        t.delete(&format!("/api/plants/{cactus}"), &w.eve_token)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        files_holding(&t.app.config.storage_dir, &[]).0,
        before,
        "a deleted plant's photo objects are deleted"
    );
    // Eve sits Olga's accepted sitting: her days are booked.
    let booked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sitter_bookings WHERE sitter_id = $1")
            .bind(w.eve)
            .fetch_one(&t.pool)
            .await
            .expect("bookings");
    assert_eq!(booked, 1);
    let needles = [
        w.eve_email.as_str(),
        w.eve_name.as_str(),
        w.eve_phone.as_str(),
        w.eve_text.as_str(),
    ];
    // The needles are where the scans look before the erasure (the scans can find them).
    assert!(!rows_holding(&t.pool, &needles).await.is_empty());

    // Refused while Eve sits a running sitting... (Olga's accepted one has not started: fine.)
    let erased = t.delete("/api/me", &w.eve_token).await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT, "{erased:?}");

    // Eve is gone: her token, her login, her profile.
    assert_eq!(
        t.get("/api/me", &w.eve_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.login(&w.eve_email, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        t.get(&format!("/api/users/{}", w.eve), &w.sam_token)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for projection in t.app.projections.projections() {
        t.app
            .projections
            .catch_up(projection.name())
            .await
            .expect("catch up");
    }

    let left = rows_holding(&t.pool, &needles).await;
    assert!(left.is_empty(), "PostgreSQL still holds: {left:?}");
    let left = redis_holding(&needles).await;
    assert!(left.is_empty(), "Redis still holds: {left:?}");
    let (files, left) = files_holding(&t.app.config.storage_dir, &needles);
    assert!(left.is_empty(), "storage still holds: {left:?}");
    assert_eq!(files, 0, "the photo of Eve's plant is deleted");
    // Nor does any table hold her id, but the log itself, access records (kept a year for
    // accountability) and the messages she sent in others' conversations (kept, unreadable).
    let kept = [
        "public.events",
        "monitoring.access_log",
        "messaging.messages",
    ];
    let left: Vec<String> = rows_holding(&t.pool, &[&w.eve.to_string()])
        .await
        .into_iter()
        .filter(|row| !kept.iter().any(|table| row.starts_with(table)))
        .collect();
    assert!(left.is_empty(), "her id is still in: {left:?}");
    let freed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sitter_bookings WHERE sitter_id = $1")
            .bind(w.eve)
            .fetch_one(&t.pool)
            .await
            .expect("bookings");
    assert_eq!(freed, 0, "her booked days are freed");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM user_keys WHERE user_id = $1")
        .bind(w.eve)
        .fetch_one(&t.pool)
        .await
        .expect("keys");
    assert_eq!(keys, 0);
    // The log is intact: Eve's events are all there, and `UserErased` says who erased her.
    let erased_by: Option<String> = sqlx::query_scalar(
        "SELECT payload -> 'UserErased' ->> 'by' FROM events \
          WHERE aggregate_type = 'User' AND aggregate_id = $1 AND event_type = 'UserErased'",
    )
    .bind(w.eve.to_string())
    .fetch_optional(&t.pool)
    .await
    .expect("event");
    assert_eq!(erased_by, Some(w.eve.to_string()));

    // Sam's conversation works: Eve's message is from nobody readable, his own stays.
    let messages = ok(
        t.get(
            &format!("/api/conversations/{}/messages", w.conversation),
            &w.sam_token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let items = messages.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 2, "{messages:?}");
    let from_eve = items
        .iter()
        .find(|m| m["sender_id"] == w.eve.to_string())
        .expect("Eve's message stays, unreadable");
    assert!(from_eve["body"].is_null(), "{from_eve}");
    assert!(items.iter().any(|m| m["body"] == "Noted, thanks!"));
    ok(
        t.post(
            &format!("/api/conversations/{}/messages", w.conversation),
            Some(&w.sam_token),
            json!({"body": "Still here"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Olga's sittings work: the open one lost Eve's application, the accepted one was cancelled
    // by its sitter's erasure and can be asked for again.
    let open = ok(
        t.get(&format!("/api/sittings/{}", w.olga_open), &w.olga_token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(open.body["status"], "open");
    assert_eq!(open.body["applications"], 0, "{open:?}");
    let accepted = ok(
        t.get(&format!("/api/sittings/{}", w.olga_accepted), &w.olga_token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(accepted.body["status"], "cancelled", "{accepted:?}");
    ok(
        act(&t, &w.sam_token, &w.olga_open, "applications", json!({})).await,
        StatusCode::CREATED,
    )
    .await;
    // Eve's own sittings are gone with her (the open one was cancelled first: Sam heard of it).
    for sitting in [&w.completed, &w.eve_open] {
        assert_eq!(
            t.get(&format!("/api/sittings/{sitting}"), &w.sam_token)
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'SittingCancelled'",
    )
    .bind(&w.eve_open)
    .fetch_one(&t.pool)
    .await
    .expect("count");
    assert_eq!(cancelled, 1);
    // Sam's profile and the botanist's account carry on.
    ok(
        t.get(&format!("/api/users/{}", w.sam), &w.olga_token).await,
        StatusCode::OK,
    )
    .await;
    ok(
        t.get(&format!("/api/users/{}", w.botanist), &w.sam_token)
            .await,
        StatusCode::OK,
    )
    .await;

    // Erasing twice finds nobody; the live read models equal a replay of the log.
    assert_eq!(
        t.delete(&format!("/api/admin/users/{}", w.eve), &admin)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    rebuild_equals_live(&t).await;
}

#[sqlx::test]
async fn erasure_needs_a_recent_login_and_waits_for_running_sittings(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (owner_id, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let sitting = id_of(
        &ok(
            request(&t, &owner, sitting_body(&plants, 0, 3, LYON, "Lyon")).await,
            StatusCode::CREATED,
        )
        .await,
    );
    ok(
        act(&t, &sitter, &sitting, "applications", json!({})).await,
        StatusCode::CREATED,
    )
    .await;
    ok(
        act(
            &t,
            &owner,
            &sitting,
            "accept",
            json!({"sitter_id": sitter_id}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    ok(
        act(&t, &sitter, &sitting, "start", json!({})).await,
        StatusCode::OK,
    )
    .await;
    for token in [&owner, &sitter] {
        let refused = t.delete("/api/me", token).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::CONFLICT, "sitting_in_progress"),
            "{refused:?}"
        );
    }
    let (admin_id, admin) = t.admin().await;
    let refused = t
        .delete(&format!("/api/admin/users/{owner_id}"), &admin)
        .await;
    assert_eq!(refused.code(), "sitting_in_progress", "{refused:?}");
    let own = t
        .delete(&format!("/api/admin/users/{admin_id}"), &admin)
        .await;
    assert_eq!(
        (own.status, own.code()),
        (StatusCode::CONFLICT, "own_account"),
        "{own:?}"
    );
    let unknown = t
        .delete(&format!("/api/admin/users/{}", Uuid::new_v4()), &admin)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    // Nothing was erased by the refusals.
    assert_eq!(t.get("/api/me", &owner).await.status, StatusCode::OK);
    assert_eq!(t.get("/api/me", &sitter).await.status, StatusCode::OK);

    // A login older than five minutes must be confirmed first.
    let (user_id, user) = t.verified_user(&unique_email("stale")).await;
    let sid = t.app.jwt.verify(&user).expect("token").sid;
    let mut session = crate::helpers::redis_session(user_id, sid).await;
    session["authenticated_at"] =
        json!((chrono::Utc::now() - chrono::Duration::minutes(6)).to_rfc3339());
    crate::helpers::put_redis_session(user_id, sid, &session).await;
    let stale = t.delete("/api/me", &user).await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::FORBIDDEN, "step_up_required"),
        "{stale:?}"
    );
    assert_eq!(t.get("/api/me", &user).await.status, StatusCode::OK);
    // An admin erases that user (the admin logged in just now).
    let erased = t
        .delete(&format!("/api/admin/users/{user_id}"), &admin)
        .await;
    assert_eq!(erased.status, StatusCode::NO_CONTENT, "{erased:?}");
    assert_eq!(
        t.get("/api/me", &user).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test]
async fn every_instance_forgets_an_erased_key(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options.clone(), connect.clone()).await;
    let other = TestApp::spawn(options, connect).await;
    let (id, token) = t.verified_user(&unique_email("gone")).await;
    // The other instance has the key cached (its projectors opened the registration).
    other.app.keys.cipher(id).await.expect("cached key");
    ok(t.delete("/api/me", &token).await, StatusCode::NO_CONTENT).await;
    eventually(
        "the other instance to drop the key",
        Duration::from_secs(10),
        || async {
            matches!(
                other.app.keys.cipher(id).await,
                Err(arosaje::events::crypto::CryptoError::KeyMissing(_))
            )
        },
    )
    .await;
}

fn text_of(value: &Value) -> String {
    value.to_string()
}

#[sqlx::test]
async fn an_export_holds_everything_the_person_took_part_in_and_nobody_elses_identity(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let w = world(&t).await;
    let export = t.get("/api/me/export", &w.eve_token).await;
    assert_eq!(export.status, StatusCode::OK, "{export:?}");
    assert!(export.headers["content-disposition"]
        .to_str()
        .expect("header")
        .starts_with("attachment"));
    let doc = &export.body;
    assert_eq!(doc["format"], "arosaje-export/1");
    assert_eq!(doc["subject"]["id"], w.eve.to_string());
    assert_eq!(doc["subject"]["email"], w.eve_email.as_str());
    let events = doc["events"].as_array().expect("events");
    assert_eq!(doc["event_count"].as_u64(), Some(events.len() as u64));
    let positions: Vec<i64> = events
        .iter()
        .filter_map(|e| e["position"].as_i64())
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "log order");
    let kinds: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["event_type"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "UserRegistered",
        "EmailVerified",
        "UserProfileUpdated",
        "PlantCreated",
        "PhotoAdded",
        "SittingRequested",
        "ApplicationSubmitted",
        "SitterAccepted",
        "SittingStarted",
        "CareReported",
        "SittingCompleted",
        "ReviewLeft",
        "AdviceGiven",
        "ConversationStarted",
        "MessageSent",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    let text = text_of(doc);
    // Her own data, opened: name, phone, her message, her application, her review, her plants.
    for own in [
        w.eve_name.as_str(),
        w.eve_phone.as_str(),
        w.eve_text.as_str(),
        "Olive tree",
        "Key under the blue pot",
        "says: perfect",
    ] {
        assert!(text.contains(own), "the export lacks {own}");
    }
    assert_eq!(doc["photos"].as_array().map(Vec::len), Some(1));
    assert!(doc["photos"][0]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("/api/photos/")));
    // The conversation: both sides' texts.
    assert!(text.contains("Noted, thanks!"));
    // Nobody else's identity: no e-mail, name or id of Sam, Olga or the botanist.
    for other in [
        w.sam_email.clone(),
        w.sam_name.clone(),
        w.sam.to_string(),
        w.olga.to_string(),
        w.botanist.to_string(),
    ] {
        assert!(!text.contains(&other), "the export shows {other}");
    }
    // Sam is one stable pseudonym throughout.
    let sitter = events
        .iter()
        .find(|e| e["event_type"] == "SitterAccepted")
        .map(|e| e["payload"]["SitterAccepted"]["sitter_id"].clone())
        .expect("sitter");
    let alias = sitter.as_str().expect("alias").to_string();
    assert!(alias.starts_with("person:"), "{alias}");
    let review_subject = events.iter().find(|e| {
        e["event_type"] == "ReviewLeft"
            && e["payload"]["ReviewLeft"]["subject_id"] == alias.as_str()
    });
    assert!(review_subject.is_some(), "the same pseudonym in the review");
    // Others' sealed words are not opened (the botanist's advice on her plant).
    let advice = events
        .iter()
        .find(|e| e["event_type"] == "AdviceGiven")
        .expect("advice");
    assert_eq!(
        advice["payload"]["AdviceGiven"]["body"],
        "[another person's data]"
    );
    // Credentials never leave.
    assert!(!text.contains("$argon2"));

    // Sam's export differs in its pseudonyms (another salt) and shows not Eve.
    let sams = ok(t.get("/api/me/export", &w.sam_token).await, StatusCode::OK).await;
    let sams_text = text_of(&sams.body);
    assert!(!sams_text.contains(&w.eve_email) && !sams_text.contains(&w.eve_name));
    assert!(!sams_text.contains(&w.eve.to_string()));
    assert!(sams_text.contains("Noted, thanks!") && sams_text.contains(&w.eve_text));

    // An admin exports on Eve's behalf; a user cannot export someone else.
    let (_, admin) = t.admin().await;
    let by_admin = ok(
        t.get(&format!("/api/admin/users/{}/export", w.eve), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_admin.body["subject"]["id"], w.eve.to_string());
    assert_eq!(
        t.get(
            &format!("/api/admin/users/{}/export", Uuid::new_v4()),
            &admin
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        t.get(&format!("/api/admin/users/{}/export", w.eve), &w.sam_token)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Each export is recorded: who, whose, which kind.
    t.app
        .projections
        .catch_up("access")
        .await
        .expect("catch up");
    let recorded: Vec<(Uuid, Option<Uuid>, String)> = sqlx::query_as(
        "SELECT accessor_id, subject_id, kind FROM monitoring.access_log \
          WHERE kind IN ('export', 'admin_export') ORDER BY accessed_at",
    )
    .fetch_all(&t.pool)
    .await
    .expect("access log");
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert_eq!(recorded[0], (w.eve, Some(w.eve), "export".to_string()));
    assert_eq!(recorded[1], (w.sam, Some(w.sam), "export".to_string()));
    assert_eq!(recorded[2].1, Some(w.eve));
    assert_eq!(recorded[2].2, "admin_export");
}

#[sqlx::test]
async fn auditor_queries_are_recorded_with_their_reason_and_expire_after_a_year(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (auditor_id, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let (subject, _) = t.verified_user(&unique_email("subject")).await;
    let listed = t
        .get(
            &format!("/api/audit/events?actor_id={subject}&reason=ticket%20GDPR-42"),
            &auditor,
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let history = t
        .get(
            &format!("/api/audit/aggregates/User/{subject}?reason=complaint%207"),
            &auditor,
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    t.app
        .projections
        .catch_up("access")
        .await
        .expect("catch up");
    type Row = (Uuid, String, String, Option<Uuid>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT accessor_id, accessor_role, kind, subject_id, reason FROM monitoring.access_log \
          WHERE accessor_id = $1 ORDER BY accessed_at",
    )
    .bind(auditor_id)
    .fetch_all(&t.pool)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            (
                auditor_id,
                "AUDITOR".to_string(),
                "audit_events".to_string(),
                Some(subject),
                Some("ticket GDPR-42".to_string())
            ),
            (
                auditor_id,
                "AUDITOR".to_string(),
                "audit_aggregate".to_string(),
                Some(subject),
                Some("complaint 7".to_string())
            ),
        ]
    );
    // The records are events: auditors read them, details opened, the subject only sealed in
    // the log itself.
    let raw: String = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_type = 'Access' ORDER BY global_position LIMIT 1",
    )
    .fetch_one(&t.pool)
    .await
    .expect("event");
    assert!(
        !raw.contains(&subject.to_string()) && !raw.contains("GDPR-42"),
        "{raw}"
    );
    let access = ok(
        t.get(
            "/api/audit/events?aggregate_type=Access&reason=review",
            &auditor,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let first = &access.body["items"][0];
    assert_eq!(
        first["payload"]["AccessRecorded"]["details"]["reason"],
        "ticket GDPR-42"
    );
    assert_eq!(first["metadata"]["actor_id"], auditor_id.to_string());

    // A record of a month more than a year ago: retention deletes that month's key and drops
    // its partition, and leaves this month's alone.
    let old_month = chrono::NaiveDate::from_ymd_opt(2025, 9, 1).expect("date");
    let details = arosaje::access::AccessDetails {
        kind: arosaje::access::AccessKind::AuditEvents,
        subject_id: Some(subject),
        reason: Some("old ticket".into()),
        query: json!({}),
    };
    let mut metadata = arosaje::events::Metadata::system("test");
    metadata.actor_id = Some(auditor_id);
    arosaje::access::record_in(&t.app, &metadata, &details, old_month)
        .await
        .expect("old record");
    t.app
        .projections
        .catch_up("access")
        .await
        .expect("catch up");
    let count = |month: chrono::NaiveDate| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM monitoring.access_log WHERE month = $1",
            )
            .bind(month)
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    let this_month = arosaje::access::month_of(chrono::Utc::now().date_naive());
    assert_eq!(count(old_month).await, 1);
    let current = count(this_month).await;
    assert!(current >= 3, "{current}");
    let expired = arosaje::access::expire(&t.app, chrono::Utc::now().date_naive())
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    assert_eq!(count(old_month).await, 0);
    assert_eq!(
        count(this_month).await,
        current,
        "this month's records stay"
    );
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT inhrelid::regclass::text FROM pg_inherits \
          WHERE inhparent = 'monitoring.access_log'::regclass ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .expect("partitions");
    assert_eq!(
        partitions,
        vec![format!(
            "monitoring.access_log_{}",
            this_month.format("%Y_%m")
        )]
    );
    let access = ok(
        t.get(
            "/api/audit/events?aggregate_type=Access&limit=100",
            &auditor,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let items = access.body["items"].as_array().expect("items");
    let old = items
        .iter()
        .find(|e| e["payload"]["AccessRecorded"]["month"] == "2025-09")
        .expect("the old record stays in the log");
    assert_eq!(old["payload"]["AccessRecorded"]["details"], "[erased]");
    assert!(items
        .iter()
        .filter(|e| e["payload"]["AccessRecorded"]["month"] != "2025-09")
        .all(|e| e["payload"]["AccessRecorded"]["details"]["kind"].is_string()));
    // The log is intact, and a rebuild of the access log (partitioned) equals the live one.
    rebuild_equals_live(&t).await;
}

#[sqlx::test]
async fn erased_people_appear_to_auditors_as_stable_pseudonyms(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    let email = unique_email("pseudo");
    let (id, token) = t.verified_user(&email).await;
    ok(t.create_plant(&token, "Cactus").await, StatusCode::CREATED).await;
    ok(t.delete("/api/me", &token).await, StatusCode::NO_CONTENT).await;
    let mut aliases = Vec::new();
    for _ in 0..2 {
        let page = ok(
            t.get("/api/audit/events?aggregate_type=Plant", &auditor)
                .await,
            StatusCode::OK,
        )
        .await;
        let text = page.body.to_string();
        assert!(!text.contains(&id.to_string()), "{text}");
        aliases.push(page.body["items"][0]["metadata"]["actor_id"].clone());
    }
    assert!(
        aliases[0]
            .as_str()
            .is_some_and(|a| a.starts_with("erased:")),
        "{aliases:?}"
    );
    assert_eq!(aliases[0], aliases[1], "stable across queries");
    let user = ok(
        t.get("/api/audit/events?event_type=UserErased", &auditor)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(user.body["items"][0]["aggregate_id"], aliases[0]);
    assert_eq!(
        user.body["items"][0]["payload"]["UserRegistered"],
        Value::Null
    );
}
