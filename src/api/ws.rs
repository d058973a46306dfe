//! Live updates over WebSocket: `GET /ws`, authenticated before the upgrade by a single-use
//! ticket (`POST /api/ws/ticket`: browsers cannot set headers on a WebSocket, and tokens never go
//! in URLs) or by the bearer header.
//!
//! Server -> client frames `{"type", "position"?, "data"}`: `message.created`, `message.read`,
//! `sitting.updated`, `report.created` (from the `fanout` projector through Redis, see
//! `infra::hub`), `typing`, `pong`, and `resync` (this instance lost Redis for a while: send
//! `resume`). Client ->
//! server: `{"type": "ping"}`, `{"type": "typing", "conversation_id"}`,
//! `{"type": "resume", "after": <position>}` (what the user missed after that position, from the
//! read model, in order; then live frames, none twice: frames at or below the last position sent
//! are dropped). The socket closes with 4001 when its session ends (checked every second) and with
//! 4008 when the client is too slow to take its frames.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::ErrorBody;
use super::error::ApiError;
use super::token::AuthUser;
use crate::projections::fanout::frame;
use crate::App;

/// How long a ticket stays valid.
pub const TICKET_SECS: u64 = 30;
/// Closed because the session ended.
pub const CLOSE_SESSION_ENDED: u16 = 4001;
/// Closed because the client did not take its frames fast enough.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Most messages sent back on one `resume`; a client further behind pages the REST API.
const RESUME_LIMIT: i64 = 1000;

pub fn ticket_router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(issue_ticket))
}

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(socket))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Open `GET /ws?ticket=...` with it, once, within `expires_in` seconds.
    pub ticket: String,
    pub expires_in: u64,
}

fn ticket_key(ticket: &str) -> String {
    let digest = Sha256::digest(ticket.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("ws_ticket:{hex}")
}

/// A single-use ticket to open the WebSocket, bound to the caller's user and session.
#[utoipa::path(post, path = "/ticket", tag = "live", security(("bearer" = [])),
    responses((status = 201, description = "A ticket, valid 30 s, once", body = Ticket)))]
async fn issue_ticket(
    State(app): State<App>,
    auth: AuthUser,
) -> Result<(StatusCode, Json<Ticket>), ApiError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let ticket: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (key, value) = (
        ticket_key(&ticket),
        format!("{}:{}", auth.user_id, auth.session_id),
    );
    app.redis
        .call(|mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(TICKET_SECS)
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Ticket {
            ticket,
            expires_in: TICKET_SECS,
        }),
    ))
}

/// Who opens a socket: from a ticket (used up here) or the bearer header.
pub struct Caller {
    user_id: Uuid,
    session_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SocketParams {
    /// From `POST /api/ws/ticket` (browsers); other clients may send the bearer header instead.
    ticket: Option<String>,
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let ticket = axum::extract::Query::<SocketParams>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.ticket)
            .filter(|t| !t.is_empty());
        let Some(ticket) = ticket else {
            let auth = AuthUser::from_request_parts(parts, app).await?;
            return Ok(Caller {
                user_id: auth.user_id,
                session_id: auth.session_id,
            });
        };
        let key = ticket_key(&ticket);
        let redeemed: Option<String> = app
            .redis
            .call(|mut conn| async move {
                redis::cmd("GETDEL")
                    .arg(key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await?;
        let invalid =
            || ApiError::unauthorized("invalid_ticket", "this ticket is unknown, used or expired");
        let (user, session) = redeemed
            .as_deref()
            .and_then(|v| v.split_once(':'))
            .and_then(|(u, s)| Some((u.parse::<Uuid>().ok()?, s.parse::<Uuid>().ok()?)))
            .ok_or_else(invalid)?;
        if app.sessions.get(user, session).await?.is_none() {
            return Err(ApiError::unauthorized(
                "session_revoked",
                "this session has ended; log in again",
            ));
        }
        Ok(Caller {
            user_id: user,
            session_id: session,
        })
    }
}

/// Opens the live-update socket (see the module documentation for the frames).
#[utoipa::path(get, path = "/ws", tag = "live", security((), ("bearer" = [])), params(SocketParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`websocket_upgrade_required`: not a WebSocket handshake", body = ErrorBody),
        (status = 401, description = "`invalid_ticket`, `missing_token`, `invalid_token`, `session_revoked`", body = ErrorBody),
    ))]
async fn socket(
    State(app): State<App>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return ApiError::BadRequest {
            code: "websocket_upgrade_required",
            message: "open this path as a WebSocket".into(),
        }
        .into_response();
    };
    // Small buffers: frames are small, and tungstenite's 128 KiB defaults cost over 100 KiB per
    // open socket (measured at 10,000 sockets, benches/messaging.rs).
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_socket(app, socket, caller))
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum ClientFrame {
    #[serde(rename = "ping")]
    Ping,
    #[serde(rename = "typing")]
    Typing { conversation_id: Uuid },
    #[serde(rename = "resume")]
    Resume { after: i64 },
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn serve_socket(app: App, socket: WebSocket, caller: Caller) {
    let mut registration = app.hub.register(caller.user_id);
    let _ = crate::infra::hub::seen(&app.redis, caller.user_id, true).await;
    let mut ticks: u64 = 0;
    let (mut sink, mut stream) = socket.split();
    let mut sent = Sent::default();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            frame = registration.frames.recv() => {
                let Some(frame) = frame else {
                    if registration.overflowed.load(Ordering::Relaxed) {
                        let _ = sink.send(close(CLOSE_TOO_SLOW, "too slow")).await;
                    }
                    break;
                };
                let (position, created_at) = position_of(&frame);
                if let Some(position) = position {
                    if !sent.first_time(position) {
                        continue;
                    }
                }
                if sink.send(Message::Text(frame.as_ref().into())).await.is_err() {
                    break;
                }
                metrics::counter!("websocket_frames_total", "result" => "sent").increment(1);
                if let Some(created_at) = created_at {
                    let delay = (chrono::Utc::now() - created_at).to_std().unwrap_or_default();
                    metrics::histogram!("websocket_delivery_seconds").record(delay.as_secs_f64());
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<ClientFrame>(text.as_str()) {
                        Ok(ClientFrame::Ping) => vec![r#"{"type":"pong"}"#.to_string()],
                        Ok(ClientFrame::Typing { conversation_id }) => {
                            typing(&app, caller.user_id, conversation_id).await;
                            Vec::new()
                        }
                        Ok(ClientFrame::Resume { after }) => {
                            match missed(&app, caller.user_id, after).await {
                                Ok(frames) => frames
                                    .into_iter()
                                    .filter(|(position, _)| sent.first_time(*position))
                                    .map(|(_, frame)| frame)
                                    .collect(),
                                Err(err) => {
                                    tracing::warn!(error = %err, "websocket resume");
                                    vec![frame("error", 0, serde_json::json!({"code": "resume_failed"}))]
                                }
                            }
                        }
                        Err(_) => vec![frame("error", 0, serde_json::json!({"code": "unknown_frame"}))],
                    };
                    for text in reply {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = check.tick() => {
                ticks += 1;
                if ticks % 10 == 0 {
                    let _ = crate::infra::hub::seen(&app.redis, caller.user_id, true).await;
                }
                if let Ok(None) = app.sessions.get(caller.user_id, caller.session_id).await {
                    let _ = sink.send(close(CLOSE_SESSION_ENDED, "session ended")).await;
                    break;
                }
            }
            _ = heartbeat.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    app.hub.unregister(caller.user_id, registration.id);
    let _ = crate::infra::hub::seen(&app.redis, caller.user_id, false).await;
}

/// Positions of the frames this socket sent (the latest 10,000): none goes out twice, whether it
/// came live (perhaps published twice) or from a `resume`.
#[derive(Default)]
struct Sent {
    positions: std::collections::HashSet<i64>,
    order: std::collections::VecDeque<i64>,
}

impl Sent {
    fn first_time(&mut self, position: i64) -> bool {
        if !self.positions.insert(position) {
            return false;
        }
        self.order.push_back(position);
        if self.order.len() > 10_000 {
            if let Some(oldest) = self.order.pop_front() {
                self.positions.remove(&oldest);
            }
        }
        true
    }
}

/// A frame's log position, and when its event was committed (for the delivery latency: from the
/// commit to the frame leaving this socket).
fn position_of(frame: &Arc<str>) -> (Option<i64>, Option<chrono::DateTime<chrono::Utc>>) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(frame) else {
        return (None, None);
    };
    let position = value["position"].as_i64().filter(|p| *p > 0);
    let created_at = value["data"]["created_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    (position, created_at)
}

/// Tells the other participants that `user` is typing (ephemeral: Redis only, no event).
async fn typing(app: &App, user: Uuid, conversation: Uuid) {
    let others: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM messaging.participants p WHERE p.conversation_id = $1 \
            AND user_id <> $2 \
            AND EXISTS (SELECT 1 FROM messaging.participants me \
                         WHERE me.conversation_id = $1 AND me.user_id = $2)",
    )
    .bind(conversation)
    .bind(user)
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    let text = frame(
        "typing",
        0,
        serde_json::json!({"conversation_id": conversation, "user_id": user}),
    );
    for other in others {
        if let Err(err) = crate::infra::hub::publish(&app.redis, other, &text).await {
            tracing::debug!(error = %err, "typing not published");
        }
    }
}

/// The messages of the user's conversations after `after`, in log order, as frames.
async fn missed(app: &App, user: Uuid, after: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        conversation_id: Uuid,
        sender_id: Uuid,
        body: Option<String>,
        position: i64,
        created_at: chrono::DateTime<chrono::Utc>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.id, m.conversation_id, m.sender_id, m.body, m.position, m.created_at \
           FROM messaging.messages m \
          WHERE m.position > $2 \
            AND m.conversation_id IN (SELECT conversation_id FROM messaging.participants \
                                       WHERE user_id = $1) \
          ORDER BY m.position LIMIT $3",
    )
    .bind(user)
    .bind(after)
    .bind(RESUME_LIMIT)
    .fetch_all(&app.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|m| {
            let data = serde_json::json!({
                "id": m.id, "conversation_id": m.conversation_id, "sender_id": m.sender_id,
                "body": m.body, "position": m.position, "created_at": m.created_at,
            });
            (m.position, frame("message.created", m.position, data))
        })
        .collect())
}
