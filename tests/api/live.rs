//! Live updates over real WebSockets (`tokio-tungstenite` clients) against real servers on
//! loopback ports: two instances sharing PostgreSQL and Redis, tickets, fan-out to participants
//! only, typing, resume after reconnecting, and sockets closed when their session ends.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::helpers::{config, unique_email, TestApp};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Serves an app on a loopback port; returns its address.
pub async fn serve(app: arosaje::App) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = arosaje::api::router(app).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

pub async fn open_with_token(addr: SocketAddr, token: &str) -> Socket {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("connect")
        .0
}

async fn open_with_ticket(addr: SocketAddr, ticket: &str) -> Result<Socket, u16> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ticket={ticket}")).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("{err}"),
    }
}

/// The next text frame, as JSON (pings skipped); panics after 10 s.
pub async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("json"),
            Message::Close(frame) => {
                return json!({"type": "closed", "code": frame.map(|f| u16::from(f.code))})
            }
            _ => {}
        }
    }
}

pub async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// Waits until `from`'s typing reaches `to` over Redis: both instances' subscriptions work.
async fn typing_arrives(from: &mut Socket, to: &mut Socket, conversation: &str) {
    send(
        from,
        json!({"type": "typing", "conversation_id": conversation}),
    )
    .await;
    let frame = next(to).await;
    assert_eq!(frame["type"], "typing", "{frame}");
    assert_eq!(frame["data"]["conversation_id"], conversation);
}

async fn conversation(t: &TestApp, token: &str, others: &[Uuid]) -> String {
    let reply = t
        .post(
            "/api/conversations",
            Some(token),
            json!({"participant_ids": others}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["id"].as_str().expect("id").to_string()
}

async fn say(t: &TestApp, token: &str, conversation: &str, body: &str) -> i64 {
    let reply = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(token),
            json!({"body": body}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["position"].as_i64().expect("position")
}

#[sqlx::test]
async fn messages_reach_participants_on_another_instance_in_order_and_no_one_else(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let other = arosaje::App::with_pool(config(), t.pool.clone())
        .await
        .expect("instance B");
    let _b_tasks = other.start(false);
    let b = serve(other).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let (_, cam) = t.user(&unique_email("cam")).await;
    let talk = conversation(&t, &ana, &[ben_id]).await;

    // A browser's way in: a ticket, good once.
    let ticket = t.post("/api/ws/ticket", Some(&ana), json!({})).await;
    assert_eq!(ticket.status, StatusCode::CREATED, "{ticket:?}");
    let ticket = ticket.body["ticket"].as_str().expect("ticket").to_string();
    let mut ana_on_a = open_with_ticket(a, &ticket)
        .await
        .expect("the ticket opens the socket");
    assert_eq!(
        open_with_ticket(a, &ticket).await.err(),
        Some(401),
        "a ticket works once"
    );
    assert_eq!(open_with_ticket(b, "not-a-ticket").await.err(), Some(401));
    let mut ben_on_b = open_with_token(b, &ben).await;
    let mut cam_on_b = open_with_token(b, &cam).await;
    typing_arrives(&mut ana_on_a, &mut ben_on_b, &talk).await;
    typing_arrives(&mut ben_on_b, &mut ana_on_a, &talk).await;

    let mut positions = Vec::new();
    for body in ["one", "two", "three"] {
        positions.push(say(&t, &ana, &talk, body).await);
    }
    for (body, position) in ["one", "two", "three"].iter().zip(&positions) {
        let frame = next(&mut ben_on_b).await;
        assert_eq!(frame["type"], "message.created", "{frame}");
        assert_eq!(frame["data"]["body"], *body);
        assert_eq!(frame["position"], *position);
    }
    // Cam, on the same instance as Ben, got none of it: the first frame Cam sees is the answer
    // to a ping, not a message.
    send(&mut cam_on_b, json!({"type": "ping"})).await;
    assert_eq!(next(&mut cam_on_b).await["type"], "pong");
    // Operators see the sockets and the delivery latency (commit to frame sent).
    let metrics = t
        .call(axum::http::Method::GET, "/metrics", None, None)
        .await;
    let text = metrics.body.as_str().unwrap_or("");
    assert!(text.contains("websocket_delivery_seconds"), "{text}");
    assert!(text.contains("websocket_connections"));
}

#[sqlx::test]
async fn reconnecting_with_a_position_delivers_exactly_what_was_missed(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let talk = conversation(&t, &ana, &[ben_id]).await;
    let mut ben_socket = open_with_token(a, &ben).await;
    let mut ana_socket = open_with_token(a, &ana).await;
    typing_arrives(&mut ana_socket, &mut ben_socket, &talk).await;
    let first = say(&t, &ana, &talk, "first").await;
    assert_eq!(next(&mut ben_socket).await["position"], first);
    ben_socket.close(None).await.expect("close");

    let second = say(&t, &ana, &talk, "second").await;
    let third = say(&t, &ana, &talk, "third").await;
    // Reconnect once both were published live (to no socket of Ben's): otherwise the new
    // socket could get "third" live before it asks to resume (frames before `resume` are live).
    fanned_out(&t).await;
    let mut ben_socket = open_with_token(a, &ben).await;
    send(&mut ben_socket, json!({"type": "resume", "after": first})).await;
    let missed = [next(&mut ben_socket).await, next(&mut ben_socket).await];
    assert_eq!(missed[0]["position"], second);
    assert_eq!(missed[0]["data"]["body"], "second");
    assert_eq!(missed[1]["position"], third);
    // Then live, and nothing twice.
    typing_arrives(&mut ana_socket, &mut ben_socket, &talk).await;
    let fourth = say(&t, &ana, &talk, "fourth").await;
    assert_eq!(next(&mut ben_socket).await["position"], fourth);
    send(&mut ben_socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ben_socket).await["type"], "pong");
}

#[sqlx::test]
async fn a_socket_closes_when_its_session_ends(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let (_, ben) = t.user(&unique_email("ben")).await;
    let mut socket = open_with_token(a, &ben).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    let out = t.post("/api/auth/logout", Some(&ben), json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let closed = next(&mut socket).await;
    assert_eq!(closed, json!({"type": "closed", "code": 4001}));
    // And the ended session opens no new socket.
    let mut request = format!("ws://{a}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ben}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[sqlx::test]
async fn sitting_changes_reports_and_advice_reach_its_owner_and_sitter_live(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let (_, stranger) = t.verified_user(&unique_email("stranger")).await;
    let body = crate::sittings::sitting_body(&plants, 0, 2, crate::sittings::LYON, "Lyon");
    let sitting = crate::sittings::request(&t, &owner, body).await.body["id"]
        .as_str()
        .expect("sitting")
        .to_string();
    let mut owner_socket = open_with_token(a, &owner).await;
    let mut sitter_socket = open_with_token(a, &sitter).await;
    let mut stranger_socket = open_with_token(a, &stranger).await;
    // Sockets registered: each answers a ping.
    for socket in [&mut owner_socket, &mut sitter_socket, &mut stranger_socket] {
        send(socket, json!({"type": "ping"})).await;
        assert_eq!(next(socket).await["type"], "pong");
    }
    let url = |action: &str| format!("/api/sittings/{sitting}/{action}");
    t.post(&url("applications"), Some(&sitter), json!({})).await;
    let applied = next(&mut owner_socket).await;
    assert_eq!(
        (applied["type"].as_str(), applied["data"]["event"].as_str()),
        (Some("sitting.updated"), Some("ApplicationSubmitted"))
    );
    t.post(
        &url("accept"),
        Some(&owner),
        json!({"sitter_id": sitter_id}),
    )
    .await;
    for socket in [&mut owner_socket, &mut sitter_socket] {
        let frame = next(socket).await;
        assert_eq!(
            (frame["type"].as_str(), frame["data"]["status"].as_str()),
            (Some("sitting.updated"), Some("accepted")),
            "{frame}"
        );
    }
    t.post(&url("start"), Some(&sitter), json!({})).await;
    t.post(
        &url("reports"),
        Some(&sitter),
        json!({"plant_id": plants[0], "note": "Watered"}),
    )
    .await;
    for socket in [&mut owner_socket, &mut sitter_socket] {
        assert_eq!(next(socket).await["data"]["status"], "in_progress");
        let report = next(socket).await;
        assert_eq!(report["type"], "report.created", "{report}");
        assert_eq!(report["data"]["plant_id"], plants[0].as_str());
    }
    send(&mut stranger_socket, json!({"type": "ping"})).await;
    assert_eq!(
        next(&mut stranger_socket).await["type"],
        "pong",
        "the stranger heard nothing"
    );
    // Advice on the plant reaches its owner and its sitter, and again no one else.
    let (_, botanists) = crate::advice::botanists(&t, 1).await;
    let given = crate::advice::advise(
        &t,
        &botanists[0].1,
        &plants[0],
        json!({"body": "Less water", "sitting_id": sitting, "priority": "urgent"}),
    )
    .await;
    assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
    for socket in [&mut owner_socket, &mut sitter_socket] {
        let advice = next(socket).await;
        assert_eq!(advice["type"], "advice.created", "{advice}");
        assert_eq!(advice["data"]["advice_id"], given.body["id"]);
        assert_eq!(advice["data"]["plant_id"], plants[0].as_str());
        assert_eq!(advice["data"]["priority"], "urgent");
        assert_eq!(advice["position"], given.body["position"]);
    }
    send(&mut stranger_socket, json!({"type": "ping"})).await;
    assert_eq!(
        next(&mut stranger_socket).await["type"],
        "pong",
        "the stranger heard of no advice"
    );
}

/// Waits until the fan-out projector published every event appended so far, so that a socket
/// opened now gets no frame of an earlier event.
pub async fn fanned_out(t: &TestApp) {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&t.pool)
        .await
        .expect("last position");
    let last = last.unwrap_or(0);
    crate::helpers::eventually("fan-out published", Duration::from_secs(20), || {
        let app = t.app.clone();
        async move {
            app.projections
                .checkpoint("fanout")
                .is_some_and(|c| c.global_position >= last)
        }
    })
    .await;
}

/// A participant's presence as `viewer`'s conversation list shows it.
async fn presence_seen(t: &TestApp, viewer: &str, who: Uuid) -> Value {
    let reply = t.get("/api/conversations", viewer).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["items"][0]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .find(|p| p["id"] == who.to_string())
        .cloned()
        .expect("participant")
}

#[sqlx::test]
async fn presence_shows_only_once_both_have_written(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let (ana_id, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let talk = conversation(&t, &ana, &[ben_id]).await;
    let mut socket = open_with_token(a, &ben).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    // Ben is online, but Ana merely opened a conversation with him: she sees nothing of it,
    // nor after writing to him alone.
    for _ in 0..2 {
        let hidden = presence_seen(&t, &ana, ben_id).await;
        assert!(hidden["online"].is_null(), "{hidden}");
        assert!(hidden["last_seen"].is_null(), "{hidden}");
        say(&t, &ana, &talk, "bonjour").await;
    }
    // Her own presence is hers to see.
    assert_eq!(presence_seen(&t, &ana, ana_id).await["online"], false);
    // Once Ben answered, they see each other.
    say(&t, &ben, &talk, "bonjour Ana").await;
    let shown = presence_seen(&t, &ana, ben_id).await;
    assert_eq!(shown["online"], true, "{shown}");
    assert!(shown["last_seen"].is_string(), "{shown}");
    let back = presence_seen(&t, &ben, ana_id).await;
    assert_eq!(back["online"], false, "{back}");
}

#[sqlx::test]
async fn owner_and_sitter_see_each_others_presence_while_the_sitting_is_theirs(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let a = serve(t.app.clone()).await;
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (sitter_id, sitter) = t.verified_user(&unique_email("sitter")).await;
    let created = crate::sittings::request(
        &t,
        &owner,
        crate::sittings::sitting_body(&plants, 1, 3, crate::sittings::LYON, "Lyon"),
    )
    .await;
    let sitting = created.body["id"].as_str().expect("id").to_string();
    crate::sittings::act(&t, &sitter, &sitting, "applications", json!({})).await;
    conversation(&t, &owner, &[sitter_id]).await;
    let mut socket = open_with_token(a, &sitter).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    // An applicant is still a stranger.
    assert!(presence_seen(&t, &owner, sitter_id).await["online"].is_null());
    let accepted = crate::sittings::act(
        &t,
        &owner,
        &sitting,
        "accept",
        json!({"sitter_id": sitter_id}),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    assert_eq!(presence_seen(&t, &owner, sitter_id).await["online"], true);
    let cancelled = crate::sittings::act(
        &t,
        &owner,
        &sitting,
        "cancel",
        json!({"reason": "plans changed"}),
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert!(presence_seen(&t, &owner, sitter_id).await["online"].is_null());
}

#[sqlx::test]
async fn after_redis_restarts_open_sockets_are_told_and_resume_loses_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (t, mut redis, port) = crate::limits::app_on_own_redis(options, connect).await;
    let a = serve(t.app.clone()).await;
    let ana_email = unique_email("ana");
    let ben_email = unique_email("ben");
    let (_, ana) = t.user(&ana_email).await;
    let (ben_id, ben) = t.user(&ben_email).await;
    let talk = conversation(&t, &ana, &[ben_id]).await;
    let mut socket = open_with_token(a, &ben).await;
    let mut ana_socket = open_with_token(a, &ana).await;
    typing_arrives(&mut ana_socket, &mut socket, &talk).await;
    let seen = say(&t, &ana, &talk, "before").await;
    assert_eq!(next(&mut socket).await["position"], seen);

    redis.stop();
    let redis = crate::limits::OwnRedis::start(port);
    redis.ready().await;
    // Told: a resync (sessions kept by a persistent Redis) or, as here (this Redis keeps nothing
    // on disk, so the session is gone), the close of an ended session.
    let told = next(&mut socket).await;
    assert!(
        told["type"] == "resync" || told == json!({"type": "closed", "code": 4001}),
        "{told}"
    );
    // Back in (once the app's Redis connection has come back), and what was sent meanwhile
    // comes with resume.
    let log_in = |email: String| {
        let t = &t;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let reply = t.login(&email, crate::helpers::PASSWORD).await;
                if let Some(token) = reply.body["access_token"].as_str() {
                    return token.to_string();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no login: {reply:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ana = log_in(ana_email.clone()).await;
    let ben = log_in(ben_email.clone()).await;
    let meanwhile = say(&t, &ana, &talk, "meanwhile").await;
    let mut socket = open_with_token(a, &ben).await;
    send(&mut socket, json!({"type": "resume", "after": seen})).await;
    let missed = next(&mut socket).await;
    assert_eq!(missed["position"], meanwhile, "{missed}");
    assert_eq!(missed["data"]["body"], "meanwhile");
    drop(redis);
}
