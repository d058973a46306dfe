//! `/api/conversations` and `/api/messages/search`: conversations between users (a sitting's
//! between its owner and sitter), messages newest first, read marks and unread counts, and
//! full-text search (French and English stemming) in the caller's own conversations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Page, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, RequestMeta};
use super::pagination::{self, PageParams};
use super::token::AuthUser;
use crate::commands::conversation::{
    Conversation, ConversationCommand, ReadMark, ReadMarkCommand, MAX_PARTICIPANTS,
};
use crate::commands::values::{text, FieldErrors};
use crate::App;

/// Longest message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;

pub fn router() -> OpenApiRouter<App> {
    let idempotent = |router: utoipa_axum::router::UtoipaMethodRouter<App>| {
        let (schemas, paths, method) = router;
        let method = method.layer(axum::middleware::from_fn(super::idempotency::idempotent));
        (schemas, paths, method)
    };
    OpenApiRouter::new()
        .routes(idempotent(routes!(start_conversation)))
        .routes(routes!(list_conversations))
        .routes(idempotent(routes!(send_message)))
        .routes(routes!(list_messages))
        .routes(routes!(mark_read))
}

pub fn search_router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(search_messages))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct MessageView {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub sender_id: Uuid,
    /// Null once the text is gone (retention, erasure of its sender); the message stays.
    pub body: Option<String>,
    /// Its place in the log: order, cursors, WebSocket resume.
    pub position: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParticipantView {
    pub id: Uuid,
    pub display_name: String,
    /// A live socket is open (refreshed every 10 s, expires after 30 s). Null unless the caller
    /// and this participant share an accepted or running sitting, or a conversation in which
    /// both have written.
    pub online: Option<bool>,
    /// When a socket of theirs was last open; null when unknown or not shown (as `online`).
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConversationView {
    pub id: Uuid,
    pub sitting_id: Option<Uuid>,
    pub participants: Vec<ParticipantView>,
    /// Messages of others after the caller's read mark.
    pub unread: i64,
    pub last_message: Option<MessageView>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ConversationRow {
    id: Uuid,
    sitting_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    last_position: i64,
    unread: i64,
    message_id: Option<Uuid>,
    sender_id: Option<Uuid>,
    body: Option<String>,
    position: Option<i64>,
    sent_at: Option<DateTime<Utc>>,
}

const MESSAGE_COLUMNS: &str =
    "m.id, m.conversation_id, m.sender_id, m.body, m.position, m.created_at";

/// The caller's conversations (all, or one), latest activity first.
async fn conversations(
    app: &App,
    user: Uuid,
    only: Option<Uuid>,
    cursor: Option<(f64, Uuid)>,
    limit: i64,
) -> Result<Vec<(ConversationView, i64)>, sqlx::Error> {
    let rows: Vec<ConversationRow> = sqlx::query_as(
        "SELECT c.id, c.sitting_id, c.created_at, c.last_position, \
                (SELECT count(*) FROM messaging.messages x \
                  WHERE x.conversation_id = c.id AND x.position > p.last_read_position \
                    AND x.sender_id <> $1) AS unread, \
                m.id AS message_id, m.sender_id, m.body, m.position, m.created_at AS sent_at \
           FROM messaging.participants p \
           JOIN messaging.conversations c ON c.id = p.conversation_id \
           LEFT JOIN messaging.messages m ON m.id = c.last_message_id \
          WHERE p.user_id = $1 AND ($2::uuid IS NULL OR c.id = $2) \
            AND ($3::float8 IS NULL OR (c.last_position::float8, c.id) < ($3, $4)) \
          ORDER BY c.last_position DESC, c.id DESC LIMIT $5",
    )
    .bind(user)
    .bind(only)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit)
    .fetch_all(&app.pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let people: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT p.conversation_id, u.id, u.display_name FROM messaging.participants p \
           JOIN users u ON u.id = p.user_id WHERE p.conversation_id = ANY($1) ORDER BY u.id",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await?;
    let mut users: Vec<Uuid> = people.iter().map(|(_, id, _)| *id).collect();
    users.sort();
    users.dedup();
    let users = presence_shown(app, user, users).await?;
    let presence = crate::infra::hub::presence(&app.redis, &users).await;
    let presence_of = |user: &Uuid| match users.iter().position(|u| u == user) {
        Some(i) => presence
            .get(i)
            .map_or((Some(false), None), |(online, seen)| (Some(*online), *seen)),
        None => (None, None),
    };
    Ok(rows
        .into_iter()
        .map(|row| {
            let participants = people
                .iter()
                .filter(|(c, _, _)| *c == row.id)
                .map(|(_, id, name)| {
                    let (online, last_seen) = presence_of(id);
                    ParticipantView {
                        id: *id,
                        display_name: name.clone(),
                        online,
                        last_seen,
                    }
                })
                .collect();
            let last_message = match (row.message_id, row.sender_id, row.position, row.sent_at) {
                (Some(id), Some(sender_id), Some(position), Some(created_at)) => {
                    Some(MessageView {
                        id,
                        conversation_id: row.id,
                        sender_id,
                        body: row.body,
                        position,
                        created_at,
                    })
                }
                _ => None,
            };
            let view = ConversationView {
                id: row.id,
                sitting_id: row.sitting_id,
                participants,
                unread: row.unread,
                last_message,
                created_at: row.created_at,
            };
            (view, row.last_position)
        })
        .collect())
}

/// Of `people`, those whose presence `viewer` may see: themself, the other party of an
/// accepted or running sitting they share, and those who wrote in a conversation in which the
/// viewer wrote too. Opening a conversation with someone shows nothing of them until both have
/// written.
async fn presence_shown(
    app: &App,
    viewer: Uuid,
    people: Vec<Uuid>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT u FROM UNNEST($2::uuid[]) AS u \
          WHERE u = $1 \
             OR EXISTS (SELECT 1 FROM sittings s \
                         WHERE s.status IN ('accepted', 'in_progress') \
                           AND ((s.owner_id = $1 AND s.sitter_id = u) \
                                OR (s.owner_id = u AND s.sitter_id = $1))) \
             OR EXISTS (SELECT 1 FROM messaging.participants a \
                          JOIN messaging.participants b ON b.conversation_id = a.conversation_id \
                         WHERE a.user_id = $1 AND a.has_written \
                           AND b.user_id = u AND b.has_written) \
          ORDER BY u",
    )
    .bind(viewer)
    .bind(&people)
    .fetch_all(&app.pool)
    .await
}

/// Whether `user` takes part in conversation `id`, from the read model.
async fn takes_part(pool: &PgPool, id: Uuid, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM messaging.participants \
                         WHERE conversation_id = $1 AND user_id = $2)",
    )
    .bind(id)
    .bind(user)
    .fetch_one(pool)
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationBody {
    /// The others (the caller takes part too); 1 to 19 people.
    #[schema(required = true, value_type = Vec<Uuid>, min_items = 1, max_items = 19)]
    participant_ids: Option<Vec<Uuid>>,
    /// A sitting's conversation, between its owner and its accepted sitter only.
    sitting_id: Option<Uuid>,
}

/// Starts a conversation.
#[utoipa::path(post, path = "", tag = "messaging", security(("bearer" = [])),
    request_body = ConversationBody,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "1-255 visible ASCII characters: the same key from the same user within 24 h answers the first answer again")),
    responses(
        (status = 201, description = "The conversation", body = Positioned<ConversationView>),
        (status = 202, description = "Started; the read model is catching up", body = Pending),
        (status = 403, description = "`not_the_sittings_parties`", body = ErrorBody),
        (status = 409, description = "`request_in_progress`: the first request with this Idempotency-Key is still running", body = ErrorBody),
    ))]
async fn start_conversation(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<ConversationBody>,
) -> Result<Response, ApiError> {
    let others = body
        .participant_ids
        .ok_or_else(|| ApiError::invalid("participant_ids", "is required"))?;
    if others.len() > MAX_PARTICIPANTS {
        return Err(ApiError::invalid(
            "participant_ids",
            format!("at most {MAX_PARTICIPANTS} people"),
        ));
    }
    // Facts the conversation cannot know: who exists, and a sitting's two parties.
    let known: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1) AND status = 'active'")
            .bind(&others)
            .fetch_all(&app.pool)
            .await?;
    let unknown: Vec<Uuid> = others
        .iter()
        .filter(|id| !known.contains(id))
        .copied()
        .collect();
    let sitting_parties: Option<(Uuid, Uuid)> =
        match body.sitting_id {
            Some(sitting) => sqlx::query_as(
                "SELECT owner_id, sitter_id FROM sittings WHERE id = $1 AND sitter_id IS NOT NULL",
            )
            .bind(sitting)
            .fetch_optional(&app.pool)
            .await?,
            None => None,
        };
    let id = crate::events::claim::new_id("Conversation");
    let command = ConversationCommand::StartConversation {
        started_by: auth.user_id,
        others,
        unknown,
        sitting_id: body.sitting_id,
        sitting_parties,
    };
    let committed = app
        .store
        .execute_new::<Conversation>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    if !super::settle(&app, "Conversation", &committed).await {
        return Ok(super::accepted(id, &committed));
    }
    let (view, _) = conversations(&app, auth.user_id, Some(id), None, 1)
        .await?
        .pop()
        .ok_or(ApiError::NotFound("conversation"))?;
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(view, &committed)),
    )
        .into_response())
}

/// The caller's conversations, latest activity first, with unread counts and the last message.
#[utoipa::path(get, path = "", tag = "messaging", security(("bearer" = [])), params(PageParams),
    responses((status = 200, description = "A page of conversations", body = Page<ConversationView>)))]
async fn list_conversations(
    State(app): State<App>,
    auth: AuthUser,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<ConversationView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let cursor = pagination::parse_keyset(params.cursor.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = conversations(&app, auth.user_id, None, cursor, limit + 1).await?;
    let page = pagination::keyset_page(rows, limit, |(view, last)| (*last as f64, view.id));
    Ok(Json(page.map(|(view, _)| view)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    #[schema(required = true, value_type = String, min_length = 1, max_length = 4000)]
    body: Option<String>,
}

const CONVERSATION_ID: &str = "The conversation's id";

async fn load_message(pool: &PgPool, id: Uuid) -> Result<Option<MessageView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messaging.messages m WHERE m.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Sends a message into a conversation the caller takes part in.
#[utoipa::path(post, path = "/{id}/messages", tag = "messaging", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = CONVERSATION_ID),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "1-255 visible ASCII characters: the same key from the same user within 24 h answers the first answer again")),
    request_body = MessageBody,
    responses(
        (status = 201, description = "The message", body = Positioned<MessageView>),
        (status = 202, description = "Sent; the read model is catching up", body = Pending),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
        (status = 409, description = "`request_in_progress`: the first request with this Idempotency-Key is still running", body = ErrorBody),
    ))]
async fn send_message(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<Response, ApiError> {
    let message = body
        .body
        .as_deref()
        .ok_or_else(|| "is required".to_string())
        .and_then(|b| text(b, 1, MAX_MESSAGE_CHARS))
        .map_err(|e| ApiError::invalid("body", e))?;
    let (message_id, committed) =
        crate::messaging::send(&app, id, auth.user_id, &message, &auth.metadata(meta)).await?;
    if !super::settle(&app, "Message", &committed).await {
        return Ok(super::accepted(message_id, &committed));
    }
    let view = load_message(&app.pool, message_id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(view, &committed)),
    )
        .into_response())
}

/// Messages of a conversation, newest first.
#[utoipa::path(get, path = "/{id}/messages", tag = "messaging", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = CONVERSATION_ID), PageParams),
    responses(
        (status = 200, description = "A page of messages, newest first", body = Page<MessageView>),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
    ))]
async fn list_messages(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<MessageView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let cursor = pagination::parse_keyset(params.cursor.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if !takes_part(&app.pool, id, auth.user_id).await? {
        return Err(ApiError::NotFound("conversation"));
    }
    // The cursor compared as an integer (positions are; `ceil` keeps `<` exact): a bigint
    // column compared with a float8 is cast, and the index no longer bounds the scan.
    let rows: Vec<MessageView> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messaging.messages m \
          WHERE m.conversation_id = $1 \
            AND ($2::float8 IS NULL \
                 OR m.position < GREATEST(LEAST(ceil($2::float8), 9.2e18), -9.2e18)::int8) \
          ORDER BY m.position DESC LIMIT $3"
    ))
    .bind(id)
    .bind(cursor.map(|c| c.0))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::keyset_page(rows, limit, |m| {
        (m.position as f64, m.id)
    })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// The last message read (of this conversation).
    #[schema(required = true, value_type = Uuid)]
    up_to: Option<Uuid>,
}

/// Marks the conversation read up to a message (read marks only move forward).
#[utoipa::path(post, path = "/{id}/read", tag = "messaging", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = CONVERSATION_ID)),
    request_body = ReadBody,
    responses(
        (status = 204, description = "Marked"),
        (status = 404, description = "No such conversation of the caller's", body = ErrorBody),
    ))]
async fn mark_read(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReadBody>,
) -> Result<StatusCode, ApiError> {
    let up_to = body
        .up_to
        .ok_or_else(|| ApiError::invalid("up_to", "is required"))?;
    let conversation = app
        .store
        .load_state::<Conversation>(&id.to_string())
        .await?;
    let participant = conversation.is_some_and(|c| c.takes_part(auth.user_id));
    if !participant {
        return Err(ApiError::NotFound("conversation"));
    }
    let message = load_message(&app.pool, up_to)
        .await?
        .filter(|m| m.conversation_id == id)
        .ok_or_else(|| ApiError::invalid("up_to", "is not a message of this conversation"))?;
    let command = ReadMarkCommand::MarkRead {
        conversation_id: id,
        user_id: auth.user_id,
        takes_part: participant,
        up_to,
        position: message.position,
    };
    let committed = app
        .store
        .execute_new::<ReadMark>(
            &Uuid::now_v7().to_string(),
            command,
            &(),
            &auth.metadata(meta),
        )
        .await?;
    super::settle(&app, "ReadMark", &committed).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find (web-search syntax: `"a phrase"`, `-without`, `or`); stemmed in French and
    /// English.
    #[param(required = true, value_type = String, max_length = 200, pattern = "\\S")]
    q: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Full-text search in the caller's conversations, newest first.
#[utoipa::path(get, path = "/search", tag = "messaging", security(("bearer" = [])), params(SearchParams),
    responses((status = 200, description = "Matching messages, newest first", body = Page<MessageView>)))]
async fn search_messages(
    State(app): State<App>,
    auth: AuthUser,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Page<MessageView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let cursor = pagination::parse_keyset(params.cursor.as_deref(), &mut errors);
    let q = params.q.as_deref().map(str::trim).unwrap_or("");
    if q.is_empty() {
        errors.add("q", "is required");
    } else if q.chars().count() > 200 {
        errors.add("q", "must be at most 200 characters");
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows: Vec<MessageView> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messaging.messages m \
          WHERE m.search @@ (websearch_to_tsquery('french', $2) || websearch_to_tsquery('english', $2)) \
            AND m.conversation_id IN (SELECT conversation_id FROM messaging.participants WHERE user_id = $1) \
            AND ($3::float8 IS NULL OR m.position < $3::float8) \
          ORDER BY m.position DESC LIMIT $4"
    ))
    .bind(auth.user_id)
    .bind(q)
    .bind(cursor.map(|c| c.0))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::keyset_page(rows, limit, |m| {
        (m.position as f64, m.id)
    })))
}
