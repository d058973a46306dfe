//! `Idempotency-Key` on creating POSTs: the same key from the same user within 24 h returns the
//! first answer and appends nothing more (API.md, conventions).
//!
//! A route opts in with `.layer(from_fn_with_state(app.clone(), idempotency::idempotent))` on its
//! POST. Keys live in PostgreSQL (`idempotency_keys`), so every API instance sees them. A request
//! first claims its key (a row with no answer yet), runs, then stores its answer on that row:
//! - a retry of an answered request gets the stored status, content type and body back with
//!   `Idempotent-Replayed: true`, and no handler runs;
//! - the same key with another method, path or body: 422 `idempotency_key_reused`;
//! - a retry while the first request still runs: 409 `request_in_progress` with `Retry-After: 1`.
//!
//! Sessions first: before any key is claimed or any answer replayed, the caller is authenticated
//! exactly as the handler would ([`AuthUser`]): a token whose session was logged out, revoked or
//! ended by disabling the account gets 401 (never the stored answer), and the caller's role is
//! the one the session has now.
//!
//! Answers below 500 are stored (201, 202 pending, 4xx domain and validation errors), except 401,
//! 408 and 429, which say the request was not judged at all; on those and on 5xx the claim is
//! released so a retry runs again, unless its command committed (a 503 `outcome_unknown`, or a
//! failure after the commit): then the retry answers that committed outcome (see [`RELEASE`]).
//! A stored 4xx is replayed only to the role that got it: after a role change the request runs
//! again (a refusal changed nothing, and the new role may be answered otherwise), while a success
//! is replayed to any role (it happened). Expired keys (24 h) are swept by one claim in
//! [`SWEEP_ONE_IN`], in the background.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, OriginalUri, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use super::token::AuthUser;
use crate::events::{self, claim::Prior};
use crate::App;

/// The request header carrying the key.
pub const KEY_HEADER: &str = "idempotency-key";
/// The response header marking a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const MAX_KEY_LEN: usize = 255;
/// Seconds after the request time-out (`REQUEST_TIMEOUT_SECS`) before a claim with no answer is
/// taken as abandoned; covers the database round trips around the handler.
const ABANDON_GRACE_SECS: u64 = 5;
/// Largest answer kept for replay; creating POSTs answer with one resource, far below this.
const MAX_STORED_BODY_BYTES: usize = 1024 * 1024;
/// One claim in this many also deletes the keys older than 24 h.
pub const SWEEP_ONE_IN: u32 = 100;

/// Claims a key, or takes over a row that expired (24 h) or was abandoned: no answer after the
/// request time-out plus a grace, for the same request (the time-out layer wraps this
/// middleware, so no live request holds a claim that old); or released by a request that ended
/// in a 5xx after its command committed; or a refusal (4xx) of the same request given to another
/// role than the caller's now. A takeover of an unanswered claim keeps what the earlier attempt
/// committed (`committed_position`), so the retry answers that outcome instead of running again.
const CLAIM: &str = "\
    INSERT INTO idempotency_keys AS k (user_id, key, fingerprint, role) VALUES ($1, $2, $3, $5) \
    ON CONFLICT (user_id, key) DO UPDATE \
       SET fingerprint = EXCLUDED.fingerprint, status = NULL, content_type = NULL, body = NULL, \
           role = EXCLUDED.role, created_at = now(), released = false, \
           committed_position = CASE WHEN k.status IS NULL \
                                      AND k.created_at >= now() - interval '24 hours' \
                                     THEN k.committed_position END \
     WHERE k.created_at < now() - interval '24 hours' \
        OR (k.status IS NULL AND k.fingerprint = EXCLUDED.fingerprint \
            AND (k.released OR k.created_at < now() - make_interval(secs => $4))) \
        OR (k.status >= 400 AND k.fingerprint = EXCLUDED.fingerprint \
            AND k.role IS DISTINCT FROM EXCLUDED.role) \
    RETURNING created_at, committed_position";

/// Frees a claim whose request ended without an outcome (5xx, 401, 408, 429), so a retry is not
/// kept waiting: released, so a retry takes it over at once and answers what was committed, if
/// anything was ([`FORGET`] then deletes it when nothing was).
///
/// "Did the command commit?" is read from the claim's row after locking it: an append under the
/// claim locks the row in its own statement and holds it to its commit (see
/// [`crate::events::claim`]), so an append whose connection broke on our side while its backend
/// lives on (a partition, a time-out) is waited for here, and one that had not locked it yet
/// finds the row changed and inserts nothing.
const RELEASE: &str = "\
    UPDATE idempotency_keys SET released = true \
     WHERE user_id = $1 AND key = $2 AND created_at = $3 AND status IS NULL \
    RETURNING committed_position IS NOT NULL";

/// Deletes a released claim whose command did not commit, so that the key is free again (a retry
/// may even change the body). A row locked by an append that commits meanwhile is kept.
const FORGET: &str = "\
    DELETE FROM idempotency_keys \
     WHERE user_id = $1 AND key = $2 AND created_at = $3 AND status IS NULL \
       AND committed_position IS NULL";

/// How long a release that failed (the database was unreachable) is tried again, once a second.
const RELEASE_RETRY_SECS: u64 = 30;

/// Makes a creating POST idempotent when it carries `Idempotency-Key`.
///
/// Without the header, with another method or without a bearer token (the handler then answers
/// 401) the request passes untouched. With a token, the caller is authenticated first, as the
/// handler would: a refusal (401 for a session that ended, 403 `mfa_enrollment_required`, 503)
/// is answered as is, with nothing claimed or replayed.
///
/// No window of a duplicate: the command's append runs only while it holds the claim and marks
/// it, in its own statement (see [`crate::events::claim`]), so a request that committed but
/// never stored its answer (its connection failed: 503 `outcome_unknown`; the time-out layer
/// dropped it; the process died) leaves a claim that says so, and one whose backend commits
/// only after the claim was freed (a partition) inserts nothing. A retry after a release (at once) or after
/// `REQUEST_TIMEOUT_SECS` + 5 s (a process that died) answers the committed outcome (same
/// resource, no second event); a claim whose command did not commit runs again. Before that,
/// retries get 409.
pub async fn idempotent(Extension(app): Extension<App>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let mut values = request.headers().get_all(KEY_HEADER).iter();
    let Some(first) = values.next() else {
        return next.run(request).await;
    };
    let key = parse_key(first.as_bytes(), values.next().is_some());
    if !has_bearer(request.headers()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let auth = match AuthUser::from_request_parts(&mut parts, &app).await {
        Ok(auth) => auth,
        Err(refused) => return refused.into_response(),
    };
    let request = Request::from_parts(parts, body);
    let outcome = match key {
        Ok(key) => run(&app, &auth, &key, request, next).await,
        Err(err) => Err(err),
    };
    outcome.unwrap_or_else(IntoResponse::into_response)
}

/// 1 to 255 visible ASCII characters, sent once.
fn parse_key(raw: &[u8], repeated: bool) -> Result<String, ApiError> {
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if repeated || raw.is_empty() || raw.len() > MAX_KEY_LEN || !raw.iter().all(visible) {
        return Err(ApiError::Unprocessable {
            code: "invalid_idempotency_key",
            message: "`Idempotency-Key` must be one value of 1 to 255 visible ASCII characters"
                .into(),
        });
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

/// Whether the request carries a bearer token (valid or not: [`AuthUser`] judges it).
fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

async fn run(
    app: &App,
    auth: &AuthUser,
    key: &str,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let user_id = auth.user_id;
    let role = auth.role.as_str();
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, app.config.max_json_body_bytes).await?;
    // Nested routers see their own part of the path; the fingerprint needs the whole one.
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map(|original| &original.0)
        .unwrap_or(&parts.uri);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let fingerprint = fingerprint(&parts.method, path, &bytes);

    let (claimed_at, committed) = match claim(app, user_id, role, key, &fingerprint).await? {
        Claim::Ours(claimed_at, committed) => (claimed_at, committed),
        Claim::Done(response) => return Ok(response),
    };
    let prior = match committed {
        Some(position) => match Prior::load(&app.pool, position).await {
            Ok(prior) => prior,
            Err(err) => {
                release(app, user_id, key, claimed_at).await;
                return Err(err.into());
            }
        },
        None => None,
    };
    if prior.is_some() {
        metrics::counter!("idempotent_resolved_total").increment(1);
    }
    let scope = events::claim::Claim {
        user_id,
        key: key.to_string(),
        claimed_at,
        prior,
    };
    let response = events::claim::scope(
        scope,
        next.run(Request::from_parts(parts, Body::from(bytes))),
    )
    .await;
    Ok(finish(app, user_id, key, claimed_at, response).await)
}

/// The body, at most `limit` bytes (the JSON body limit): 413 beyond. Read chunk by chunk, since
/// `to_bytes` reports a too-large body and a broken one alike.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| ApiError::BadRequest {
            code: "unreadable_body",
            message: format!("the request body could not be read: {err}"),
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge {
                message: "request body is too large".into(),
            });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

/// SHA-256 of method, path (with query) and body.
fn fingerprint(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().to_vec()
}

enum Claim {
    /// This request runs; its claim row carries this `created_at`, and the position of what an
    /// earlier attempt under the key committed, if it did.
    Ours(DateTime<Utc>, Option<i64>),
    /// Answered without running: a replay, or 409 while the first request runs.
    Done(Response),
}

type StoredRow = (
    Vec<u8>,
    Option<i16>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
);

async fn claim(
    app: &App,
    user_id: Uuid,
    role: &str,
    key: &str,
    fingerprint: &[u8],
) -> Result<Claim, ApiError> {
    let abandoned_after = (app.config.request_timeout_secs + ABANDON_GRACE_SECS) as f64;
    // A row may vanish between the two statements (a 5xx released it, or the sweep): claim again.
    for _ in 0..3 {
        let claimed: Option<(DateTime<Utc>, Option<i64>)> = sqlx::query_as(CLAIM)
            .bind(user_id)
            .bind(key)
            .bind(fingerprint)
            .bind(abandoned_after)
            .bind(role)
            .fetch_optional(&app.pool)
            .await?;
        if let Some((claimed_at, committed)) = claimed {
            if sweep_now() {
                sweep(app.clone());
            }
            return Ok(Claim::Ours(claimed_at, committed));
        }
        let row: Option<StoredRow> = sqlx::query_as(
            "SELECT fingerprint, status, content_type, body, role FROM idempotency_keys \
              WHERE user_id = $1 AND key = $2",
        )
        .bind(user_id)
        .bind(key)
        .fetch_optional(&app.pool)
        .await?;
        match row {
            None => continue,
            Some((stored, ..)) if stored != fingerprint => {
                return Err(ApiError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was sent with a different request".into(),
                })
            }
            // A refusal given to another role, stored between our two statements: claim again.
            Some((_, Some(status), .., stored_role))
                if status >= 400 && stored_role.as_deref() != Some(role) =>
            {
                continue
            }
            Some((_, Some(status), content_type, body, _)) => {
                metrics::counter!("idempotent_replays_total").increment(1);
                return replay(status, content_type, body.unwrap_or_default()).map(Claim::Done);
            }
            Some((_, None, ..)) => break,
        }
    }
    let mut busy = ApiError::conflict(
        "request_in_progress",
        "a request with this Idempotency-Key is still running; retry shortly",
    )
    .into_response();
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(Claim::Done(busy))
}

/// The stored first answer.
fn replay(status: i16, content_type: Option<String>, body: Vec<u8>) -> Result<Response, ApiError> {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| anyhow::anyhow!("stored idempotent status {status} is not HTTP"))?;
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    if let Some(value) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(response)
}

/// What a handler wants stored for replay instead of the answer it sends (a response
/// extension): the same outcome without what must not rest in `idempotency_keys` (a home's
/// exact place and instructions).
#[derive(Clone)]
pub struct StoredAnswer(pub Bytes);

/// Whether an answer is the request's outcome, to be replayed.
fn is_outcome(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

/// Stores the answer on our claim, or releases the claim when the answer is not an outcome.
async fn finish(
    app: &App,
    user_id: Uuid,
    key: &str,
    claimed_at: DateTime<Utc>,
    response: Response,
) -> Response {
    if !is_outcome(response.status()) {
        release(app, user_id, key, claimed_at).await;
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let instead = parts.extensions.remove::<StoredAnswer>();
    let bytes = match axum::body::to_bytes(body, MAX_STORED_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => {
            release(app, user_id, key, claimed_at).await;
            return ApiError::Internal(anyhow::anyhow!("buffering an idempotent answer: {err}"))
                .into_response();
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let stored = sqlx::query(
        "UPDATE idempotency_keys SET status = $4, content_type = $5, body = $6 \
          WHERE user_id = $1 AND key = $2 AND created_at = $3 AND status IS NULL",
    )
    .bind(user_id)
    .bind(key)
    .bind(claimed_at)
    .bind(parts.status.as_u16() as i16)
    .bind(content_type)
    .bind(
        instead
            .as_ref()
            .map_or(bytes.as_ref(), |stored| stored.0.as_ref()),
    )
    .execute(&app.pool)
    .await;
    if let Err(err) = stored {
        // The work is done; the client gets its answer. A retry meets the bare claim (409, then
        // a rerun once it counts as abandoned).
        tracing::warn!(error = %err, %user_id, "idempotent answer not stored");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Frees our claim (see [`RELEASE`]) so that a retry is not kept waiting. When the database
/// cannot be reached, tried again in the background for [`RELEASE_RETRY_SECS`]; until then a
/// retry gets 409 `request_in_progress`.
async fn release(app: &App, user_id: Uuid, key: &str, claimed_at: DateTime<Utc>) {
    if let Err(err) = release_once(&app.pool, user_id, key, claimed_at).await {
        tracing::warn!(error = %err, %user_id, "idempotency claim not released; retrying");
        let pool = app.pool.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            for _ in 0..RELEASE_RETRY_SECS {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if release_once(&pool, user_id, &key, claimed_at).await.is_ok() {
                    return;
                }
            }
            tracing::warn!(%user_id, "idempotency claim not released; it will count as abandoned");
        });
    }
}

async fn release_once(
    pool: &sqlx::PgPool,
    user_id: Uuid,
    key: &str,
    claimed_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let committed: Option<bool> = sqlx::query_scalar(RELEASE)
        .bind(user_id)
        .bind(key)
        .bind(claimed_at)
        .fetch_optional(pool)
        .await?;
    if committed == Some(false) {
        sqlx::query(FORGET)
            .bind(user_id)
            .bind(key)
            .bind(claimed_at)
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn sweep_now() -> bool {
    rand::thread_rng().gen_ratio(1, SWEEP_ONE_IN)
}

/// Deletes expired keys in the background.
fn sweep(app: App) {
    tokio::spawn(async move {
        match sweep_expired(&app.pool).await {
            Ok(rows) => tracing::debug!(rows, "expired idempotency keys"),
            Err(err) => tracing::warn!(error = %err, "sweeping idempotency keys failed"),
        }
    });
}

/// Deletes the keys older than 24 h, with the answers they kept (which may quote a message's
/// text): run by claims now and then, and by the hourly retention job, so no stored answer
/// outlives its day even when no one sends a key.
pub async fn sweep_expired(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let swept =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await?;
    Ok(swept.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_value_of_visible_ascii() {
        assert!(parse_key(b"a", false).is_ok());
        assert!(parse_key("k".repeat(255).as_bytes(), false).is_ok());
        assert!(parse_key(b"", false).is_err());
        assert!(parse_key("k".repeat(256).as_bytes(), false).is_err());
        assert!(parse_key(b"with space", false).is_err());
        assert!(parse_key(b"tab\there", false).is_err());
        assert!(parse_key("caf\u{e9}".as_bytes(), false).is_err());
        assert!(parse_key(b"fine", true).is_err(), "sent twice");
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_body() {
        let base = fingerprint(&Method::POST, "/api/plants", b"{}");
        assert_eq!(base, fingerprint(&Method::POST, "/api/plants", b"{}"));
        assert_ne!(base, fingerprint(&Method::PUT, "/api/plants", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/api/sittings", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/api/plants", b"{ }"));
    }

    #[test]
    fn only_outcomes_are_replayed() {
        for stored in [201, 202, 400, 403, 404, 409, 413, 422] {
            assert!(
                is_outcome(StatusCode::from_u16(stored).unwrap()),
                "{stored}"
            );
        }
        for released in [401, 408, 429, 500, 503] {
            assert!(
                !is_outcome(StatusCode::from_u16(released).unwrap()),
                "{released}"
            );
        }
    }
}
