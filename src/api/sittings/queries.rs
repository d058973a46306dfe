//! Reads of sittings: browse and search near a place, one sitting, its applications and reports.

use axum::extract::State;
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::IntoParams;
use utoipa::ToSchema;
use uuid::Uuid;

use super::views::{self, Disclosure, SittingRow, SittingView, COLUMNS};
use super::{ApplicationView, ReportView, SITTING_ID};
use crate::access::{AccessDetails, AccessKind};
use crate::api::docs::{ErrorBody, Page};
use crate::api::error::ApiError;
use crate::api::extract::{ApiPath, ApiQuery, RequestMeta};
use crate::api::pagination::{self, PageParams};
use crate::api::token::AuthUser;
use crate::api::users::PublicProfile;
use crate::commands::sitting::Status;
use crate::commands::values::{FieldErrors, GeoPoint};
use crate::events::user::Role;
use crate::App;

/// The widest search around a place.
const MAX_RADIUS_KM: f64 = 200.0;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SittingListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `open` (default when browsing), `accepted`, `in_progress`, `completed`, `cancelled`,
    /// `expired`. Browsing (no `role`) shows USERs open sittings only, and never one whose last
    /// day has passed.
    status: Option<String>,
    /// `lat,lon`: nearest first, within `radius_km`.
    near: Option<String>,
    /// Kilometres around `near`, up to 200 (default 10); needs `near`.
    #[param(value_type = Option<f64>, exclusive_minimum = 0, maximum = 200)]
    radius_km: Option<String>,
    /// Sittings that end on or after this day.
    #[param(value_type = Option<NaiveDate>)]
    from: Option<String>,
    /// Sittings that start on or before this day.
    #[param(value_type = Option<NaiveDate>)]
    to: Option<String>,
    /// `owner`: the caller's own sittings; `sitter`: those the caller sits. Any status.
    role: Option<String>,
}

fn parse_near(raw: &str) -> Result<GeoPoint, String> {
    let (lat, lon) = raw
        .split_once(',')
        .ok_or_else(|| "must be `lat,lon`".to_string())?;
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| "must be `lat,lon`".to_string())?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| "must be `lat,lon`".to_string())?;
    GeoPoint::parse(lat, lon).map_err(|(_, message)| message)
}

fn parse_date(raw: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| "must be a date (YYYY-MM-DD)".into())
}

/// Browses sittings (open ones by default, soonest first), searches near a place (nearest
/// first), or lists the caller's own (`role=owner|sitter`).
#[utoipa::path(get, path = "", tag = "sittings", security(("bearer" = [])), params(SittingListParams),
    responses(
        (status = 200, description = "A page of sittings", body = Page<SittingView>),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
pub async fn list_sittings(
    State(app): State<App>,
    auth: AuthUser,
    ApiQuery(params): ApiQuery<SittingListParams>,
) -> Result<Json<Page<SittingView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let cursor = nonempty(&params.cursor).and_then(|raw| {
        let decoded = pagination::decode_keyset(&raw);
        if decoded.is_none() {
            errors.add("cursor", "is not a cursor this API returned");
        }
        decoded
    });
    let role = match nonempty(&params.role).as_deref() {
        None => None,
        Some(r @ ("owner" | "sitter")) => Some(r.to_string()),
        Some(_) => {
            errors.add("role", "must be `owner` or `sitter`");
            None
        }
    };
    let status = match nonempty(&params.status) {
        None => (role.is_none()).then_some(Status::Open),
        Some(raw) => {
            let status = Status::parse(&raw);
            if status.is_none() {
                errors.add(
                    "status",
                    "must be open, accepted, in_progress, completed, cancelled or expired",
                );
            }
            status
        }
    };
    let reads_all = matches!(auth.role, Role::Botanist | Role::Admin);
    if role.is_none() && !reads_all && status.is_some_and(|s| s != Status::Open) {
        errors.add(
            "status",
            "browsing shows open sittings only; use role=owner or role=sitter for yours",
        );
    }
    let near = nonempty(&params.near).and_then(|raw| errors.check("near", parse_near(&raw)));
    // Typed parameters that are present must hold their type (`radius_km=`, `from=` and `to=`
    // are refused, not read as absent).
    let radius_km = match params.radius_km.clone() {
        None => 10.0,
        Some(raw) => match raw.trim().parse::<f64>() {
            Ok(r) if r > 0.0 && r <= MAX_RADIUS_KM => r,
            _ => {
                errors.add(
                    "radius_km",
                    format!("must be a number above 0, up to {MAX_RADIUS_KM}"),
                );
                10.0
            }
        },
    };
    if params.radius_km.is_some() && near.is_none() && !errors.0.contains_key("near") {
        errors.add("near", "is required with radius_km");
    }
    let from = params
        .from
        .as_deref()
        .and_then(|raw| errors.check("from", parse_date(raw)));
    let to = params
        .to
        .as_deref()
        .and_then(|raw| errors.check("to", parse_date(raw)));
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            errors.add("to", "must be on or after from");
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    // Status values come from `Status` (a fixed set), inlined so that the partial index of open
    // sittings applies whatever plan PostgreSQL caches.
    let mut filters = vec!["TRUE".to_string()];
    if let Some(status) = status {
        filters.push(format!("s.status = '{}'", status.as_str()));
    }
    match role.as_deref() {
        Some("owner") => filters.push("s.owner_id = $1".into()),
        Some("sitter") => filters.push("s.sitter_id = $1".into()),
        _ => {}
    }
    filters.push("($2::date IS NULL OR s.ends_on >= $2)".into());
    filters.push("($3::date IS NULL OR s.starts_on <= $3)".into());
    // Browsing (no `role`) is the same for everyone: answered from the query cache, with the
    // public view of each sitting (no exact place, no instructions), for every caller, so the
    // cache holds no home's secrets. Callers' own sittings are under `role=`.
    let browsing = role.is_none();
    // An open sitting whose last day has passed takes no more applications: not browsed, even
    // before the expiry job marks it `expired`. (A date, inlined like the status.)
    let today = Utc::now().date_naive();
    if browsing && status == Some(Status::Open) {
        filters.push(format!("s.ends_on >= DATE '{today}'"));
    }
    let viewer = if browsing { Uuid::nil() } else { auth.user_id };
    let cache_key = if browsing {
        let versions = crate::infra::cache::versions(&app.pool, &["sittings"]).await?;
        let parameters = format!(
            "{:?}|{:?}|{radius_km}|{from:?}|{to:?}|{limit}|{cursor:?}|{today}",
            status.map(|s| s.as_str()),
            near.map(|p| (p.lat, p.lon)),
        );
        Some(app.cache.key("sittings", &versions, &parameters))
    } else {
        None
    };
    let cached = match &cache_key {
        Some(key) => {
            app.cache
                .get::<Vec<SittingRow>>("sittings_browse", key)
                .await
        }
        None => None,
    };
    let rows: Vec<SittingRow> = match cached {
        Some(rows) => rows,
        None => {
            let rows = fetch_rows(
                &app, viewer, &filters, near, radius_km, from, to, cursor, limit,
            )
            .await?;
            if let Some(key) = &cache_key {
                let rows: Vec<SittingRow> =
                    rows.into_iter().map(SittingRow::without_home).collect();
                app.cache.put(key, &rows).await;
                rows
            } else {
                rows
            }
        }
    };
    let page = pagination::keyset_page(rows, limit, |row| (row.distance_m.unwrap_or(0.0), row.id));
    Ok(Json(page.map(|row| {
        let metres = row.distance_m.unwrap_or(0.0);
        let disclosure = if browsing {
            Disclosure::Public
        } else {
            row.disclosure(&auth, false)
        };
        let mut view = row.view_for(&auth, disclosure);
        if near.is_some() {
            view.distance_km = Some((metres / 100.0).round() / 10.0);
        }
        view
    })))
}

/// The rows of one page of sittings, nearest first around `near`, else soonest first.
#[allow(clippy::too_many_arguments)]
async fn fetch_rows(
    app: &App,
    viewer: Uuid,
    filters: &[String],
    near: Option<GeoPoint>,
    radius_km: f64,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    cursor: Option<(f64, Uuid)>,
    limit: i64,
) -> Result<Vec<SittingRow>, sqlx::Error> {
    let rows: Vec<SittingRow> = match near {
        Some(center) => {
            // Chord distance (`<->`, metres) orders nearest first through the GiST index; the
            // box and `earth_distance` keep what is within the radius.
            let sql = format!(
                "SELECT * FROM ( \
                   SELECT {COLUMNS}, \
                          (ll_to_earth(s.approx_lat, s.approx_lon) <-> ll_to_earth($4, $5)) AS distance_m \
                     FROM sittings s \
                    WHERE {filters} \
                      AND earth_box(ll_to_earth($4, $5), $6) @> ll_to_earth(s.approx_lat, s.approx_lon) \
                      AND earth_distance(ll_to_earth($4, $5), ll_to_earth(s.approx_lat, s.approx_lon)) <= $6 \
                    ORDER BY ll_to_earth(s.approx_lat, s.approx_lon) <-> ll_to_earth($4, $5), s.id \
                 ) found \
                 WHERE ($7::float8 IS NULL OR (distance_m, id) > ($7, $8)) \
                 ORDER BY distance_m, id LIMIT $9",
                filters = filters.join(" AND ")
            );
            sqlx::query_as(&sql)
                .bind(viewer)
                .bind(from)
                .bind(to)
                .bind(center.lat)
                .bind(center.lon)
                .bind(radius_km * 1000.0)
                .bind(cursor.map(|c| c.0))
                .bind(cursor.map(|c| c.1))
                .bind(limit + 1)
                .fetch_all(&app.pool)
                .await?
        }
        None => {
            let sql = format!(
                "SELECT {COLUMNS}, (s.starts_on - DATE '2000-01-01')::float8 AS distance_m \
                   FROM sittings s \
                  WHERE {filters} \
                    AND ($4::float8 IS NULL OR ((s.starts_on - DATE '2000-01-01')::float8, s.id) > ($4, $5)) \
                  ORDER BY s.starts_on, s.id LIMIT $6",
                filters = filters.join(" AND ")
            );
            sqlx::query_as(&sql)
                .bind(viewer)
                .bind(from)
                .bind(to)
                .bind(cursor.map(|c| c.0))
                .bind(cursor.map(|c| c.1))
                .bind(limit + 1)
                .fetch_all(&app.pool)
                .await?
        }
    };
    Ok(rows)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SittingParams {
    /// ADMIN: why the exact place and the instructions are needed (1 to 500 characters). The
    /// look is recorded as an access (`sitting_home`); without it an admin sees the public view.
    #[param(min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// The longest `reason` an admin gives for reading a home's secrets.
const MAX_REASON_CHARS: usize = 500;

/// One sitting: open ones for everyone; others for their owner, sitter (a former sitter sees
/// it as history, without the home), botanists and admins. The exact place and the
/// instructions: see `views`.
#[utoipa::path(get, path = "/{id}", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID), SittingParams),
    responses(
        (status = 200, description = "The sitting", body = SittingView),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `reason` too long", body = ErrorBody),
    ))]
pub async fn get_sitting(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<SittingParams>,
) -> Result<Json<SittingView>, ApiError> {
    let reason = params
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        let mut errors = FieldErrors::new();
        errors.add(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
        return Err(ApiError::Validation(errors));
    }
    let row = views::visible(&app.pool, &auth, id).await?;
    let admin_reason = auth.role == Role::Admin && reason.is_some();
    let disclosure = row.disclosure(&auth, admin_reason);
    if admin_reason && disclosure == Disclosure::Home && row.owner_id != auth.user_id {
        // Recorded before it is served; fails closed (crate::access).
        let details = AccessDetails {
            kind: AccessKind::SittingHome,
            subject_id: Some(row.owner_id),
            reason: reason.map(str::to_string),
            query: serde_json::json!({ "sitting_id": id }),
        };
        crate::access::record(&app, &auth.metadata(meta), &details).await?;
    }
    Ok(Json(row.view_for(&auth, disclosure)))
}

#[derive(sqlx::FromRow)]
struct ApplicationRow {
    sitting_id: Uuid,
    applicant_id: uuid::Uuid,
    message: Option<String>,
    applied_at: chrono::DateTime<chrono::Utc>,
    key: f64,
}

/// The pending applications of a sitting, oldest first, with each applicant's public profile
/// (its owner and admins).
#[utoipa::path(get, path = "/{id}/applications", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID), PageParams),
    responses(
        (status = 200, description = "A page of applications", body = Page<ApplicationView>),
        (status = 403, description = "`not_the_owner`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
    ))]
pub async fn list_applications(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<ApplicationView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, _) = pagination::parse(params.limit.as_deref(), None, &mut errors);
    let cursor = params
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .and_then(|raw| {
            let decoded = pagination::decode_keyset(raw);
            if decoded.is_none() {
                errors.add("cursor", "is not a cursor this API returned");
            }
            decoded
        });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let row = views::visible(&app.pool, &auth, id).await?;
    if row.owner_id != auth.user_id && auth.role != Role::Admin {
        return Err(ApiError::Forbidden {
            code: "not_the_owner",
            message: "only the owner of the sitting sees its applications".into(),
        });
    }
    // Keyset on (applied_at in microseconds, applicant): exact in a float8 for 285 years.
    let rows: Vec<ApplicationRow> = sqlx::query_as(
        "SELECT sitting_id, applicant_id, message, applied_at, \
                (extract(epoch FROM applied_at) * 1000000)::float8 AS key \
           FROM sitting_applications \
          WHERE sitting_id = $1 \
            AND ($2::float8 IS NULL \
                 OR ((extract(epoch FROM applied_at) * 1000000)::float8, applicant_id) > ($2, $3)) \
          ORDER BY applied_at, applicant_id LIMIT $4",
    )
    .bind(id)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    let page = pagination::keyset_page(rows, limit, |row| (row.key, row.applicant_id));
    let mut items = Vec::with_capacity(page.items.len());
    for row in page.items {
        let Some(applicant) = PublicProfile::load(&app.pool, row.applicant_id, 0).await? else {
            continue;
        };
        items.push(ApplicationView {
            sitting_id: row.sitting_id,
            applicant,
            message: row.message,
            applied_at: row.applied_at,
        });
    }
    Ok(Json(Page {
        items,
        next_cursor: page.next_cursor,
    }))
}

const REPORT_COLUMNS: &str =
    "id, sitting_id, plant_id, sitter_id, note, before_photo_id, after_photo_id, created_at";

pub async fn load_report(pool: &PgPool, id: Uuid) -> Result<Option<ReportView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REPORT_COLUMNS} FROM care_reports WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The care reports of a sitting, oldest first (owner, sitter, botanists, admins).
#[utoipa::path(get, path = "/{id}/reports", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID), PageParams),
    responses(
        (status = 200, description = "A page of reports", body = Page<ReportView>),
        (status = 403, description = "`not_a_participant`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
    ))]
pub async fn list_reports(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<ReportView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let row = views::visible(&app.pool, &auth, id).await?;
    let may_read = row.owner_id == auth.user_id
        || row.sitter_id == Some(auth.user_id)
        || matches!(auth.role, Role::Botanist | Role::Admin);
    if !may_read {
        return Err(ApiError::Forbidden {
            code: "not_a_participant",
            message: "care reports are for the owner, the sitter and botanists".into(),
        });
    }
    let rows: Vec<ReportView> = sqlx::query_as(&format!(
        "SELECT {REPORT_COLUMNS} FROM care_reports \
          WHERE sitting_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
    ))
    .bind(id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(rows, limit, |r: &ReportView| r.id)))
}

/// One of the caller's applications, with what they may still know of the sitting.
#[derive(Debug, Serialize, sqlx::FromRow, ToSchema)]
pub struct MyApplicationView {
    pub sitting_id: Uuid,
    /// `pending` (the sitting is open), `accepted` (the caller was chosen: the sitting is
    /// theirs to follow), `not_selected` (the owner chose someone else), or `closed` (the
    /// sitting ended before anyone was chosen).
    pub status: String,
    pub message: Option<String>,
    pub applied_at: chrono::DateTime<chrono::Utc>,
    pub starts_on: NaiveDate,
    pub ends_on: NaiveDate,
    pub city: String,
}

/// The caller's applications, newest sitting first. A sitting whose owner chose someone else
/// shows here as `not_selected` and is no longer readable (404) for the applicant.
#[utoipa::path(get, path = "/applications", operation_id = "list_my_applications", tag = "me",
    security(("bearer" = [])), params(PageParams),
    responses(
        (status = 200, description = "A page of the caller's applications", body = Page<MyApplicationView>),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
pub async fn list_my_applications(
    State(app): State<App>,
    auth: AuthUser,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<MyApplicationView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows: Vec<MyApplicationView> = sqlx::query_as(
        "SELECT a.sitting_id, \
                CASE WHEN s.sitter_id = a.applicant_id THEN 'accepted' \
                     WHEN s.status = 'open' THEN 'pending' \
                     WHEN s.sitter_id IS NOT NULL OR s.status IN ('accepted', 'in_progress', 'completed') \
                          THEN 'not_selected' \
                     ELSE 'closed' END AS status, \
                a.message, a.applied_at, s.starts_on, s.ends_on, s.city \
           FROM sitting_applications a JOIN sittings s ON s.id = a.sitting_id \
          WHERE a.applicant_id = $1 AND ($2::uuid IS NULL OR a.sitting_id < $2) \
          ORDER BY a.sitting_id DESC LIMIT $3",
    )
    .bind(auth.user_id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(
        rows,
        limit,
        |r: &MyApplicationView| r.sitting_id,
    )))
}
