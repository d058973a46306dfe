//! Advice (conseils): botanists advise on plants, revise their advice (every edit a new version),
//! and validate or reject each other's; authors withdraw theirs, moderators (ADMIN) hide it.
//! Readers: whoever may see the plant (its owner, botanists, admins, the sitter while the sitting
//! runs). Hidden advice is shown to admins only, with the moderation record; users never see it.
//!
//! Routes: `/api/plants/{id}/advice` (give, list), `/api/advice/{id}` (revise, remove),
//! `/api/advice/{id}/versions`, `/api/advice/{id}/validate|reject`; the botanists' own pages are in
//! `botanist.rs`.

use std::collections::HashMap;

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
use super::guard::{Can, RemoveAdvice, WriteAdvice};
use super::pagination::{self, PageParams};
use super::token::AuthUser;
use crate::commands::advice::{Advice, AdviceCommand, SittingFacts};
use crate::commands::plant::Plant;
use crate::commands::sitting::Sitting;
use crate::commands::values::{optional_text, text, FieldErrors};
use crate::events::advice::{Priority, Verdict};
use crate::events::store::Committed;
use crate::events::user::Role;
use crate::App;

const ADVICE_ID: &str = "The advice's id";
const MAX_BODY: usize = 5000;
const MAX_COMMENT: usize = 1000;
const MAX_REASON: usize = 500;

/// Routes under `/api/plants` (merged into the plants router).
pub fn plant_routes() -> OpenApiRouter<App> {
    let (schemas, paths, give) = routes!(give_advice);
    let give = give.layer(axum::middleware::from_fn(super::idempotency::idempotent));
    OpenApiRouter::new()
        .routes((schemas, paths, give))
        .routes(routes!(list_plant_advice))
}

/// Routes under `/api/advice`.
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(revise_advice, remove_advice))
        .routes(routes!(list_versions))
        .routes(routes!(validate_advice))
        .routes(routes!(reject_advice))
}

/// How soon an advice should be acted on. `urgent` advice is mailed to the plant's owner and
/// sitter.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityView {
    Normal,
    Urgent,
    FollowUp,
}

impl From<Priority> for PriorityView {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Normal => PriorityView::Normal,
            Priority::Urgent => PriorityView::Urgent,
            Priority::FollowUp => PriorityView::FollowUp,
        }
    }
}

fn priority_of(stored: &str) -> PriorityView {
    Priority::parse(stored).unwrap_or_default().into()
}

/// Where the other botanists stand on an advice: `pending` (no verdict yet), `validated` (more
/// validations than rejections), `rejected` (more rejections), `contested` (as many of each).
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationView {
    #[schema(pattern = "^(pending|validated|rejected|contested)$")]
    pub status: String,
    pub validations: i32,
    pub rejections: i32,
}

impl ValidationView {
    pub fn new(validations: i32, rejections: i32) -> Self {
        let status = match (validations, rejections) {
            (0, 0) => "pending",
            (v, r) if v > r => "validated",
            (v, r) if r > v => "rejected",
            _ => "contested",
        };
        ValidationView {
            status: status.to_string(),
            validations,
            rejections,
        }
    }
}

/// Another botanist's verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdviceReviewView {
    pub botanist_id: Uuid,
    pub botanist_name: Option<String>,
    #[schema(pattern = "^(validated|rejected)$")]
    pub verdict: String,
    /// The version (revision) the verdict was given on.
    pub revision: i32,
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Why a moderator hid an advice (shown to admins only).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModerationView {
    pub hidden_by: Uuid,
    pub reason: String,
    pub hidden_at: DateTime<Utc>,
}

/// An advice in its current version.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdviceView {
    pub id: Uuid,
    pub plant_id: Uuid,
    pub sitting_id: Option<Uuid>,
    pub author_id: Uuid,
    pub author_name: Option<String>,
    pub priority: PriorityView,
    /// The current version's text (`null` once its author's data was erased).
    pub body: Option<String>,
    /// The current version: 1 when given, +1 per edit.
    pub revision: i32,
    pub validation: ValidationView,
    /// Every other botanist's verdict, oldest first.
    pub reviews: Vec<AdviceReviewView>,
    /// Set on hidden advice, which only admins see.
    pub moderation: Option<ModerationView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The advice's event-stream version.
    pub version: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct AdviceRow {
    pub id: Uuid,
    pub plant_id: Uuid,
    pub sitting_id: Option<Uuid>,
    pub author_id: Uuid,
    pub author_name: Option<String>,
    pub priority: String,
    pub body: Option<String>,
    pub revision: i32,
    pub state: String,
    pub validations: i32,
    pub rejections: i32,
    pub hidden_by: Option<Uuid>,
    pub hidden_reason: Option<String>,
    pub hidden_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

pub(crate) const COLUMNS: &str = "a.id, a.plant_id, a.sitting_id, a.author_id, \
     u.display_name AS author_name, a.priority, a.body, a.revision, a.state, a.validations, \
     a.rejections, a.hidden_by, a.hidden_reason, a.hidden_at, a.created_at, a.updated_at, a.version";

pub(crate) const FROM: &str = "advice a LEFT JOIN users u ON u.id = a.author_id";

impl AdviceRow {
    fn into_view(self, reviews: Vec<AdviceReviewView>) -> AdviceView {
        let moderation = match (self.hidden_by, self.hidden_reason, self.hidden_at) {
            (Some(hidden_by), Some(reason), Some(hidden_at)) if self.state == "hidden" => {
                Some(ModerationView {
                    hidden_by,
                    reason,
                    hidden_at,
                })
            }
            _ => None,
        };
        AdviceView {
            id: self.id,
            plant_id: self.plant_id,
            sitting_id: self.sitting_id,
            author_id: self.author_id,
            author_name: self.author_name,
            priority: priority_of(&self.priority),
            body: self.body,
            revision: self.revision,
            validation: ValidationView::new(self.validations, self.rejections),
            reviews,
            moderation,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }
}

/// Advice rows with their reviews, in the rows' order.
pub(crate) async fn with_reviews(
    pool: &PgPool,
    rows: Vec<AdviceRow>,
) -> Result<Vec<AdviceView>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        advice_id: Uuid,
        botanist_id: Uuid,
        botanist_name: Option<String>,
        verdict: String,
        revision: i32,
        comment: Option<String>,
        created_at: DateTime<Utc>,
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let reviews: Vec<Row> = sqlx::query_as(
        "SELECT r.advice_id, r.botanist_id, u.display_name AS botanist_name, r.verdict, \
                r.revision, r.comment, r.created_at \
           FROM advice_reviews r LEFT JOIN users u ON u.id = r.botanist_id \
          WHERE r.advice_id = ANY($1) ORDER BY r.created_at, r.botanist_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_advice: HashMap<Uuid, Vec<AdviceReviewView>> = HashMap::new();
    for r in reviews {
        by_advice
            .entry(r.advice_id)
            .or_default()
            .push(AdviceReviewView {
                botanist_id: r.botanist_id,
                botanist_name: r.botanist_name,
                verdict: r.verdict,
                revision: r.revision,
                comment: r.comment,
                created_at: r.created_at,
            });
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let reviews = by_advice.remove(&row.id).unwrap_or_default();
            row.into_view(reviews)
        })
        .collect())
}

/// Whether the caller sees hidden advice (moderators).
fn sees_hidden(auth: &AuthUser) -> bool {
    auth.role == Role::Admin
}

/// The advice if the caller may see it: its plant is visible to them, and it is active (or
/// hidden, for admins). 404 otherwise.
async fn visible_advice(app: &App, auth: &AuthUser, id: Uuid) -> Result<AdviceRow, ApiError> {
    let row: Option<AdviceRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM {FROM} WHERE a.id = $1"))
            .bind(id)
            .fetch_optional(&app.pool)
            .await?;
    let row = row
        .filter(|r| r.state == "active" || (r.state == "hidden" && sees_hidden(auth)))
        .ok_or(ApiError::NotFound("advice"))?;
    super::plants::visible_plant(app, auth, row.plant_id)
        .await
        .map_err(|_| ApiError::NotFound("advice"))?;
    Ok(row)
}

async fn respond(
    app: &App,
    auth: &AuthUser,
    id: Uuid,
    committed: &Committed,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if !super::settle(app, "Advice", committed).await {
        return Ok(super::accepted(id, committed));
    }
    let row = visible_advice(app, auth, id).await?;
    let view = with_reviews(&app.pool, vec![row])
        .await?
        .pop()
        .ok_or(ApiError::NotFound("advice"))?;
    Ok((status, Json(super::positioned(view, committed))).into_response())
}

fn parse_priority(raw: Option<&str>, errors: &mut FieldErrors) -> Option<Priority> {
    raw.and_then(|p| errors.check("priority", Priority::parse(p)))
}

/// A new advice.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GiveAdviceBody {
    #[schema(min_length = 1, max_length = 5000)]
    body: String,
    /// `normal` when absent.
    #[schema(value_type = Option<PriorityView>)]
    priority: Option<String>,
    /// A sitting of this plant (open, accepted or in progress) the advice is given for.
    #[schema(value_type = Option<Uuid>)]
    sitting_id: Option<String>,
}

/// Advises on a plant (BOTANIST).
#[utoipa::path(post, path = "/{id}/advice", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "1-255 visible ASCII characters: the same key from the same user within 24 h answers the first answer again")),
    request_body = GiveAdviceBody,
    responses(
        (status = 201, description = "The advice", body = Positioned<AdviceView>),
        (status = 202, description = "Given; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: BOTANIST only", body = ErrorBody),
        (status = 404, description = "No such plant", body = ErrorBody),
        (status = 409, description = "`sitting_closed`: that sitting is over; `request_in_progress`: the first request with this Idempotency-Key is still running", body = ErrorBody),
    ))]
async fn give_advice(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
    RequestMeta(meta): RequestMeta,
    ApiPath(plant_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<GiveAdviceBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let text_body = errors.check("body", text(&body.body, 1, MAX_BODY));
    let priority = parse_priority(body.priority.as_deref(), &mut errors).unwrap_or_default();
    let sitting_id = body
        .sitting_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|raw| {
            errors.check(
                "sitting_id",
                raw.parse::<Uuid>()
                    .map_err(|_| "must be a UUID".to_string()),
            )
        });
    let Some(text_body) = text_body.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    // Facts the advice cannot know, from their own streams: who owns the plant, and the named
    // sitting. Who sits the plant now, when no sitting is named, comes from the sittings read
    // model (the plant's stream does not know its sittings).
    let plant_owner_id = app
        .store
        .load_state::<Plant>(&plant_id.to_string())
        .await?
        .and_then(|plant| plant.owner_id());
    let sitting = match sitting_id {
        None => None,
        Some(id) => {
            let facts = app
                .store
                .load_state::<Sitting>(&id.to_string())
                .await?
                .map(|s| SittingFacts {
                    status: s.status(),
                    plant_ids: s.plant_ids().to_vec(),
                    sitter_id: s.sitter_id(),
                });
            Some((id, facts))
        }
    };
    let current_sitter_id = match sitting {
        Some(_) => None,
        None => current_sitter(&app.pool, plant_id).await?,
    };
    let sealed = app.keys.cipher(auth.user_id).await?.seal(&text_body);
    let id = crate::events::claim::new_id("Advice");
    let command = AdviceCommand::GiveAdvice {
        author: auth.actor(),
        plant_id,
        plant_owner_id,
        sitting,
        current_sitter_id,
        priority,
        body: sealed,
    };
    let committed = app
        .store
        .execute_new::<Advice>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::CREATED).await
}

/// The sitter of an accepted or running sitting of the plant (a running one first).
async fn current_sitter(pool: &PgPool, plant_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s.sitter_id FROM sittings s JOIN sitting_plants p ON p.sitting_id = s.id \
          WHERE p.plant_id = $1 AND s.sitter_id IS NOT NULL \
            AND s.status IN ('accepted', 'in_progress') \
          ORDER BY s.status = 'in_progress' DESC, s.starts_on LIMIT 1",
    )
    .bind(plant_id)
    .fetch_optional(pool)
    .await
}

/// The advice on a plant, newest first, each in its current version with its validation status
/// (whoever may see the plant).
#[utoipa::path(get, path = "/{id}/advice", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id"), PageParams),
    responses(
        (status = 200, description = "A page of advice", body = Page<AdviceView>),
        (status = 404, description = "No such plant, or not one the caller may see", body = ErrorBody),
    ))]
async fn list_plant_advice(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(plant_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<AdviceView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    super::plants::visible_plant(&app, &auth, plant_id).await?;
    let rows: Vec<AdviceRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {FROM} \
          WHERE a.plant_id = $1 AND (a.state = 'active' OR (a.state = 'hidden' AND $2)) \
            AND ($3::uuid IS NULL OR a.id < $3) \
          ORDER BY a.id DESC LIMIT $4"
    ))
    .bind(plant_id)
    .bind(sees_hidden(&auth))
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    let views = with_reviews(&app.pool, rows).await?;
    Ok(Json(pagination::page(views, limit, |a: &AdviceView| a.id)))
}

/// A new version of an advice.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviseAdviceBody {
    #[schema(min_length = 1, max_length = 5000)]
    body: String,
    /// Unchanged when absent.
    #[schema(value_type = Option<PriorityView>)]
    priority: Option<String>,
}

/// Edits an advice (its author): a new version; earlier ones stay readable.
#[utoipa::path(patch, path = "/{id}", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = ADVICE_ID)),
    request_body = ReviseAdviceBody,
    responses(
        (status = 200, description = "The advice in its new version", body = Positioned<AdviceView>),
        (status = 202, description = "Revised; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: BOTANIST only; `not_the_author`", body = ErrorBody),
        (status = 404, description = "No such advice", body = ErrorBody),
        (status = 409, description = "`concurrent_modification`", body = ErrorBody),
    ))]
async fn revise_advice(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReviseAdviceBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let text_body = errors.check("body", text(&body.body, 1, MAX_BODY));
    let priority = parse_priority(body.priority.as_deref(), &mut errors);
    let Some(text_body) = text_body.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let command = AdviceCommand::ReviseAdvice {
        actor: auth.actor(),
        priority,
        body: app.keys.cipher(auth.user_id).await?.seal(&text_body),
    };
    let committed = app
        .store
        .execute::<Advice>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::OK).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveParams {
    /// Why a moderator hides the advice (ADMIN: required, at most 500 characters).
    reason: Option<String>,
}

/// Removes an advice: its author withdraws it; an ADMIN hides it with a `reason` (moderation,
/// recorded in the log for auditors; users no longer see it).
#[utoipa::path(delete, path = "/{id}", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = ADVICE_ID), RemoveParams),
    responses(
        (status = 204, description = "Withdrawn, or hidden"),
        (status = 202, description = "Removed; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: BOTANIST or ADMIN only; `not_the_author`", body = ErrorBody),
        (status = 404, description = "No such advice", body = ErrorBody),
        (status = 409, description = "`already_hidden`; `concurrent_modification`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `reason` missing or too long (ADMIN)", body = ErrorBody),
    ))]
async fn remove_advice(
    State(app): State<App>,
    auth: Can<RemoveAdvice>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<RemoveParams>,
) -> Result<Response, ApiError> {
    let command = if auth.role == Role::Admin {
        let mut errors = FieldErrors::new();
        let reason = errors
            .check(
                "reason",
                optional_text(params.reason.as_deref(), MAX_REASON),
            )
            .flatten();
        let Some(reason) = reason.filter(|_| errors.is_empty()) else {
            if errors.is_empty() {
                errors.add("reason", "is required to hide an advice");
            }
            return Err(ApiError::Validation(errors));
        };
        AdviceCommand::HideAdvice {
            actor: auth.actor(),
            reason,
        }
    } else {
        AdviceCommand::WithdrawAdvice {
            actor: auth.actor(),
        }
    };
    let committed = app
        .store
        .execute::<Advice>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    if !super::settle(&app, "Advice", &committed).await {
        return Ok(super::accepted(id, &committed));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One version of an advice.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AdviceVersionView {
    pub revision: i32,
    pub priority: PriorityView,
    pub body: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Every version of an advice, oldest first (whoever may see the plant).
#[utoipa::path(get, path = "/{id}/versions", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = ADVICE_ID), PageParams),
    responses(
        (status = 200, description = "A page of versions, oldest first", body = Page<AdviceVersionView>),
        (status = 404, description = "No such advice, or not one the caller may see", body = ErrorBody),
    ))]
async fn list_versions(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<AdviceVersionView>>, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        revision: i32,
        priority: String,
        body: Option<String>,
        created_at: DateTime<Utc>,
    }
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let after = pagination::parse_keyset(params.cursor.as_deref(), &mut errors)
        .map_or(0, |(revision, _)| revision as i32);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    visible_advice(&app, &auth, id).await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT revision, priority, body, created_at FROM advice_versions \
          WHERE advice_id = $1 AND revision > $2 ORDER BY revision LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    let views = rows
        .into_iter()
        .map(|r| AdviceVersionView {
            revision: r.revision,
            priority: priority_of(&r.priority),
            body: r.body,
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(pagination::keyset_page(views, limit, |v| {
        (f64::from(v.revision), id)
    })))
}

/// A verdict's comment.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    #[schema(max_length = 1000)]
    comment: Option<String>,
}

async fn review(
    app: App,
    auth: Can<WriteAdvice>,
    meta: crate::events::Metadata,
    id: Uuid,
    body: VerdictBody,
    verdict: Verdict,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let comment = errors
        .check(
            "comment",
            optional_text(body.comment.as_deref(), MAX_COMMENT),
        )
        .flatten();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // A botanist reviews only what they may see (every plant: botanists read all).
    visible_advice(&app, &auth, id).await?;
    let comment = match comment {
        Some(comment) => Some(app.keys.cipher(auth.user_id).await?.seal(&comment)),
        None => None,
    };
    let command = AdviceCommand::ReviewAdvice {
        actor: auth.actor(),
        verdict,
        comment,
    };
    let committed = app
        .store
        .execute::<Advice>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::OK).await
}

/// Validates another botanist's advice (once per botanist; never one's own).
#[utoipa::path(post, path = "/{id}/validate", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = ADVICE_ID)),
    request_body = VerdictBody,
    responses(
        (status = 200, description = "The advice with the verdict counted", body = Positioned<AdviceView>),
        (status = 202, description = "Recorded; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: BOTANIST only; `own_advice`: not one's own", body = ErrorBody),
        (status = 404, description = "No such advice", body = ErrorBody),
        (status = 409, description = "`already_reviewed`; `concurrent_modification`", body = ErrorBody),
    ))]
async fn validate_advice(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<VerdictBody>,
) -> Result<Response, ApiError> {
    review(app, auth, meta, id, body, Verdict::Validated).await
}

/// Rejects another botanist's advice, with a comment saying why (once per botanist; never
/// one's own).
#[utoipa::path(post, path = "/{id}/reject", tag = "advice", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = ADVICE_ID)),
    request_body = VerdictBody,
    responses(
        (status = 200, description = "The advice with the verdict counted", body = Positioned<AdviceView>),
        (status = 202, description = "Recorded; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: BOTANIST only; `own_advice`: not one's own", body = ErrorBody),
        (status = 404, description = "No such advice", body = ErrorBody),
        (status = 409, description = "`already_reviewed`; `concurrent_modification`", body = ErrorBody),
    ))]
async fn reject_advice(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<VerdictBody>,
) -> Result<Response, ApiError> {
    review(app, auth, meta, id, body, Verdict::Rejected).await
}
