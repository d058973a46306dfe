//! `/api/botanist`: a botanist's work queue (plants in care waiting for advice, and the plants they
//! advised) and their statistics. Both read projections (`advice_queue`, `advice`,
//! `advice_reviews`), never the log.

use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::advice::{with_reviews, AdviceRow, AdviceView, COLUMNS, FROM};
use super::docs::{ErrorBody, Page};
use super::error::ApiError;
use super::extract::ApiQuery;
use super::guard::{Can, WriteAdvice};
use super::pagination;
use crate::commands::values::FieldErrors;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(botanist_queue))
        .routes(routes!(botanist_stats))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueParams {
    /// `to_review` (default): plants of open, accepted or running sittings (not expired: the
    /// last day of an open or accepted one has not passed) that no botanist has advised since
    /// the sitting was requested; `urgent` ones first (a botanist's latest advice on
    /// the plant was urgent or asked for a follow-up), then by sitting start. `reviewed`: the
    /// plants I advised, newest advice first, with my latest advice on each.
    #[param(value_type = Option<String>, pattern = "^(to_review|reviewed)$")]
    tab: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A plant in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueItem {
    pub plant_id: Uuid,
    pub plant_name: String,
    pub species: Option<String>,
    /// `to_review`: the sitting that puts the plant in care; `reviewed`: the sitting my advice
    /// was given for, if any.
    pub sitting_id: Option<Uuid>,
    /// `to_review` only: `open`, `accepted` or `in_progress`.
    pub sitting_status: Option<String>,
    pub starts_on: Option<NaiveDate>,
    pub ends_on: Option<NaiveDate>,
    /// `to_review` only: a botanist's latest advice on this plant was urgent or asked for a
    /// follow-up.
    pub urgent: bool,
    /// `reviewed` only: my latest advice on the plant, as it stands now.
    pub my_advice: Option<AdviceView>,
}

/// The cursor of `to_review`: the last item's sort key.
fn encode_cursor(urgent: bool, starts_on: NaiveDate, sitting: Uuid, plant: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}~{starts_on}~{sitting}~{plant}",
        u8::from(urgent)
    ))
}

fn decode_cursor(raw: &str) -> Option<(bool, NaiveDate, Uuid, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let mut parts = text.split('~');
    let urgent = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let starts_on = parts.next()?.parse().ok()?;
    let sitting = parts.next()?.parse().ok()?;
    let plant = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((urgent, starts_on, sitting, plant))
}

/// The botanist's work queue: `tab=to_review` or `tab=reviewed` (BOTANIST).
#[utoipa::path(get, path = "/queue", tag = "botanists", security(("bearer" = [])),
    params(QueueParams),
    responses(
        (status = 200, description = "A page of the queue", body = Page<QueueItem>),
        (status = 403, description = "`forbidden`: BOTANIST only", body = ErrorBody),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn botanist_queue(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
    ApiQuery(params): ApiQuery<QueueParams>,
) -> Result<Json<Page<QueueItem>>, ApiError> {
    let mut errors = FieldErrors::new();
    let reviewed = match params.tab.as_deref().unwrap_or("to_review") {
        "to_review" => false,
        "reviewed" => true,
        _ => {
            errors.add("tab", "must be to_review or reviewed");
            false
        }
    };
    if reviewed {
        let (limit, cursor) = pagination::parse(
            params.limit.as_deref(),
            params.cursor.as_deref(),
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        return reviewed_tab(&app, auth.user_id, limit, cursor)
            .await
            .map(Json);
    }
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let after = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => {
            let decoded = decode_cursor(raw);
            if decoded.is_none() {
                errors.add("cursor", "is not a cursor this API returned");
            }
            decoded
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        sitting_id: Uuid,
        plant_id: Uuid,
        plant_name: String,
        species: Option<String>,
        sitting_status: String,
        starts_on: NaiveDate,
        ends_on: NaiveDate,
        flagged: bool,
    }
    // An ordered scan of `advice_queue_to_review`: (not urgent, start, sitting, plant) ascending,
    // so the cursor is one row comparison. Open and accepted sittings whose last day has passed
    // leave the queue when the expiry job expires them; until then they are skipped here (they
    // would head it). A running sitting stays until it is completed.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT q.sitting_id, q.plant_id, p.name AS plant_name, p.species, q.sitting_status, \
                q.starts_on, q.ends_on, q.flagged \
           FROM advice_queue q JOIN plants p ON p.id = q.plant_id \
          WHERE q.advice_count = 0 \
            AND (q.ends_on >= $6 OR q.sitting_status = 'in_progress') \
            AND ($1::boolean IS NULL \
                 OR (NOT q.flagged, q.starts_on, q.sitting_id, q.plant_id) > ($1, $2, $3, $4)) \
          ORDER BY NOT q.flagged, q.starts_on, q.sitting_id, q.plant_id \
          LIMIT $5",
    )
    .bind(after.map(|(urgent, ..)| !urgent))
    .bind(after.map(|(_, starts_on, ..)| starts_on))
    .bind(after.map(|(.., sitting, _)| sitting))
    .bind(after.map(|(.., plant)| plant))
    .bind(limit + 1)
    .bind(chrono::Utc::now().date_naive())
    .fetch_all(&app.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<QueueItem> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| QueueItem {
            plant_id: r.plant_id,
            plant_name: r.plant_name,
            species: r.species,
            sitting_id: Some(r.sitting_id),
            sitting_status: Some(r.sitting_status),
            starts_on: Some(r.starts_on),
            ends_on: Some(r.ends_on),
            urgent: r.flagged,
            my_advice: None,
        })
        .collect();
    let next_cursor = items.last().filter(|_| more).and_then(|last| {
        Some(encode_cursor(
            last.urgent,
            last.starts_on?,
            last.sitting_id?,
            last.plant_id,
        ))
    });
    Ok(Json(Page { items, next_cursor }))
}

/// The plants `botanist` advised, newest advice first, with their latest active advice on each.
async fn reviewed_tab(
    app: &App,
    botanist: Uuid,
    limit: i64,
    cursor: Option<Uuid>,
) -> Result<Page<QueueItem>, ApiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        advice: AdviceRow,
        plant_name: String,
        species: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, p.name AS plant_name, p.species \
           FROM {FROM} JOIN plants p ON p.id = a.plant_id \
          WHERE a.author_id = $1 AND a.state = 'active' \
            AND NOT EXISTS (SELECT 1 FROM advice later \
                             WHERE later.author_id = a.author_id AND later.plant_id = a.plant_id \
                               AND later.state = 'active' AND later.id > a.id) \
            AND ($2::uuid IS NULL OR a.id < $2) \
          ORDER BY a.id DESC LIMIT $3"
    ))
    .bind(botanist)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    let mut plants = Vec::with_capacity(rows.len());
    let mut advice = Vec::with_capacity(rows.len());
    for row in rows {
        plants.push((row.plant_name, row.species));
        advice.push(row.advice);
    }
    let views = with_reviews(&app.pool, advice).await?;
    let items = views
        .into_iter()
        .zip(plants)
        .map(|(view, (plant_name, species))| QueueItem {
            plant_id: view.plant_id,
            plant_name,
            species,
            sitting_id: view.sitting_id,
            sitting_status: None,
            starts_on: None,
            ends_on: None,
            urgent: false,
            my_advice: Some(view),
        })
        .collect();
    Ok(pagination::page(items, limit, |item: &QueueItem| {
        item.my_advice.as_ref().map_or(item.plant_id, |a| a.id)
    }))
}

/// Counts of verdicts.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerdictCounts {
    pub validated: i64,
    pub rejected: i64,
}

/// My active advice by where the other botanists stand on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdviceCounts {
    pub total: i64,
    pub pending: i64,
    pub validated: i64,
    pub rejected: i64,
    pub contested: i64,
    /// Withdrawn by me (not in `total`).
    pub withdrawn: i64,
}

/// A botanist's statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct BotanistStats {
    pub advice: AdviceCounts,
    /// The verdicts other botanists gave on my advice.
    pub verdicts_received: VerdictCounts,
    /// The verdicts I gave on other botanists' advice.
    pub verdicts_given: VerdictCounts,
}

/// My advice, how others judged it, and the verdicts I gave (BOTANIST).
#[utoipa::path(get, path = "/stats", tag = "botanists", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts", body = BotanistStats),
        (status = 403, description = "`forbidden`: BOTANIST only", body = ErrorBody),
    ))]
async fn botanist_stats(
    State(app): State<App>,
    auth: Can<WriteAdvice>,
) -> Result<Json<BotanistStats>, ApiError> {
    let (total, pending, validated, rejected, contested, withdrawn, got_yes, got_no): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'active'), \
                count(*) FILTER (WHERE state = 'active' AND validations = 0 AND rejections = 0), \
                count(*) FILTER (WHERE state = 'active' AND validations > rejections), \
                count(*) FILTER (WHERE state = 'active' AND rejections > validations), \
                count(*) FILTER (WHERE state = 'active' AND validations = rejections \
                                   AND validations > 0), \
                count(*) FILTER (WHERE state = 'withdrawn'), \
                COALESCE(sum(validations) FILTER (WHERE state = 'active'), 0)::bigint, \
                COALESCE(sum(rejections) FILTER (WHERE state = 'active'), 0)::bigint \
           FROM advice WHERE author_id = $1",
    )
    .bind(auth.user_id)
    .fetch_one(&app.pool)
    .await?;
    let (gave_yes, gave_no): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE verdict = 'validated'), \
                count(*) FILTER (WHERE verdict = 'rejected') \
           FROM advice_reviews WHERE botanist_id = $1",
    )
    .bind(auth.user_id)
    .fetch_one(&app.pool)
    .await?;
    Ok(Json(BotanistStats {
        advice: AdviceCounts {
            total,
            pending,
            validated,
            rejected,
            contested,
            withdrawn,
        },
        verdicts_received: VerdictCounts {
            validated: got_yes,
            rejected: got_no,
        },
        verdicts_given: VerdictCounts {
            validated: gave_yes,
            rejected: gave_no,
        },
    }))
}
