//! A home's secrets (the exact place, the instructions) only for whom and while they need them:
//! the owner; the accepted sitter while the sitting is accepted or in progress; an admin with a
//! recorded reason. Not for a former sitter, a losing applicant, the query cache or a stored
//! idempotent answer.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{unique_email, Reply, TestApp};
use crate::sittings::{act, owner_with_plants, request, sitting_body, LYON};

const INSTRUCTIONS: &str = "4812";
const EXACT: [&str; 2] = ["45.757814", "4.832011"];

/// Whether a text shows the home: the door code or the exact point.
fn shows_home(text: &str) -> bool {
    text.contains(INSTRUCTIONS) || EXACT.iter().any(|e| text.contains(e))
}

fn home(reply: &Reply) {
    assert!(reply.status.is_success(), "{reply:?}");
    assert_eq!(reply.body["location"]["approximate"], false, "{reply:?}");
    assert_eq!(reply.body["location"]["lat"].as_f64(), Some(LYON.0));
    assert!(
        reply.body["instructions"]
            .as_str()
            .is_some_and(|i| i.contains(INSTRUCTIONS)),
        "{reply:?}"
    );
}

fn public(reply: &Reply) {
    assert!(reply.status.is_success(), "{reply:?}");
    assert!(!shows_home(&reply.body.to_string()), "{reply:?}");
    assert_eq!(reply.body["location"]["approximate"], true, "{reply:?}");
    assert!(reply.body["instructions"].is_null(), "{reply:?}");
}

fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("id").to_string()
}

/// The caller's applications, as (sitting id, status).
async fn applications(t: &TestApp, token: &str) -> Vec<(String, String)> {
    let mine = t.get("/api/me/applications", token).await;
    assert_eq!(mine.status, StatusCode::OK, "{mine:?}");
    mine.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| {
            (
                a["sitting_id"].as_str().unwrap_or("").to_string(),
                a["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[sqlx::test]
async fn the_home_goes_to_the_owner_the_sitter_in_care_and_an_admin_with_a_reason(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, loser) = t.verified_user(&unique_email("loser")).await;
    let sitting = id_of(&request(&t, &owner, sitting_body(&plants, 0, 3, LYON, "Lyon")).await);
    let url = format!("/api/sittings/{sitting}");
    for token in [&sitter, &loser] {
        let applied = act(&t, token, &sitting, "applications", json!({})).await;
        assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
        public(&applied);
        public(&t.get(&url, token).await);
    }
    assert_eq!(
        applications(&t, &loser).await,
        vec![(sitting.clone(), "pending".to_string())]
    );

    let accepted = act(
        &t,
        &owner,
        &sitting,
        "accept",
        json!({"sitter_id": sitter_id}),
    )
    .await;
    home(&accepted);
    home(&t.get(&url, &owner).await);
    home(&t.get(&url, &sitter).await);
    // The applicant who was not chosen no longer follows the sitting.
    let gone = t.get(&url, &loser).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{gone:?}");
    assert_eq!(
        applications(&t, &loser).await,
        vec![(sitting.clone(), "not_selected".to_string())]
    );
    assert_eq!(
        applications(&t, &sitter).await,
        vec![(sitting.clone(), "accepted".to_string())]
    );
    let reports = t.get(&format!("{url}/reports"), &loser).await;
    assert_eq!(reports.status, StatusCode::NOT_FOUND, "{reports:?}");

    // An admin sees the public view, and the home only for a reason, which is recorded.
    public(&t.get(&url, &admin).await);
    let too_long = t
        .get(&format!("{url}?reason={}", "x".repeat(501)), &admin)
        .await;
    assert_eq!(
        too_long.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{too_long:?}"
    );
    home(
        &t.get(&format!("{url}?reason=ticket%20SUP-7%20key%20lost"), &admin)
            .await,
    );
    t.app
        .projections
        .catch_up("access")
        .await
        .expect("catch up");
    let recorded: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM monitoring.access_log WHERE kind = 'sitting_home' \
          AND query ->> 'sitting_id' = $1",
    )
    .bind(&sitting)
    .fetch_all(&t.pool)
    .await
    .expect("access log");
    assert_eq!(recorded, vec!["ticket SUP-7 key lost".to_string()]);
    // A reason opens nothing for anyone else.
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let curious = t.get(&format!("{url}?reason=curious"), &stranger).await;
    assert_eq!(curious.status, StatusCode::NOT_FOUND, "{curious:?}");

    // Once the sitting is over, the former sitter sees it as history.
    assert_eq!(
        act(&t, &sitter, &sitting, "start", json!({})).await.status,
        StatusCode::OK
    );
    home(&t.get(&url, &sitter).await);
    let completed = act(&t, &owner, &sitting, "complete", json!({})).await;
    home(&completed);
    let history = t.get(&url, &sitter).await;
    public(&history);
    assert_eq!(history.body["status"], "completed");
    assert_eq!(history.body["sitter_id"], sitter_id.to_string());
    let listed = t.get("/api/sittings?role=sitter", &sitter).await;
    assert_eq!(
        listed.body["items"][0]["id"],
        sitting.as_str(),
        "{listed:?}"
    );
    assert!(!shows_home(&listed.body.to_string()), "{listed:?}");
    home(&t.get(&url, &owner).await);
}

#[sqlx::test]
async fn a_sitter_whose_sitting_was_cancelled_no_longer_sees_the_home(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, owner, plants) = owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let sitting = id_of(&request(&t, &owner, sitting_body(&plants, 1, 3, LYON, "Lyon")).await);
    act(&t, &sitter, &sitting, "applications", json!({})).await;
    home(
        &act(
            &t,
            &owner,
            &sitting,
            "accept",
            json!({"sitter_id": sitter_id}),
        )
        .await,
    );
    let cancelled = act(
        &t,
        &owner,
        &sitting,
        "cancel",
        json!({"reason": "plans changed"}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    let seen = t.get(&format!("/api/sittings/{sitting}"), &sitter).await;
    public(&seen);
    assert_eq!(seen.body["status"], "cancelled");
    assert_eq!(seen.body["cancel_reason"], "plans changed");
    let listed = t.get("/api/sittings?role=sitter", &sitter).await;
    assert_eq!(
        listed.body["items"][0]["id"],
        sitting.as_str(),
        "{listed:?}"
    );
    assert!(!shows_home(&listed.body.to_string()), "{listed:?}");
}

/// Every value the query cache holds for `cache:sittings*` keys.
async fn cached_sittings() -> Vec<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("cache:sittings*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut values = Vec::new();
    for key in keys {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        values.push(String::from_utf8_lossy(&value.unwrap_or_default()).into_owned());
    }
    values
}

#[sqlx::test]
async fn neither_the_cache_nor_a_stored_idempotent_answer_holds_a_home(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (owner_id, owner, plants) = owner_with_plants(&t, 1).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    // A city of its own, so that this test's cached pages are told apart from others'.
    let city = format!("Lyon {}", Uuid::new_v4());
    let key = Uuid::new_v4().to_string();
    let create = || {
        Request::post("/api/sittings")
            .header(header::AUTHORIZATION, format!("Bearer {owner}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &key)
            .body(Body::from(
                sitting_body(&plants, 0, 3, LYON, &city).to_string(),
            ))
            .expect("request")
    };
    let first = t.raw(create()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    home(&Reply {
        status: StatusCode::OK,
        body: first.body.clone(),
        headers: Default::default(),
    });
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT body FROM idempotency_keys WHERE user_id = $1 AND key = $2")
            .bind(owner_id)
            .bind(&key)
            .fetch_one(&t.pool)
            .await
            .expect("stored answer");
    let stored = String::from_utf8_lossy(&stored).into_owned();
    assert!(stored.contains(&id_of(&first)), "{stored}");
    assert!(
        !shows_home(&stored),
        "stored answer holds the home: {stored}"
    );
    let replay = t.raw(create()).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{replay:?}");
    assert_eq!(
        replay
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(replay.body["id"], first.body["id"]);
    assert!(!shows_home(&replay.body.to_string()), "{replay:?}");

    // Browse (cached), by the owner and by a stranger: the public view, and so is the cache.
    for token in [&owner, &stranger] {
        let browse = t
            .get(
                &format!("/api/sittings?near={},{}&radius_km=5", LYON.0, LYON.1),
                token,
            )
            .await;
        assert_eq!(browse.status, StatusCode::OK, "{browse:?}");
        let items: Vec<&Value> = browse.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|s| s["location"]["city"] == city.as_str())
            .collect();
        assert_eq!(items.len(), 1, "{browse:?}");
        assert!(!shows_home(&items[0].to_string()), "{items:?}");
    }
    let cached = cached_sittings().await;
    let ours: Vec<&String> = cached.iter().filter(|v| v.contains(&city)).collect();
    assert!(!ours.is_empty(), "the browse was cached: {cached:?}");
    for value in ours {
        assert!(!shows_home(value), "the cache holds the home: {value}");
    }
    // The owner's own list still shows the home.
    let mine = t.get("/api/sittings?role=owner", &owner).await;
    assert!(mine.body.to_string().contains(INSTRUCTIONS), "{mine:?}");
}
