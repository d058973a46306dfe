//! `/api/sittings`: sitting requests and their lifecycle (see `commands::sitting` for the rules
//! and who may cancel when), applications, care reports and reviews.

mod queries;
pub mod views;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, RequestMeta};
use super::guard::{Capability, ManagePlants, Verified};
use super::token::AuthUser;
use crate::commands::plant::Plant;
use crate::commands::sitting::{Sitting, SittingCommand};
use crate::commands::values::{text, FieldErrors, GeoPoint, Rating, SittingPeriod};
use crate::events::bookings::SitterCalendar;
use crate::events::sitting::Location;
use crate::events::store::Committed;
use crate::events::Metadata;
use crate::App;
use views::{Disclosure, SittingView};

/// The caller's own applications, under `/api/me`.
pub fn me_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(queries::list_my_applications))
}

pub fn router() -> OpenApiRouter<App> {
    let (schemas, paths, create) = routes!(request_sitting);
    let create = create.layer(axum::middleware::from_fn(super::idempotency::idempotent));
    OpenApiRouter::new()
        .routes((schemas, paths, create))
        .routes(routes!(queries::list_sittings))
        .routes(routes!(queries::get_sitting))
        .routes(routes!(apply, queries::list_applications))
        .routes(routes!(withdraw))
        .routes(routes!(accept))
        .routes(routes!(start))
        .routes(routes!(complete))
        .routes(routes!(cancel))
        .routes(routes!(report_care, queries::list_reports))
        .routes(routes!(review))
}

/// At most this many plants in one sitting.
const MAX_PLANTS: usize = 50;

const SITTING_ID: &str = "The sitting's id";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationBody {
    #[schema(required = true, value_type = f64, minimum = -90, maximum = 90)]
    lat: Option<f64>,
    #[schema(required = true, value_type = f64, minimum = -180, maximum = 180)]
    lon: Option<f64>,
    #[schema(required = true, value_type = String, min_length = 1, max_length = 100)]
    city: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SittingBody {
    /// Plants of the caller's, 1 to 50.
    #[schema(required = true, value_type = Vec<Uuid>, min_items = 1, max_items = 50)]
    plant_ids: Option<Vec<Uuid>>,
    /// Today (UTC) or later.
    #[schema(required = true, value_type = NaiveDate)]
    starts_on: Option<NaiveDate>,
    /// On or after `starts_on`; at most `MAX_SITTING_DAYS` (90) days in all.
    #[schema(required = true, value_type = NaiveDate)]
    ends_on: Option<NaiveDate>,
    /// Where the plants are. Strangers see it rounded to about 1 km.
    #[serde(default, deserialize_with = "crate::api::extract::optional_object")]
    #[schema(required = true, value_type = LocationBody)]
    location: Option<LocationBody>,
    /// For the accepted sitter only (keys, watering...).
    #[schema(max_length = 2000)]
    instructions: Option<String>,
}

/// Asks for someone to care for some of the caller's plants while away. The e-mail address must
/// be verified.
#[utoipa::path(post, path = "", tag = "sittings", security(("bearer" = [])),
    request_body = SittingBody,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "1-255 visible ASCII characters: the same key from the same user within 24 h answers the first answer again")),
    responses(
        (status = 201, description = "The new sitting, open for applications", body = Positioned<SittingView>),
        (status = 202, description = "Created; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden` (role), `email_not_verified`", body = ErrorBody),
        (status = 409, description = "`request_in_progress`: the first request with this Idempotency-Key is still running", body = ErrorBody),
        (status = 422, description = "`validation_failed`: dates, place, or plants that are not the caller's", body = ErrorBody),
    ))]
async fn request_sitting(
    State(app): State<App>,
    Verified(auth): Verified,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<SittingBody>,
) -> Result<Response, ApiError> {
    if !ManagePlants::allows(auth.role) {
        return Err(ApiError::forbidden(format!(
            "role {} may not ask for sittings",
            auth.role.as_str()
        )));
    }
    let mut errors = FieldErrors::new();
    let plant_ids = match body.plant_ids {
        None => {
            errors.add("plant_ids", "is required");
            Vec::new()
        }
        Some(ids) if ids.is_empty() => {
            errors.add("plant_ids", "must name at least one plant");
            ids
        }
        Some(ids) if ids.len() > MAX_PLANTS => {
            errors.add("plant_ids", format!("at most {MAX_PLANTS} plants"));
            ids
        }
        Some(ids) => ids,
    };
    let period = match (body.starts_on, body.ends_on) {
        (Some(starts_on), Some(ends_on)) => {
            let today = Utc::now().date_naive();
            match SittingPeriod::parse(starts_on, ends_on, today, app.config.max_sitting_days) {
                Ok(period) => Some(period),
                Err((field, message)) => {
                    errors.add(field, message);
                    None
                }
            }
        }
        (starts_on, ends_on) => {
            if starts_on.is_none() {
                errors.add("starts_on", "is required (YYYY-MM-DD)");
            }
            if ends_on.is_none() {
                errors.add("ends_on", "is required (YYYY-MM-DD)");
            }
            None
        }
    };
    let location = match body.location {
        None => {
            errors.add("location", "is required");
            None
        }
        Some(location) => parse_location(location, &mut errors),
    };
    let instructions = body
        .instructions
        .as_deref()
        .and_then(|v| errors.check("instructions", text(v, 0, 2000)))
        .filter(|v| !v.is_empty());
    let (Some(period), Some(location)) = (period, location) else {
        return Err(ApiError::Validation(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // A fact the sitting cannot know: which of these plants are the requester's, from the
    // plants' own event streams (not a read model, so a plant created a moment ago counts).
    let mut not_owned = Vec::new();
    for plant_id in &plant_ids {
        let plant = app.store.load_state::<Plant>(&plant_id.to_string()).await?;
        if plant.and_then(|p| p.owner_id()) != Some(auth.user_id) {
            not_owned.push(*plant_id);
        }
    }
    let cipher = app.keys.cipher(auth.user_id).await?;
    let location = serde_json::to_string(&location).map_err(|e| ApiError::Internal(e.into()))?;
    let id = crate::events::claim::new_id("Sitting");
    let command = SittingCommand::RequestSitting {
        owner_id: auth.user_id,
        plant_ids,
        not_owned,
        period,
        location: cipher.seal(&location),
        instructions: instructions.map(|i| cipher.seal(&i)),
    };
    let committed = app
        .store
        .execute_new::<Sitting>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::CREATED).await
}

fn parse_location(body: LocationBody, errors: &mut FieldErrors) -> Option<Location> {
    let (Some(lat), Some(lon)) = (body.lat, body.lon) else {
        if body.lat.is_none() {
            errors.add("location.lat", "is required");
        }
        if body.lon.is_none() {
            errors.add("location.lon", "is required");
        }
        return None;
    };
    let point = match GeoPoint::parse(lat, lon) {
        Ok(point) => Some(point),
        Err((field, message)) => {
            errors.add(&format!("location.{field}"), message);
            None
        }
    };
    let city = match body.city.as_deref() {
        None => {
            errors.add("location.city", "is required");
            None
        }
        Some(city) => errors.check("location.city", crate::commands::values::text(city, 1, 100)),
    };
    let (point, city) = (point?, city?);
    if city.contains('\n') {
        errors.add("location.city", "must be one line");
        return None;
    }
    Some(Location {
        lat: point.lat,
        lon: point.lon,
        city,
    })
}

/// The sitting as the caller now sees it, once the read model shows the command (or 202).
async fn respond(
    app: &App,
    viewer: &AuthUser,
    id: Uuid,
    committed: &Committed,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if !super::settle(app, "Sitting", committed).await {
        return Ok(super::accepted(id, committed));
    }
    let row = views::load(&app.pool, id)
        .await?
        .ok_or(ApiError::NotFound("sitting"))?;
    let disclosure = row.disclosure(viewer, false);
    // A replay of this answer (Idempotency-Key) is stored without the home's secrets: the
    // client GETs the sitting for them.
    let stored = (disclosure == Disclosure::Home).then(|| {
        let public = row
            .clone()
            .without_home()
            .view_for(viewer, Disclosure::Public);
        serde_json::to_vec(&super::positioned(public, committed))
    });
    let view = row.view_for(viewer, disclosure);
    let mut response = (status, Json(super::positioned(view, committed))).into_response();
    if let Some(stored) = stored {
        let stored = stored.map_err(|err| ApiError::Internal(err.into()))?;
        response
            .extensions_mut()
            .insert(super::idempotency::StoredAnswer(stored.into()));
    }
    Ok(response)
}

/// Runs a lifecycle command and answers with the sitting.
async fn run(
    app: &App,
    auth: &AuthUser,
    meta: Metadata,
    id: Uuid,
    command: SittingCommand,
) -> Result<Response, ApiError> {
    let committed = app
        .store
        .execute_guarded::<Sitting>(
            &id.to_string(),
            command,
            &(),
            &auth.metadata(meta),
            &SitterCalendar,
        )
        .await?;
    respond(app, auth, id, &committed, StatusCode::OK).await
}

/// A sitting the caller cannot see is not found, whatever the command.
async fn ensure_visible(app: &App, auth: &AuthUser, id: Uuid) -> Result<(), ApiError> {
    views::visible(&app.pool, auth, id).await.map(|_| ())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplicationBody {
    /// A word to the owner.
    #[schema(max_length = 1000)]
    message: Option<String>,
}

/// An application, with the applicant's public profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    pub sitting_id: Uuid,
    pub applicant: super::users::PublicProfile,
    pub message: Option<String>,
    pub applied_at: DateTime<Utc>,
}

/// Applies to sit an open sitting (not one's own). The e-mail address must be verified.
#[utoipa::path(post, path = "/{id}/applications", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    request_body = ApplicationBody,
    responses(
        (status = 201, description = "Applied; the sitting as the applicant sees it", body = Positioned<SittingView>),
        (status = 202, description = "Applied; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden` (role), `email_not_verified`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`own_sitting`, `sitting_not_open`, `already_applied`, `sitting_expired` (its last day has passed)", body = ErrorBody),
    ))]
async fn apply(
    State(app): State<App>,
    Verified(auth): Verified,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ApplicationBody>,
) -> Result<Response, ApiError> {
    if !ManagePlants::allows(auth.role) {
        return Err(ApiError::forbidden(format!(
            "role {} may not sit plants",
            auth.role.as_str()
        )));
    }
    let message = match body.message.as_deref() {
        None => None,
        Some(m) => Some(text(m, 0, 1000).map_err(|e| ApiError::invalid("message", e))?),
    }
    .filter(|m| !m.is_empty());
    ensure_visible(&app, &auth, id).await?;
    let message = match message {
        Some(message) => Some(app.keys.cipher(auth.user_id).await?.seal(&message)),
        None => None,
    };
    let command = SittingCommand::Apply {
        applicant: auth.actor(),
        message,
        today: Utc::now().date_naive(),
    };
    let committed = app
        .store
        .execute::<Sitting>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::CREATED).await
}

/// Withdraws the caller's application while the sitting is open.
#[utoipa::path(delete, path = "/{id}/applications/mine", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    responses(
        (status = 204, description = "Withdrawn"),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`not_applied`, `sitting_not_open`", body = ErrorBody),
    ))]
async fn withdraw(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    ensure_visible(&app, &auth, id).await?;
    let command = SittingCommand::WithdrawApplication {
        applicant: auth.actor(),
    };
    let committed = app
        .store
        .execute::<Sitting>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    super::settle(&app, "Sitting", &committed).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    /// One of the applicants.
    #[schema(required = true, value_type = Uuid)]
    sitter_id: Option<Uuid>,
}

/// The owner accepts one applicant as the sitter. A sitter already booked on overlapping days
/// cannot be accepted (`sitter_unavailable`); nor can anyone once the sitting's last day has
/// passed (`sitting_expired`).
#[utoipa::path(post, path = "/{id}/accept", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    request_body = AcceptBody,
    responses(
        (status = 200, description = "Accepted", body = Positioned<SittingView>),
        (status = 202, description = "Accepted; the read model is catching up", body = Pending),
        (status = 403, description = "`not_the_owner`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_not_open`, `not_an_applicant`, `sitter_unavailable`, `sitting_expired`, `concurrent_modification`", body = ErrorBody),
    ))]
async fn accept(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AcceptBody>,
) -> Result<Response, ApiError> {
    let sitter_id = body
        .sitter_id
        .ok_or_else(|| ApiError::invalid("sitter_id", "is required"))?;
    ensure_visible(&app, &auth, id).await?;
    let command = SittingCommand::AcceptSitter {
        actor: auth.actor(),
        sitter_id,
        today: Utc::now().date_naive(),
    };
    run(&app, &auth, meta, id, command).await
}

/// The owner or the sitter starts an accepted sitting, on its first day or later, and not after
/// its last day (`sitting_expired`).
#[utoipa::path(post, path = "/{id}/start", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    responses(
        (status = 200, description = "In progress", body = Positioned<SittingView>),
        (status = 202, description = "Started; the read model is catching up", body = Pending),
        (status = 403, description = "`not_a_participant`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_not_accepted`, `sitting_not_started_yet`, `sitting_closed`, `sitting_expired`", body = ErrorBody),
    ))]
async fn start(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    ensure_visible(&app, &auth, id).await?;
    let command = SittingCommand::StartSitting {
        actor: auth.actor(),
        today: Utc::now().date_naive(),
    };
    run(&app, &auth, meta, id, command).await
}

/// The owner or the sitter ends a sitting in progress.
#[utoipa::path(post, path = "/{id}/complete", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    responses(
        (status = 200, description = "Completed", body = Positioned<SittingView>),
        (status = 202, description = "Completed; the read model is catching up", body = Pending),
        (status = 403, description = "`not_a_participant`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_not_in_progress`, `sitting_closed`, `sitting_expired`", body = ErrorBody),
    ))]
async fn complete(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    ensure_visible(&app, &auth, id).await?;
    let command = SittingCommand::CompleteSitting {
        actor: auth.actor(),
    };
    run(&app, &auth, meta, id, command).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why, for the other side.
    #[schema(required = true, value_type = String, min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// Cancels a sitting: the owner while open or accepted, the accepted sitter while accepted, an
/// admin while open or accepted. Not once in progress, nor once over (completed, cancelled or
/// expired: `sitting_closed`).
#[utoipa::path(post, path = "/{id}/cancel", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    request_body = CancelBody,
    responses(
        (status = 200, description = "Cancelled", body = Positioned<SittingView>),
        (status = 202, description = "Cancelled; the read model is catching up", body = Pending),
        (status = 403, description = "`not_a_participant`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_in_progress`, `sitting_closed`", body = ErrorBody),
    ))]
async fn cancel(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CancelBody>,
) -> Result<Response, ApiError> {
    let reason = body
        .reason
        .as_deref()
        .ok_or_else(|| "is required".to_string())
        .and_then(|r| text(r, 1, 500))
        .map_err(|e| ApiError::invalid("reason", e))?;
    ensure_visible(&app, &auth, id).await?;
    let reason = app.keys.cipher(auth.user_id).await?.seal(&reason);
    let command = SittingCommand::CancelSitting {
        actor: auth.actor(),
        reason,
    };
    run(&app, &auth, meta, id, command).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// A plant of the sitting.
    #[schema(required = true, value_type = Uuid)]
    plant_id: Option<Uuid>,
    #[schema(required = true, value_type = String, min_length = 1, max_length = 2000)]
    note: Option<String>,
    /// A photo of this plant (`POST /api/plants/{id}/photos`) from before the care.
    before_photo_id: Option<Uuid>,
    /// A photo of this plant from after the care.
    after_photo_id: Option<Uuid>,
}

/// A care report on one plant of a sitting.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ReportView {
    pub id: Uuid,
    pub sitting_id: Uuid,
    pub plant_id: Uuid,
    pub sitter_id: Uuid,
    /// Null once its writer was erased.
    pub note: Option<String>,
    pub before_photo_id: Option<Uuid>,
    pub after_photo_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The sitter reports on a plant while the sitting is in progress.
#[utoipa::path(post, path = "/{id}/reports", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    request_body = ReportBody,
    responses(
        (status = 201, description = "The report", body = Positioned<ReportView>),
        (status = 202, description = "Reported; the read model is catching up", body = Pending),
        (status = 403, description = "`not_the_sitter`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_not_in_progress`, `sitting_closed`, `sitting_expired`", body = ErrorBody),
    ))]
async fn report_care(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReportBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    if body.plant_id.is_none() {
        errors.add("plant_id", "is required");
    }
    let note = match body.note.as_deref() {
        None => {
            errors.add("note", "is required");
            None
        }
        Some(note) => errors.check("note", text(note, 1, 2000)),
    };
    let (Some(plant_id), Some(note)) = (body.plant_id, note) else {
        return Err(ApiError::Validation(errors));
    };
    ensure_visible(&app, &auth, id).await?;
    // Photos named in a report are photos of its plant (a fact from the photos read model).
    for (field, photo) in [
        ("before_photo_id", body.before_photo_id),
        ("after_photo_id", body.after_photo_id),
    ] {
        let Some(photo) = photo else { continue };
        let of_plant: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM plant_photos WHERE id = $1 AND plant_id = $2)",
        )
        .bind(photo)
        .bind(plant_id)
        .fetch_one(&app.pool)
        .await?;
        if !of_plant {
            errors.add(field, "must be a photo of this plant");
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let note = app.keys.cipher(auth.user_id).await?.seal(&note);
    let report_id = Uuid::now_v7();
    let command = SittingCommand::ReportCare {
        actor: auth.actor(),
        report_id,
        plant_id,
        note,
        before_photo_id: body.before_photo_id,
        after_photo_id: body.after_photo_id,
    };
    let committed = app
        .store
        .execute::<Sitting>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    if !super::settle(&app, "Sitting", &committed).await {
        return Ok(super::accepted(report_id, &committed));
    }
    let report = queries::load_report(&app.pool, report_id)
        .await?
        .ok_or(ApiError::NotFound("report"))?;
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(report, &committed)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    #[schema(required = true, value_type = i64, minimum = 1, maximum = 5)]
    rating: Option<i64>,
    #[schema(max_length = 1000)]
    comment: Option<String>,
}

/// The owner reviews the sitter, or the sitter the owner: once each, after completion.
#[utoipa::path(post, path = "/{id}/reviews", tag = "sittings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = SITTING_ID)),
    request_body = ReviewBody,
    responses(
        (status = 201, description = "Reviewed; the sitting", body = Positioned<SittingView>),
        (status = 202, description = "Reviewed; the read model is catching up", body = Pending),
        (status = 403, description = "`not_a_participant`", body = ErrorBody),
        (status = 404, description = "No such sitting the caller may see", body = ErrorBody),
        (status = 409, description = "`sitting_not_completed`, `already_reviewed`", body = ErrorBody),
    ))]
async fn review(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<ReviewBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let rating = match body.rating {
        None => {
            errors.add("rating", "is required");
            None
        }
        Some(rating) => errors.check("rating", Rating::parse(rating)),
    };
    let comment = body
        .comment
        .as_deref()
        .and_then(|c| errors.check("comment", text(c, 0, 1000)))
        .filter(|c| !c.is_empty());
    let Some(rating) = rating.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    ensure_visible(&app, &auth, id).await?;
    let comment = match comment {
        Some(comment) => Some(app.keys.cipher(auth.user_id).await?.seal(&comment)),
        None => None,
    };
    let command = SittingCommand::LeaveReview {
        actor: auth.actor(),
        rating,
        comment,
    };
    let committed = app
        .store
        .execute::<Sitting>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, &auth, id, &committed, StatusCode::CREATED).await
}
