//! `/api/audit` (AUDITOR, ADMIN): the event log as auditors read it. `events` filters the log and
//! pages it in global order (keyset on the position, never `OFFSET`); `aggregates/{type}/{id}`
//! gives one stream and the aggregate's state rebuilt from it, now or as of `?at=`.
//!
//! Credential material (password hashes, TOTP secrets, recovery-code hashes) is redacted from
//! what auditors see. Personal data sealed in an event is shown opened while its key exists: each
//! sealed field is tried with the keys of the people the event names (its stream when that is a
//! user, its actor, every user id in its payload) and, for a message, the message's own key; once
//! the key is gone (erasure, retention) the field reads `"[erased]"`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Page};
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, RequestMeta};
use super::guard::{Can, ReadAudit};
use super::pagination;
use crate::access::{AccessDetails, AccessKind};
use crate::commands::access::Access;
use crate::commands::advice::Advice;
use crate::commands::conversation::{Conversation, Message, ReadMark};
use crate::commands::plant::Plant;
use crate::commands::sitting::Sitting;
use crate::commands::user::User;
use crate::commands::values::FieldErrors;
use crate::events::crypto::{Cipher, CryptoError, Sealed};
use crate::events::upcast::{self, Versioned};
use crate::App;

/// Keys whose values are credentials, not facts: never shown, even sealed.
const REDACTED: &[&str] = &["password_hash", "secret", "recovery_codes", "code_hash"];

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(aggregate_history))
}

/// One event of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    /// Its place in the global order.
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Its place in its stream (1 for the first event).
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// As stored, with sealed personal data opened (`"[erased]"` once its key is gone) and
    /// credentials redacted: an object, or the event's name alone for events without fields.
    #[schema(value_type = serde_json::Value)]
    pub payload: Value,
    /// Who acted (`actor_id`, `actor_role`), and the request, correlation and causation ids.
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub timestamp: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    global_position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    timestamp: DateTime<Utc>,
}

impl From<EventRow> for AuditEvent {
    fn from(row: EventRow) -> Self {
        AuditEvent {
            position: row.global_position,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            payload: redact(row.payload),
            metadata: row.metadata,
            timestamp: row.timestamp,
        }
    }
}

/// Replaces every credential value, at any depth, with `"[redacted]"`.
fn redact(mut value: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if REDACTED.contains(&key.as_str()) {
                        *inner = Value::String("[redacted]".into());
                    } else {
                        walk(inner);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// Opens the sealed fields of a page of events for auditors: the keys of every person the page
/// names are read in one query.
async fn open_page(app: &App, events: &mut [AuditEvent]) -> Result<(), ApiError> {
    let mut candidates: Vec<Vec<Uuid>> = Vec::with_capacity(events.len());
    let mut everyone = Vec::new();
    for event in events.iter() {
        let mut ids = Vec::new();
        if let Ok(id) = event.aggregate_id.parse::<Uuid>() {
            ids.push(id);
        }
        collect_ids(&event.payload, &mut ids);
        collect_ids(&event.metadata, &mut ids);
        for id in &ids {
            if !everyone.contains(id) {
                everyone.push(*id);
            }
        }
        candidates.push(ids);
    }
    let users = app.keys.ciphers(&everyone).await?;
    for (event, ids) in events.iter_mut().zip(candidates) {
        let mut ciphers: Vec<Cipher> = Vec::new();
        if event.aggregate_type == "Message" {
            if let Ok(id) = event.aggregate_id.parse::<Uuid>() {
                match app.message_keys.cipher(id).await {
                    Ok(cipher) => ciphers.push(cipher),
                    Err(CryptoError::KeyMissing(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        if event.aggregate_type == "Access" {
            // An access record's details open with the key of its month, until retention.
            let month = event
                .payload
                .pointer("/AccessRecorded/month")
                .and_then(Value::as_str)
                .and_then(crate::access::parse_month);
            if let Some(month) = month {
                match app.month_keys.cipher(month).await {
                    Ok(cipher) => ciphers.push(cipher),
                    Err(CryptoError::KeyMissing(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        ciphers.extend(ids.iter().filter_map(|id| users.get(id).cloned()));
        open_strings(&mut event.payload, &ciphers);
        if let Some(details) = event.payload.pointer_mut("/AccessRecorded/details") {
            if let Some(mut parsed) = details
                .as_str()
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
            {
                open_sealed_terms(app, &mut parsed).await?;
                *details = parsed;
            }
        }
    }
    pseudonymise_erased(app, events, &everyone).await
}

/// Replaces each search term an access record sealed for the people it found
/// (`crate::access::sealed_term`) by its text, while one of them is not erased.
async fn open_sealed_terms(app: &App, details: &mut Value) -> Result<(), ApiError> {
    match details {
        Value::Object(map) => {
            if let Some(Value::Object(sealed)) = map.get(crate::access::SEALED_FOR) {
                let mut opened = None;
                if sealed.is_empty() {
                    opened = Some("[not kept: the search found nobody]".to_string());
                } else {
                    let ids: Vec<Uuid> = sealed.keys().filter_map(|k| k.parse().ok()).collect();
                    let ciphers = app.keys.ciphers(&ids).await?;
                    for (id, value) in sealed {
                        let (Some(cipher), Some(text)) = (
                            id.parse().ok().and_then(|id: Uuid| ciphers.get(&id)),
                            value.as_str(),
                        ) else {
                            continue;
                        };
                        if let Ok(text) = cipher.open(&Sealed::from_stored(text.to_string())) {
                            opened = Some(text);
                            break;
                        }
                    }
                }
                *details = Value::String(opened.unwrap_or_else(|| "[erased]".to_string()));
                return Ok(());
            }
            for value in map.values_mut() {
                Box::pin(open_sealed_terms(app, value)).await?;
            }
        }
        Value::Array(items) => {
            for item in items {
                Box::pin(open_sealed_terms(app, item)).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Erased people appear as stable pseudonyms (`erased:` and 16 hex digits of an HMAC of their
/// id under the service's key): an auditor can follow one person's events across queries
/// without the id that other records (and backups) might tie to them.
async fn pseudonymise_erased(
    app: &App,
    events: &mut [AuditEvent],
    everyone: &[Uuid],
) -> Result<(), ApiError> {
    let aliases = erased_aliases(app, everyone).await?;
    if aliases.is_empty() {
        return Ok(());
    }
    let mut replace = |text: &mut String| {
        if let Some(alias) = aliases.get(text.as_str()) {
            *text = alias.clone();
        }
    };
    for event in events.iter_mut() {
        replace(&mut event.aggregate_id);
        for_each_string(&mut event.payload, &mut replace);
        for_each_string(&mut event.metadata, &mut replace);
    }
    Ok(())
}

/// The same pseudonyms in any JSON value (an aggregate's folded state).
async fn pseudonymise_value(app: &App, value: &mut Value) -> Result<(), ApiError> {
    let mut ids = Vec::new();
    collect_ids(value, &mut ids);
    let aliases = erased_aliases(app, &ids).await?;
    if !aliases.is_empty() {
        for_each_string(value, &mut |text: &mut String| {
            if let Some(alias) = aliases.get(text.as_str()) {
                *text = alias.clone();
            }
        });
    }
    Ok(())
}

/// The pseudonym of each erased person among `ids`, by their id as text.
async fn erased_aliases(
    app: &App,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let erased: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events \
          WHERE aggregate_type = 'User' AND aggregate_id = ANY($1) AND event_type = 'UserErased'",
    )
    .bind(ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
    .fetch_all(&app.pool)
    .await?;
    Ok(erased
        .into_iter()
        .map(|id| {
            let alias = erased_alias(app, &id);
            (id, alias)
        })
        .collect())
}

/// The stable pseudonym of an erased person's id.
pub(super) fn erased_alias(app: &App, id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(app.config.email_pepper().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"erased pseudonym:");
    mac.update(id.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("erased:{}", short_hex(&digest))
}

/// Every UUID-valued string in a JSON value.
pub(super) fn collect_ids(value: &Value, ids: &mut Vec<Uuid>) {
    match value {
        Value::String(text) => {
            if let Ok(id) = text.parse::<Uuid>() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_ids(item, ids)),
        Value::Object(map) => map.values().for_each(|item| collect_ids(item, ids)),
        _ => {}
    }
}

/// Replaces each sealed string (`v1:...`) by its plaintext under the first key that opens it.
fn open_strings(value: &mut Value, ciphers: &[Cipher]) {
    open_strings_or(value, ciphers, "[erased]");
}

/// Replaces each sealed string (`v1:...`) by its plaintext under the first key that opens it, or
/// by `otherwise` when none does.
pub(super) fn open_strings_or(value: &mut Value, ciphers: &[Cipher], otherwise: &str) {
    for_each_string(value, &mut |text| {
        if text.starts_with("v1:") {
            let sealed = Sealed::from_stored(text.clone());
            *text = ciphers
                .iter()
                .find_map(|cipher| cipher.open(&sealed).ok())
                .unwrap_or_else(|| otherwise.to_string());
        }
    });
}

/// Calls `f` on every string of a JSON value, at any depth (keys aside).
pub(super) fn for_each_string(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(text) => f(text),
        Value::Array(items) => items.iter_mut().for_each(|item| for_each_string(item, f)),
        Value::Object(map) => map.values_mut().for_each(|item| for_each_string(item, f)),
        _ => {}
    }
}

/// The first 8 bytes of a digest in hex: the 16 digits of a pseudonym.
pub(super) fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub(super) const COLUMNS: &str =
    "global_position, aggregate_type, aggregate_id, sequence, event_type, \
                       event_version, payload, metadata, timestamp";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only this aggregate type, case-insensitive (`User`, `Plant`, `Sitting`, `Advice`,
    /// `Conversation`, `Message`, `ReadMark`).
    aggregate_type: Option<String>,
    /// Only this stream (with `aggregate_type`, or alone).
    aggregate_id: Option<String>,
    /// Only events caused by this user.
    #[param(value_type = Option<Uuid>)]
    actor_id: Option<String>,
    /// Only this event type (`SittingRequested`, ...).
    event_type: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    from: Option<String>,
    /// Events before this time (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    to: Option<String>,
    /// Events after this global position (what `next_cursor` carries, as a number).
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// Why the auditor looks (at most 500 characters); kept with the query's record.
    reason: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A text filter of at most `max` characters; empty means absent.
fn filter(raw: Option<&str>, field: &str, max: usize, errors: &mut FieldErrors) -> Option<String> {
    let value = raw.map(str::trim).filter(|v| !v.is_empty())?;
    if value.chars().count() > max {
        errors.add(field, format!("must be at most {max} characters"));
        return None;
    }
    Some(value.to_string())
}

/// Present means a time: an empty `from=` or `to=` is refused, not read as absent.
fn time(raw: Option<&str>, field: &str, errors: &mut FieldErrors) -> Option<DateTime<Utc>> {
    let raw = raw?;
    match DateTime::parse_from_rfc3339(raw) {
        Ok(at) => Some(at.with_timezone(&Utc)),
        Err(_) => {
            errors.add(field, "must be an RFC 3339 time, e.g. 2026-11-28T10:00:00Z");
            None
        }
    }
}

fn position(raw: Option<&str>, field: &str, errors: &mut FieldErrors) -> Option<i64> {
    let raw = raw?;
    match raw.parse::<i64>() {
        Ok(p) if p >= 0 => Some(p),
        _ => {
            errors.add(field, "must be a log position (a whole number, 0 or more)");
            None
        }
    }
}

/// The cursor of a page of the log: the last position it held.
fn encode_position(position: i64) -> String {
    pagination::encode_keyset(position as f64, Uuid::nil())
}

/// The event log, filtered, oldest first, in pages (AUDITOR, ADMIN).
#[utoipa::path(get, path = "/events", tag = "audit", security(("bearer" = [])),
    params(EventsParams),
    responses(
        (status = 200, description = "A page of events in global order", body = Page<AuditEvent>),
        (status = 403, description = "`forbidden`: AUDITOR or ADMIN only", body = ErrorBody),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn list_events(
    State(app): State<App>,
    auth: Can<ReadAudit>,
    RequestMeta(meta): RequestMeta,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let from_cursor = pagination::parse_keyset(params.cursor.as_deref(), &mut errors)
        .map(|(position, _)| position as i64);
    let after = position(params.after.as_deref(), "after", &mut errors);
    let aggregate_type = filter(
        params.aggregate_type.as_deref(),
        "aggregate_type",
        100,
        &mut errors,
    );
    let aggregate_id = filter(
        params.aggregate_id.as_deref(),
        "aggregate_id",
        100,
        &mut errors,
    );
    let event_type = filter(params.event_type.as_deref(), "event_type", 100, &mut errors);
    let actor = match params.actor_id.as_deref() {
        None => None,
        Some(raw) => errors.check(
            "actor_id",
            raw.parse::<Uuid>()
                .map_err(|_| "must be a UUID".to_string()),
        ),
    };
    let from = time(params.from.as_deref(), "from", &mut errors);
    let to = time(params.to.as_deref(), "to", &mut errors);
    let reason = filter(params.reason.as_deref(), "reason", 500, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    tracing::info!(
        target: "audit_access",
        auditor = %auth.user_id,
        role = auth.role.as_str(),
        reason = reason.as_deref().unwrap_or(""),
        "audit query of the event log"
    );
    let subject = actor.or_else(|| {
        aggregate_type
            .as_deref()
            .filter(|t| t.eq_ignore_ascii_case("user"))
            .and(aggregate_id.as_deref())
            .and_then(|id| id.parse().ok())
    });
    let details = AccessDetails {
        kind: AccessKind::AuditEvents,
        subject_id: subject,
        reason: reason.clone(),
        query: serde_json::json!({
            "aggregate_type": aggregate_type, "aggregate_id": aggregate_id,
            "actor_id": actor, "event_type": event_type, "from": from, "to": to,
            "after": from_cursor.or(after),
        }),
    };
    crate::access::record(&app, &auth.metadata(meta), &details).await?;
    // Only the filters given, so the planner picks the index that serves them.
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM events WHERE global_position > "
    ));
    query.push_bind(from_cursor.or(after).unwrap_or(0));
    if let Some(kind) = &aggregate_type {
        // Case-insensitive, through `events_type_order` (see its migration).
        query
            .push(" AND lower(aggregate_type) = lower(")
            .push_bind(kind)
            .push(")");
    }
    if let Some(id) = &aggregate_id {
        query.push(" AND aggregate_id = ").push_bind(id);
    }
    if let Some(kind) = &event_type {
        query.push(" AND event_type = ").push_bind(kind);
    }
    if let Some(actor) = actor {
        query
            .push(" AND metadata->>'actor_id' = ")
            .push_bind(actor.to_string());
    }
    // Times do not order the log (positions are in commit order; timestamps are taken when a
    // transaction starts, or given by an import), so a time window filters the scan in global
    // order. It cannot be turned into position bounds without trusting timestamps to follow
    // commit order, which imported events need not do.
    if let Some(from) = from {
        query.push(" AND timestamp >= ").push_bind(from);
    }
    if let Some(to) = to {
        query.push(" AND timestamp < ").push_bind(to);
    }
    query
        .push(" ORDER BY global_position LIMIT ")
        .push_bind(limit + 1);
    let rows: Vec<EventRow> = query.build_query_as().fetch_all(&app.pool).await?;
    let more = rows.len() as i64 > limit;
    let mut items: Vec<AuditEvent> = rows
        .into_iter()
        .take(limit as usize)
        .map(AuditEvent::from)
        .collect();
    open_page(&app, &mut items).await?;
    let next_cursor = items
        .last()
        .filter(|_| more)
        .map(|last| encode_position(last.position));
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// The state as of this time (RFC 3339): built from the events before it. Now when absent.
    #[param(value_type = Option<DateTime<Utc>>)]
    at: Option<String>,
    /// Why the auditor looks (at most 500 characters).
    reason: Option<String>,
    /// Page size of `events`, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `events.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One aggregate's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateHistory {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The time the state is taken at (`at`, or now).
    pub at: DateTime<Utc>,
    /// How many events the state folds (its version then).
    pub version: i64,
    /// The aggregate's state as of `at`, as its own code rebuilds it from its events
    /// (credentials redacted).
    #[schema(value_type = Object)]
    pub state: Value,
    /// Its events up to `at`, oldest first, in pages.
    pub events: Page<AuditEvent>,
}

/// The aggregate types auditors may rebuild, with a fold for each.
fn fold(aggregate_type: &str, rows: &[EventRow]) -> Option<Result<Value, anyhow::Error>> {
    fn state<A: Versioned + serde::Serialize>(rows: &[EventRow]) -> Result<Value, anyhow::Error> {
        let mut aggregate = A::default();
        for row in rows {
            let event = upcast::decode::<A>(&row.event_type, &row.event_version, &row.payload)?;
            aggregate.apply(event);
        }
        Ok(redact(serde_json::to_value(&aggregate)?))
    }
    Some(match aggregate_type {
        "User" => state::<User>(rows),
        "Plant" => state::<Plant>(rows),
        "Sitting" => state::<Sitting>(rows),
        "Advice" => state::<Advice>(rows),
        "Conversation" => state::<Conversation>(rows),
        "Message" => state::<Message>(rows),
        "ReadMark" => state::<ReadMark>(rows),
        "Access" => state::<Access>(rows),
        _ => return None,
    })
}

/// One aggregate's event stream and its state, now or as of `at` (AUDITOR, ADMIN).
#[utoipa::path(get, path = "/aggregates/{type}/{id}", tag = "audit", security(("bearer" = [])),
    params(
        ("type" = String, Path, description = "The aggregate type: `User`, `Plant`, `Sitting`, `Advice`, `Conversation`, `Message` or `ReadMark`"),
        ("id" = String, Path, description = "The aggregate's id"),
        HistoryParams),
    responses(
        (status = 200, description = "The stream and the state", body = AggregateHistory),
        (status = 403, description = "`forbidden`: AUDITOR or ADMIN only", body = ErrorBody),
        (status = 404, description = "No such aggregate type, or no event of this aggregate (before `at`)", body = ErrorBody),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn aggregate_history(
    State(app): State<App>,
    auth: Can<ReadAudit>,
    RequestMeta(meta): RequestMeta,
    ApiPath((aggregate_type, aggregate_id)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<AggregateHistory>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let after = pagination::parse_keyset(params.cursor.as_deref(), &mut errors)
        .map_or(0, |(sequence, _)| sequence as i64);
    let at = time(params.at.as_deref(), "at", &mut errors);
    let reason = filter(params.reason.as_deref(), "reason", 500, &mut errors);
    if aggregate_id.chars().count() > 100 {
        errors.add("id", "must be at most 100 characters");
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    tracing::info!(
        target: "audit_access",
        auditor = %auth.user_id,
        role = auth.role.as_str(),
        aggregate_type = %aggregate_type,
        aggregate_id = %aggregate_id,
        reason = reason.as_deref().unwrap_or(""),
        "audit query of an aggregate"
    );
    let details = AccessDetails {
        kind: AccessKind::AuditAggregate,
        subject_id: aggregate_type
            .eq_ignore_ascii_case("user")
            .then(|| aggregate_id.parse().ok())
            .flatten(),
        reason: reason.clone(),
        query: serde_json::json!({
            "aggregate_type": aggregate_type, "aggregate_id": aggregate_id, "at": at,
        }),
    };
    crate::access::record(&app, &auth.metadata(meta), &details).await?;
    let at = at.unwrap_or_else(Utc::now);
    // The whole stream up to `at` (streams are short: messages and read marks are streams of
    // their own), folded by the aggregate's own `apply`.
    // The stream by its primary key; `at` is applied here (a time condition in SQL tempts the
    // planner into the log-wide BRIN index).
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
          ORDER BY sequence"
    ))
    .bind(&aggregate_type)
    .bind(&aggregate_id)
    .fetch_all(&app.pool)
    .await?;
    let rows: Vec<EventRow> = rows.into_iter().filter(|r| r.timestamp <= at).collect();
    let mut state = match fold(&aggregate_type, &rows) {
        None => return Err(ApiError::NotFound("aggregate type")),
        Some(state) => state?,
    };
    // Erased people as the events show them: pseudonyms, not their ids.
    pseudonymise_value(&app, &mut state).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("aggregate"));
    }
    let version = rows.last().map_or(0, |r| r.sequence);
    let mut page: Vec<AuditEvent> = rows
        .into_iter()
        .filter(|r| r.sequence > after)
        .take(limit as usize + 1)
        .map(AuditEvent::from)
        .collect();
    open_page(&app, &mut page).await?;
    let events = pagination::keyset_page(page, limit, |e| (e.sequence as f64, Uuid::nil()));
    Ok(Json(AggregateHistory {
        aggregate_type,
        aggregate_id,
        at,
        version,
        state,
        events,
    }))
}
