//! GDPR portability: `GET /api/me/export`, and `GET /api/admin/users/{id}/export` for an admin
//! acting on a person's request. The export replays every event the person took part in and
//! streams one JSON document, a page of events at a time, so a large export never sits in memory.
//!
//! Which events: every event the person caused (the log's actor index), every event of their
//! account, and whole streams that concern them without their acting: sittings they own or
//! sit, their plants, advice on their plants or sittings or written by them, the conversations
//! they are in and the messages of those conversations. Streams they only touched (an
//! application to someone else's sitting, an admin's action on another account) give only
//! the events they caused. Read models name those streams (a lookup, not a source of content:
//! everything exported comes from the log).
//!
//! Cost: one statement lists the positions of those events, then pages of
//! `EXPORT_PAGE_EVENTS` are read by position, each a short statement on a pooled connection
//! that is returned before the page is sent. A client that stops reading holds no connection,
//! and is cut off after `EXPORT_STALL_SECS`. One export at a time per caller (Redis
//! `export:{user_id}`, 429 `export_in_progress`).
//!
//! What is opened: fields sealed under the person's own key, and the texts of the messages of
//! their conversations (an exchange belongs to both sides). Other people's sealed fields (an
//! owner's exact address seen by an applicant, another botanist's verdict) read
//! `"[another person's data]"`; texts whose key is gone read `"[erased]"`. Credentials are
//! redacted. Every other person's id, wherever it appears, is replaced by a pseudonym: the first
//! 16 hex digits of SHA-256(salt || id), with a salt drawn for this export alone, so a person
//! is recognisable across one export and in no other.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::audit::{
    collect_ids, for_each_string, open_strings_or, short_hex, AuditEvent, EventRow, COLUMNS,
};
use super::docs::ErrorBody;
use super::error::ApiError;
use super::extract::{ApiPath, RequestMeta};
use super::guard::{Administer, Can};
use super::me::{load_user, UserView};
use super::token::AuthUser;
use crate::access::{AccessDetails, AccessKind};
use crate::events::crypto::{Cipher, CryptoError};
use crate::events::Metadata;
use crate::App;

/// What stands in for another person's sealed field.
const OTHERS: &str = "[another person's data]";

/// `GET /api/me/export` (merged into `/api/me`).
pub fn me_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(export_me))
}

/// `GET /api/admin/users/{id}/export` (merged into `/api/admin`).
pub fn admin_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(export_user))
}

/// The export document, as streamed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDocument {
    /// `arosaje-export/1`.
    pub format: String,
    pub generated_at: DateTime<Utc>,
    /// The account as it is now.
    pub subject: UserView,
    /// How other people are shown.
    pub pseudonyms: String,
    /// The photos of the person's plants and those they took, as links (with a token, like any
    /// photo).
    pub photos: Vec<ExportPhoto>,
    /// Every event the person took part in, in log order, opened as described above.
    pub events: Vec<AuditEvent>,
    /// How many events `events` holds (written last: a document without it was cut short).
    pub event_count: i64,
}

/// A photo, by link.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ExportPhoto {
    pub id: Uuid,
    pub plant_id: Uuid,
    pub url: String,
    pub thumbnail_url: String,
    pub created_at: DateTime<Utc>,
}

/// Everything the caller took part in, as one JSON document (streamed).
#[utoipa::path(get, path = "/export", operation_id = "export_me", tag = "me", security(("bearer" = [])),
    responses(
        (status = 200, description = "The export (`Content-Disposition: attachment`)", body = ExportDocument),
        (status = 429, description = "`export_in_progress`: one export at a time (`Retry-After`)", body = ErrorBody),
    ))]
async fn export_me(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, ApiError> {
    let metadata = auth.metadata(meta);
    export(
        app,
        auth.user_id,
        AccessKind::Export,
        metadata,
        auth.user_id,
    )
    .await
}

/// Everything a person took part in, exported by an admin on their behalf.
#[utoipa::path(get, path = "/users/{id}/export", operation_id = "export_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The export (`Content-Disposition: attachment`)", body = ExportDocument),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 429, description = "`export_in_progress`: one export at a time per admin (`Retry-After`)", body = ErrorBody),
    ))]
async fn export_user(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let metadata = admin.metadata(meta);
    let caller = admin.user_id;
    export(app, user_id, AccessKind::AdminExport, metadata, caller).await
}

/// The log positions of the events that concern `$1` (see the module's documentation), in
/// log order.
const POSITIONS: &str = "\
    SELECT global_position FROM events WHERE metadata ->> 'actor_id' = $1::text \
    UNION \
    SELECT e.global_position FROM events e JOIN ( \
        SELECT 'User' AS aggregate_type, $1::text AS aggregate_id \
        UNION SELECT 'Sitting', id::text FROM sittings WHERE owner_id = $1 OR sitter_id = $1 \
        UNION SELECT 'Plant', id::text FROM plants WHERE owner_id = $1 \
        UNION SELECT 'Advice', id::text FROM advice \
               WHERE plant_owner_id = $1 OR sitter_id = $1 OR author_id = $1 \
        UNION SELECT 'Conversation', conversation_id::text FROM messaging.participants \
               WHERE user_id = $1 \
        UNION SELECT 'Message', m.id::text FROM messaging.messages m \
                JOIN messaging.participants p ON p.conversation_id = m.conversation_id \
               WHERE p.user_id = $1 \
    ) s ON e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id \
    ORDER BY 1";

/// How long an export slot outlives a process that died holding it.
const SLOT_TTL_MS: u64 = 10 * 60 * 1000;

/// The caller's one export slot (Redis `export:{user_id}`), released when dropped.
struct ExportSlot {
    redis: crate::infra::redis::Redis,
    key: String,
    token: String,
}

impl ExportSlot {
    /// Takes the slot, or `None` while another export of the caller runs.
    async fn take(app: &App, caller: Uuid) -> Result<Option<ExportSlot>, ApiError> {
        let key = format!("export:{caller}");
        let token = Uuid::new_v4().to_string();
        let (k, t) = (key.clone(), token.clone());
        let taken: Option<String> = app
            .redis
            .call(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(SLOT_TTL_MS)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(taken.map(|_| ExportSlot {
            redis: app.redis.clone(),
            key,
            token,
        }))
    }

    /// Keeps the slot while the export makes progress.
    async fn renew(&self) {
        let (key, token) = (self.key.clone(), self.token.clone());
        let renewed = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
                )
                .key(key)
                .arg(token)
                .arg(SLOT_TTL_MS)
                .invoke_async::<i64>(&mut conn)
                .await
            })
            .await;
        if let Err(err) = renewed {
            tracing::warn!(error = %err, "export slot not renewed");
        }
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        let (redis, key, token) = (self.redis.clone(), self.key.clone(), self.token.clone());
        tokio::spawn(async move {
            let released = redis
                .call(|mut conn| async move {
                    redis::Script::new(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                           return redis.call('DEL', KEYS[1]) end return 0",
                    )
                    .key(key)
                    .arg(token)
                    .invoke_async::<i64>(&mut conn)
                    .await
                })
                .await;
            if let Err(err) = released {
                tracing::warn!(error = %err, "export slot not released (it expires by itself)");
            }
        });
    }
}

async fn export(
    app: App,
    user_id: Uuid,
    kind: AccessKind,
    metadata: Metadata,
    caller: Uuid,
) -> Result<Response, ApiError> {
    let subject = load_user(&app.pool, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let slot = ExportSlot::take(&app, caller)
        .await?
        .ok_or_else(|| ApiError::TooManyRequests {
            code: "export_in_progress",
            message: "an export of yours is still running; wait for it to finish".into(),
            retry_after: std::time::Duration::from_secs(5),
        })?;
    let details = AccessDetails {
        kind,
        subject_id: Some(user_id),
        reason: None,
        query: serde_json::json!({}),
    };
    crate::access::record(&app, &metadata, &details).await?;
    let own = app.keys.cipher(user_id).await?;
    let photos: Vec<ExportPhoto> = sqlx::query_as(
        "SELECT f.id, f.plant_id, '/api/photos/' || f.id AS url, \
                '/api/photos/' || f.id || '/thumbnail' AS thumbnail_url, f.created_at \
           FROM plant_photos f \
          WHERE f.uploaded_by = $1 OR f.plant_id IN (SELECT id FROM plants WHERE owner_id = $1) \
          ORDER BY f.created_at, f.id",
    )
    .bind(user_id)
    .fetch_all(&app.pool)
    .await?;
    let mut salt = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut salt);
    let head = serde_json::json!({
        "format": "arosaje-export/1",
        "generated_at": Utc::now(),
        "subject": subject,
        "pseudonyms": "Other people appear as `person:` and 16 hex digits: SHA-256 of their id \
                       with a salt drawn for this export only (the same person reads the same \
                       within this export, and differently in any other).",
        "photos": photos,
    });
    let mut head = serde_json::to_string(&head).map_err(anyhow::Error::from)?;
    head.pop(); // the closing brace: the events follow
    head.push_str(",\"events\":[");

    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let whole = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = whole.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _ = sender.send(Ok(Bytes::from(head))).await;
        let mut exporter = Exporter {
            app: &app,
            user_id,
            own,
            salt,
            people: HashMap::new(),
            slot: &_slot,
        };
        let stall = std::time::Duration::from_secs(app.config.export_stall_secs);
        match exporter.stream(&sender).await {
            Ok(count) => {
                let tail = format!("],\"event_count\":{count}}}");
                let sent = tokio::time::timeout(stall, sender.send(Ok(Bytes::from(tail)))).await;
                if matches!(sent, Ok(Ok(()))) {
                    finished.store(true, std::sync::atomic::Ordering::Release);
                }
                metrics::counter!("gdpr_exports_total").increment(1);
            }
            Err(err) => {
                // The status is sent already: cut the body short, so the client sees a broken
                // transfer and never a document that looks whole (a stalled client's full
                // channel drops the stream all the same).
                tracing::warn!(error = %format!("{err:#}"), %user_id, "export cut short");
                drop(sender);
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(receiver, whole));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"arosaje-export-{user_id}.json\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// The body's stream; a channel closed before the document was finished (`whole` unset) ends
/// in an error, so the transfer reads as broken, not as a whole document.
fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    whole: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut ended = false;
    futures::stream::poll_fn(move |cx| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        match receiver.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                ended = true;
                if whole.load(std::sync::atomic::Ordering::Acquire) {
                    std::task::Poll::Ready(None)
                } else {
                    std::task::Poll::Ready(Some(Err(std::io::Error::other("export cut short"))))
                }
            }
            other => other,
        }
    })
}

struct Exporter<'a> {
    app: &'a App,
    user_id: Uuid,
    own: Cipher,
    salt: [u8; 32],
    /// Ids known to be people (true) or not (false).
    people: HashMap<Uuid, bool>,
    slot: &'a ExportSlot,
}

impl Exporter<'_> {
    /// Sends every event, page by page; returns how many. No statement stays open while a page
    /// waits for the client, and a client that reads nothing for `EXPORT_STALL_SECS` is cut off.
    async fn stream(
        &mut self,
        sender: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> anyhow::Result<i64> {
        let positions: Vec<i64> = sqlx::query_scalar(POSITIONS)
            .bind(self.user_id)
            .fetch_all(&self.app.pool)
            .await?;
        let stall = std::time::Duration::from_secs(self.app.config.export_stall_secs);
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE global_position = ANY($1) ORDER BY global_position"
        );
        let mut count: i64 = 0;
        for page in positions.chunks(self.app.config.export_page_events.max(1)) {
            let rows: Vec<EventRow> = sqlx::query_as(&sql)
                .bind(page)
                .fetch_all(&self.app.pool)
                .await?;
            let batch: Vec<AuditEvent> = rows.into_iter().map(AuditEvent::from).collect();
            let mut out = Vec::with_capacity(batch.len() * 512);
            for event in self.disclose(batch).await? {
                if count > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &event)?;
                count += 1;
            }
            match tokio::time::timeout(stall, sender.send(Ok(Bytes::from(out)))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("the client went away"),
                Err(_) => {
                    metrics::counter!("gdpr_exports_stalled_total").increment(1);
                    anyhow::bail!("the client read nothing for {} s", stall.as_secs());
                }
            }
            self.slot.renew().await;
        }
        Ok(count)
    }

    /// Opens what the person may read and pseudonymises everyone else in a batch.
    async fn disclose(&mut self, mut events: Vec<AuditEvent>) -> anyhow::Result<Vec<AuditEvent>> {
        let mut ids = Vec::new();
        for event in &events {
            if let Ok(id) = event.aggregate_id.parse::<Uuid>() {
                ids.push(id);
            }
            collect_ids(&event.payload, &mut ids);
            collect_ids(&event.metadata, &mut ids);
        }
        ids.retain(|id| !self.people.contains_key(id));
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            // People are the ids with a `User` stream (erased people included).
            let people: Vec<String> = sqlx::query_scalar(
                "SELECT aggregate_id FROM events \
                  WHERE aggregate_type = 'User' AND aggregate_id = ANY($1) AND sequence = 1",
            )
            .bind(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
            .fetch_all(&self.app.pool)
            .await?;
            for id in ids {
                self.people.insert(id, false);
            }
            for id in people.iter().filter_map(|p| p.parse::<Uuid>().ok()) {
                self.people.insert(id, true);
            }
        }
        for event in &mut events {
            let mut ciphers = Vec::with_capacity(2);
            // Another person's account stream (an admin's action on it) opens nothing.
            let foreign_account =
                event.aggregate_type == "User" && event.aggregate_id != self.user_id.to_string();
            if !foreign_account {
                ciphers.push(self.own.clone());
            }
            if event.aggregate_type == "Message" {
                if let Ok(id) = event.aggregate_id.parse::<Uuid>() {
                    match self.app.message_keys.cipher(id).await {
                        Ok(cipher) => ciphers.push(cipher),
                        Err(CryptoError::KeyMissing(_)) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            let otherwise = if event.aggregate_type == "Message" {
                "[erased]"
            } else {
                OTHERS
            };
            open_strings_or(&mut event.payload, &ciphers, otherwise);
            self.pseudonymise(&mut event.payload);
            self.pseudonymise(&mut event.metadata);
            if let Ok(id) = event.aggregate_id.parse::<Uuid>() {
                if let Some(alias) = self.alias(id) {
                    event.aggregate_id = alias;
                }
            }
        }
        Ok(events)
    }

    /// The pseudonym of another person; `None` for the subject and for ids that are not people.
    fn alias(&self, id: Uuid) -> Option<String> {
        if id == self.user_id || self.people.get(&id) != Some(&true) {
            return None;
        }
        let digest = Sha256::new()
            .chain_update(self.salt)
            .chain_update(id.as_bytes())
            .finalize();
        Some(format!("person:{}", short_hex(&digest)))
    }

    fn pseudonymise(&self, value: &mut Value) {
        for_each_string(value, &mut |text| {
            if let Some(alias) = text.parse::<Uuid>().ok().and_then(|id| self.alias(id)) {
                *text = alias;
            }
        });
    }
}
