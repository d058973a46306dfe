//! Conversations over HTTP: who may read and write, unread counts and read marks, pages, search
//! with stemming in the caller's conversations only, texts sealed in the log, and many people
//! writing into one conversation at once.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::{unique_email, Reply, TestApp};

async fn start(t: &TestApp, token: &str, others: &[Uuid]) -> Reply {
    t.post(
        "/api/conversations",
        Some(token),
        json!({"participant_ids": others}),
    )
    .await
}

async fn send(t: &TestApp, token: &str, conversation: &str, body: &str) -> Reply {
    t.post(
        &format!("/api/conversations/{conversation}/messages"),
        Some(token),
        json!({"body": body}),
    )
    .await
}

fn id(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("id").to_string()
}

#[sqlx::test]
async fn participants_talk_read_and_see_unread_counts_and_no_one_else_does(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let (_, cam) = t.user(&unique_email("cam")).await;
    let started = start(&t, &ana, &[ben_id]).await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    assert_eq!(
        started.body["participants"].as_array().map(Vec::len),
        Some(2)
    );
    let conversation = id(&started);

    let sent = send(
        &t,
        &ben,
        &conversation,
        "Bonjour ! Les plantes sont arrosées.",
    )
    .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    assert!(sent.body["position"].as_i64().is_some());
    let mine = t.get("/api/conversations", &ana).await;
    assert_eq!(mine.body["items"][0]["unread"], 1, "{mine:?}");
    assert_eq!(
        mine.body["items"][0]["last_message"]["body"],
        "Bonjour ! Les plantes sont arrosées."
    );
    let theirs = t.get("/api/conversations", &ben).await;
    assert_eq!(
        theirs.body["items"][0]["unread"], 0,
        "senders have read what they wrote"
    );

    let read = t
        .post(
            &format!("/api/conversations/{conversation}/read"),
            Some(&ana),
            json!({"up_to": id(&sent)}),
        )
        .await;
    assert_eq!(read.status, StatusCode::NO_CONTENT, "{read:?}");
    assert_eq!(
        t.get("/api/conversations", &ana).await.body["items"][0]["unread"],
        0
    );

    // Someone else: nothing to see, nothing to write, nothing to mark.
    let url = format!("/api/conversations/{conversation}/messages");
    assert_eq!(t.get(&url, &cam).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&t, &cam, &conversation, "hi").await.status,
        StatusCode::NOT_FOUND
    );
    let marked = t
        .post(
            &format!("/api/conversations/{conversation}/read"),
            Some(&cam),
            json!({"up_to": id(&sent)}),
        )
        .await;
    assert_eq!(marked.status, StatusCode::NOT_FOUND);
    assert_eq!(
        t.get("/api/conversations", &cam).await.body["items"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    // Texts are sealed in the log.
    let payloads: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM events WHERE event_type = 'MessageSent'")
            .fetch_all(&t.pool)
            .await
            .expect("events");
    assert!(!payloads.is_empty() && payloads.iter().all(|p| !p.to_string().contains("arrosées")));
}

#[sqlx::test]
async fn who_may_start_a_conversation(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (ana_id, ana) = t.user(&unique_email("ana")).await;
    let invalid = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
        assert!(reply.body["error"]["fields"]
            .get("participant_ids")
            .is_some());
    };
    invalid(&start(&t, &ana, &[]).await);
    invalid(&start(&t, &ana, &[ana_id]).await);
    invalid(&start(&t, &ana, &[Uuid::now_v7()]).await);

    // A sitting's conversation: its owner and its accepted sitter, no one else.
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let body = crate::sittings::sitting_body(&plants, 1, 2, crate::sittings::LYON, "Lyon");
    let sitting = crate::sittings::request(&t, &owner, body).await.body["id"].clone();
    let too_early = t
        .post(
            "/api/conversations",
            Some(&sitter),
            json!({"participant_ids": [ana_id], "sitting_id": sitting}),
        )
        .await;
    assert_eq!(
        (too_early.status, too_early.code()),
        (StatusCode::FORBIDDEN, "not_the_sittings_parties")
    );
    let sitting_id = sitting.as_str().expect("id");
    t.post(
        &format!("/api/sittings/{sitting_id}/applications"),
        Some(&sitter),
        json!({}),
    )
    .await;
    t.post(
        &format!("/api/sittings/{sitting_id}/accept"),
        Some(&owner),
        json!({"sitter_id": sitter_id}),
    )
    .await;
    let owner_id = t.get("/api/me", &owner).await.body["id"].clone();
    let started = t
        .post(
            "/api/conversations",
            Some(&sitter),
            json!({"participant_ids": [owner_id], "sitting_id": sitting}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    assert_eq!(started.body["sitting_id"], sitting);
    let intruder = t
        .post(
            "/api/conversations",
            Some(&ana),
            json!({"participant_ids": [owner_id], "sitting_id": sitting}),
        )
        .await;
    assert_eq!(intruder.status, StatusCode::FORBIDDEN, "{intruder:?}");
}

#[sqlx::test]
async fn messages_come_newest_first_in_pages(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, _) = t.user(&unique_email("ben")).await;
    let conversation = id(&start(&t, &ana, &[ben_id]).await);
    for i in 0..5 {
        assert_eq!(
            send(&t, &ana, &conversation, &format!("message {i}"))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/conversations/{conversation}/messages?limit=2&cursor={c}"),
            None => format!("/api/conversations/{conversation}/messages?limit=2"),
        };
        let page = t.get(&url, &ana).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        for item in page.body["items"].as_array().expect("items") {
            seen.push(item["body"].as_str().unwrap_or("").to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "message 4",
            "message 3",
            "message 2",
            "message 1",
            "message 0"
        ]
    );
}

#[sqlx::test]
async fn search_finds_stemmed_words_in_the_callers_conversations_only(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let (cam_id, _) = t.user(&unique_email("cam")).await;
    let ours = id(&start(&t, &ana, &[ben_id]).await);
    let theirs = id(&start(&t, &ben, &[cam_id]).await);
    send(&t, &ben, &ours, "J'ai arrosé les fougères ce matin").await;
    send(&t, &ben, &ours, "The cactus was watered yesterday").await;
    send(
        &t,
        &ben,
        &theirs,
        "Il faut arroser les fougères de Cam aussi",
    )
    .await;
    let search = |q: &str| format!("/api/messages/search?q={}", q.replace(' ', "%20"));
    let found = t.get(&search("arroser"), &ana).await;
    assert_eq!(found.status, StatusCode::OK, "{found:?}");
    let bodies: Vec<&str> = found.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        ["J'ai arrosé les fougères ce matin"],
        "French stemming, own conversations"
    );
    let english = t.get(&search("watering"), &ana).await;
    assert_eq!(
        english.body["items"][0]["body"],
        "The cactus was watered yesterday"
    );
    let for_ben = t.get(&search("fougère"), &ben).await;
    assert_eq!(
        for_ben.body["items"].as_array().map(Vec::len),
        Some(2),
        "{for_ben:?}"
    );
    let none = t.get(&search("tomates"), &ana).await;
    assert_eq!(none.body["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        t.get("/api/messages/search?q=", &ana).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[sqlx::test]
async fn eight_people_writing_at_once_lose_nothing_and_get_no_conflict(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let mut people = Vec::new();
    for i in 0..8 {
        people.push(t.user(&unique_email(&format!("p{i}"))).await);
    }
    let others: Vec<Uuid> = people[1..].iter().map(|(id, _)| *id).collect();
    let conversation = id(&start(&t, &people[0].1, &others).await);
    let mut writers = Vec::new();
    for (i, (_, token)) in people.iter().enumerate() {
        let (t, token, conversation) = (&t, token.clone(), conversation.clone());
        writers.push(async move {
            let mut statuses = Vec::new();
            for n in 0..10 {
                statuses.push(
                    send(t, &token, &conversation, &format!("{i}:{n}"))
                        .await
                        .status,
                );
            }
            statuses
        });
    }
    let statuses: Vec<StatusCode> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messaging.messages WHERE conversation_id = $1")
            .bind(conversation.parse::<Uuid>().expect("uuid"))
            .fetch_one(&t.pool)
            .await
            .expect("count");
    assert_eq!(count, 80);
    let conflicts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events WHERE aggregate_type = 'Message' \
          GROUP BY aggregate_id HAVING count(*) > 1) twice",
    )
    .fetch_one(&t.pool)
    .await
    .expect("count");
    assert_eq!(conflicts, 0, "each message is one event of its own stream");
}

#[sqlx::test]
async fn retention_makes_an_old_text_unreadable_everywhere_and_keeps_the_message(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, _) = t.user(&unique_email("ben")).await;
    let talk = id(&start(&t, &ana, &[ben_id]).await);
    let old = send(&t, &ana, &talk, "Le code du portail est 4812").await;
    let recent = send(&t, &ana, &talk, "Les tomates sont mûres").await;
    let old_id: Uuid = id(&old).parse().expect("uuid");
    // The first one was sent 31 days ago.
    sqlx::query(
        "UPDATE message_keys SET created_at = now() - interval '31 days' WHERE message_id = $1",
    )
    .bind(old_id)
    .execute(&t.pool)
    .await
    .expect("backdate");
    let expired =
        arosaje::messaging::expire_texts(&t.app, std::time::Duration::from_secs(30 * 86_400))
            .await
            .expect("retention");
    assert_eq!(expired, 1);
    assert_eq!(
        arosaje::messaging::expire_texts(&t.app, std::time::Duration::from_secs(30 * 86_400))
            .await
            .expect("again"),
        0,
        "running it again (or on another instance) changes nothing"
    );

    // The read model, the search index and the log: the text is gone, the message stays.
    let page = t
        .get(&format!("/api/conversations/{talk}/messages"), &ana)
        .await;
    let items = page.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["id"], old.body["id"]);
    assert!(items[1]["body"].is_null(), "{page:?}");
    assert_eq!(items[0]["body"], "Les tomates sont mûres");
    let found = t.get("/api/messages/search?q=portail", &ana).await;
    assert_eq!(
        found.body["items"].as_array().map(Vec::len),
        Some(0),
        "{found:?}"
    );
    assert!(matches!(
        t.app.message_keys.cipher(old_id).await,
        Err(arosaje::events::crypto::CryptoError::KeyMissing(_))
    ));
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Message' AND aggregate_id = $1",
    )
    .bind(old_id.to_string())
    .fetch_one(&t.pool)
    .await
    .expect("the event stays");
    assert!(!payload.to_string().contains("4812"));
    assert!(recent.body["body"].is_string());
}

#[sqlx::test]
async fn the_retention_job_sweeps_stored_answers_past_their_day(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (ana_id, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, _) = t.user(&unique_email("ben")).await;
    let talk = id(&start(&t, &ana, &[ben_id]).await);
    for key in ["old-key", "new-key"] {
        let request = axum::http::Request::post(format!("/api/conversations/{talk}/messages"))
            .header("authorization", format!("Bearer {ana}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(axum::body::Body::from(
                json!({"body": format!("Le code du portail ({key}) est 4812")}).to_string(),
            ))
            .expect("request");
        assert_eq!(t.raw(request).await.status, StatusCode::CREATED);
    }
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' \
          WHERE user_id = $1 AND key = 'old-key'",
    )
    .bind(ana_id)
    .execute(&t.pool)
    .await
    .expect("backdate");
    arosaje::messaging::retain(&t.app).await;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT key FROM idempotency_keys WHERE user_id = $1 ORDER BY key")
            .bind(ana_id)
            .fetch_all(&t.pool)
            .await
            .expect("keys");
    assert_eq!(left, vec!["new-key".to_string()]);
}
