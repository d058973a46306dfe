//! GDPR portability: `GET /api/me/export`, and `GET /api/admin/users/{id}/export` for an admin
//! acting on a person's request. The export replays every event the person took part in and
//! streams one JSON document, a page of events at a time, so a large export never sits in memory.
//!
//! Which events: every stream the person acted on (the log's actor index), their account, and
//! the streams that concern them without their acting: sittings they own, sit or applied to,
//! their plants, advice on their plants or their sittings, the conversations they are in and the
//! messages of those conversations. Read models name those streams (a lookup, not a source of
//! content: everything exported comes from the log).
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
use futures::{StreamExt, TryStreamExt};
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

/// Events opened and sent per batch.
const BATCH: usize = 256;

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
    ))]
async fn export_me(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, ApiError> {
    let metadata = auth.metadata(meta);
    export(app, auth.user_id, AccessKind::Export, metadata).await
}

/// Everything a person took part in, exported by an admin on their behalf.
#[utoipa::path(get, path = "/users/{id}/export", operation_id = "export_user", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The export (`Content-Disposition: attachment`)", body = ExportDocument),
        (status = 403, description = "`forbidden`: ADMIN only", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
async fn export_user(
    State(app): State<App>,
    admin: Can<Administer>,
    RequestMeta(meta): RequestMeta,
    ApiPath(user_id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let metadata = admin.metadata(meta);
    export(app, user_id, AccessKind::AdminExport, metadata).await
}

/// The streams that concern `$1` (see the module's documentation).
const STREAMS: &str = "\
    SELECT DISTINCT aggregate_type, aggregate_id FROM events WHERE metadata ->> 'actor_id' = $1::text \
    UNION SELECT 'User', $1::text \
    UNION SELECT 'Sitting', id::text FROM sittings WHERE owner_id = $1 OR sitter_id = $1 \
    UNION SELECT 'Sitting', sitting_id::text FROM sitting_applications WHERE applicant_id = $1 \
    UNION SELECT 'Plant', id::text FROM plants WHERE owner_id = $1 \
    UNION SELECT 'Advice', id::text FROM advice \
           WHERE plant_owner_id = $1 OR sitter_id = $1 OR author_id = $1 \
    UNION SELECT 'Conversation', conversation_id::text FROM messaging.participants WHERE user_id = $1 \
    UNION SELECT 'Message', m.id::text FROM messaging.messages m \
            JOIN messaging.participants p ON p.conversation_id = m.conversation_id \
           WHERE p.user_id = $1";

async fn export(
    app: App,
    user_id: Uuid,
    kind: AccessKind,
    metadata: Metadata,
) -> Result<Response, ApiError> {
    let subject = load_user(&app.pool, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
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

    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let _ = sender.send(Ok(Bytes::from(head))).await;
        let mut exporter = Exporter {
            app: &app,
            user_id,
            own,
            salt,
            people: HashMap::new(),
        };
        match exporter.stream(&sender).await {
            Ok(count) => {
                let tail = format!("],\"event_count\":{count}}}");
                let _ = sender.send(Ok(Bytes::from(tail))).await;
                metrics::counter!("gdpr_exports_total").increment(1);
            }
            Err(err) => {
                // The status is sent already: cut the body short, so the client sees a broken
                // transfer and never a document that looks whole.
                tracing::error!(error = %format!("{err:#}"), %user_id, "export failed midway");
                let _ = sender
                    .send(Err(std::io::Error::other("export failed")))
                    .await;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(receiver));
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

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

struct Exporter<'a> {
    app: &'a App,
    user_id: Uuid,
    own: Cipher,
    salt: [u8; 32],
    /// Ids known to be people (true) or not (false).
    people: HashMap<Uuid, bool>,
}

impl Exporter<'_> {
    /// Sends every event, batch by batch; returns how many.
    async fn stream(
        &mut self,
        sender: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> anyhow::Result<i64> {
        let sql = format!(
            "WITH streams AS ({STREAMS}) \
             SELECT {COLUMNS} FROM events e JOIN streams s USING (aggregate_type, aggregate_id) \
              ORDER BY e.global_position"
        );
        let pool = self.app.pool.clone();
        let mut rows = sqlx::query_as::<_, EventRow>(&sql)
            .bind(self.user_id)
            .fetch(&pool)
            .map_err(anyhow::Error::from)
            .chunks(BATCH);
        let mut count: i64 = 0;
        while let Some(batch) = rows.next().await {
            let batch: Vec<AuditEvent> = batch
                .into_iter()
                .map(|row| row.map(AuditEvent::from))
                .collect::<anyhow::Result<_>>()?;
            let mut out = Vec::with_capacity(batch.len() * 512);
            for event in self.disclose(batch).await? {
                if count > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &event)?;
                count += 1;
            }
            if sender.send(Ok(Bytes::from(out))).await.is_err() {
                anyhow::bail!("the client went away");
            }
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
