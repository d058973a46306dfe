//! `/api/plants`: a user's plants. Owners change their own; botanists and admins read all;
//! anyone else gets 404 for a plant that is not theirs.

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
use super::guard::{Can, Capability, ManagePlants, ReadAllPlants};
use super::pagination;
use super::token::AuthUser;
use crate::commands::plant::{CarePatch, Plant, PlantCommand, PlantPatch};
use crate::commands::values::{optional_text, watering_interval, FieldErrors, PlantName};
use crate::events::double_option;
use crate::events::plant::Care;
use crate::events::store::Committed;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    let (schemas, paths, create) = routes!(create_plant);
    let create = create.layer(axum::middleware::from_fn(super::idempotency::idempotent));
    OpenApiRouter::new()
        .routes(routes!(list_plants))
        .routes((schemas, paths, create))
        .routes(routes!(get_plant, update_plant, delete_plant))
        .merge(super::photos::plant_routes())
        .merge(super::advice::plant_routes())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CareView {
    pub watering_interval_days: Option<i32>,
    pub light: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlantView {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub species: Option<String>,
    pub description: Option<String>,
    pub care: CareView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(sqlx::FromRow)]
struct PlantRow {
    id: Uuid,
    owner_id: Uuid,
    name: String,
    species: Option<String>,
    description: Option<String>,
    watering_interval_days: Option<i32>,
    light: Option<String>,
    care_notes: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl From<PlantRow> for PlantView {
    fn from(row: PlantRow) -> Self {
        PlantView {
            id: row.id,
            owner_id: row.owner_id,
            name: row.name,
            species: row.species,
            description: row.description,
            care: CareView {
                watering_interval_days: row.watering_interval_days,
                light: row.light,
                notes: row.care_notes,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
        }
    }
}

const COLUMNS: &str = "id, owner_id, name, species, description, watering_interval_days, light, \
                       care_notes, created_at, updated_at, version";

/// Whether the caller reads every plant, not only their own.
pub fn reads_all(auth: &AuthUser) -> bool {
    ReadAllPlants::allows(auth.role)
}

async fn load_plant(pool: &PgPool, id: Uuid) -> Result<Option<PlantView>, sqlx::Error> {
    let row: Option<PlantRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM plants WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(PlantView::from))
}

/// The plant if the caller may see it (its owner, botanists and admins, the sitter of an
/// accepted or running sitting of it); 404 otherwise (whether or not it exists).
pub(crate) async fn visible_plant(
    app: &App,
    auth: &AuthUser,
    id: Uuid,
) -> Result<PlantView, ApiError> {
    let plant = load_plant(&app.pool, id)
        .await?
        .ok_or(ApiError::NotFound("plant"))?;
    if plant.owner_id == auth.user_id
        || reads_all(auth)
        || crate::photos::is_active_sitter(app, auth.user_id, id).await?
    {
        Ok(plant)
    } else {
        Err(ApiError::NotFound("plant"))
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CareBody {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 365)]
    watering_interval_days: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100)]
    light: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    notes: Option<Option<String>>,
}

/// A plant to create (`name` required) or the changes to one (every field optional; `null`
/// clears).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlantBody {
    /// Required when creating; cannot be cleared (`null` is refused).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 100)]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100)]
    species: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::extract::optional_object")]
    care: Option<CareBody>,
}

/// Validates a body into a patch; every field optional (PATCH) and `null` clears.
fn parse_patch(body: PlantBody, errors: &mut FieldErrors) -> PlantPatch {
    let text = |errors: &mut FieldErrors, field: &str, value: Option<Option<String>>, max| {
        value.map(|v| {
            errors
                .check(field, optional_text(v.as_deref(), max))
                .flatten()
        })
    };
    let care = body.care.unwrap_or_default();
    PlantPatch {
        name: match body.name {
            None => None,
            Some(None) => {
                errors.add("name", "cannot be cleared");
                None
            }
            Some(Some(v)) => errors.check("name", PlantName::parse(&v)),
        },
        species: text(errors, "species", body.species, 100),
        description: text(errors, "description", body.description, 2000),
        care: CarePatch {
            watering_interval_days: care.watering_interval_days.map(|v| {
                v.and_then(|days| {
                    errors.check("care.watering_interval_days", watering_interval(days))
                })
            }),
            light: text(errors, "care.light", care.light, 100),
            notes: text(errors, "care.notes", care.notes, 2000),
        },
    }
}

async fn respond(
    app: &App,
    id: Uuid,
    committed: &Committed,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if !super::settle(app, "Plant", committed).await {
        return Ok(super::accepted(id, committed));
    }
    let plant = load_plant(&app.pool, id)
        .await?
        .ok_or(ApiError::NotFound("plant"))?;
    Ok((status, Json(super::positioned(plant, committed))).into_response())
}

/// Adds a plant of the caller's.
#[utoipa::path(post, path = "", tag = "plants", security(("bearer" = [])),
    request_body = PlantBody,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "1-255 visible ASCII characters: the same key from the same user within 24 h answers the first answer again")),
    responses(
        (status = 201, description = "The new plant", body = Positioned<PlantView>),
        (status = 202, description = "Created; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: the role cannot own plants", body = ErrorBody),
        (status = 409, description = "`request_in_progress`: the first request with this Idempotency-Key is still running", body = ErrorBody),
    ))]
async fn create_plant(
    State(app): State<App>,
    auth: Can<ManagePlants>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<PlantBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    if body.name.is_none() {
        errors.add("name", "is required");
    }
    let patch = parse_patch(body, &mut errors);
    let Some(name) = patch.name.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let care = Care {
        watering_interval_days: patch.care.watering_interval_days.flatten(),
        light: patch.care.light.flatten(),
        notes: patch.care.notes.flatten(),
    };
    let id = crate::events::claim::new_id("Plant");
    let species = patch.species.flatten();
    let description = patch.description.flatten();
    // The read model's row as the projection writes it from PlantCreated (same values, created
    // and updated at the event's timestamp, version 1): once the projection has passed the event,
    // answering it needs no read back.
    let mut plant = PlantView {
        id,
        owner_id: auth.user_id,
        name: name.clone().into_inner(),
        species: species.clone(),
        description: description.clone(),
        care: CareView {
            watering_interval_days: care.watering_interval_days,
            light: care.light.clone(),
            notes: care.notes.clone(),
        },
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
        version: 0,
    };
    let command = PlantCommand::CreatePlant {
        owner_id: auth.user_id,
        name,
        species,
        description,
        care,
    };
    let committed = app
        .store
        .execute_new::<Plant>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    let Some(at) = committed.at else {
        return respond(&app, id, &committed, StatusCode::CREATED).await;
    };
    if !super::settle(&app, "Plant", &committed).await {
        return Ok(super::accepted(id, &committed));
    }
    plant.created_at = at;
    plant.updated_at = at;
    plant.version = committed.version;
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(plant, &committed)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only this owner's plants (BOTANIST, ADMIN; a USER always lists their own).
    #[param(value_type = Option<Uuid>)]
    owner_id: Option<String>,
    /// Search in names and species (case-insensitive, at most 100 characters).
    q: Option<String>,
}

/// USER: their own plants; BOTANIST and ADMIN: everyone's. Newest first.
#[utoipa::path(get, path = "", tag = "plants", security(("bearer" = [])), params(ListParams),
    responses(
        (status = 200, description = "A page of plants", body = Page<PlantView>),
        (status = 422, description = "`validation_failed` on a parameter", body = ErrorBody),
    ))]
async fn list_plants(
    State(app): State<App>,
    auth: AuthUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<PlantView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    // Present means a UUID: `owner_id=` (empty) is refused, not read as "everyone's".
    let owner_filter = match params.owner_id.as_deref() {
        None => None,
        Some(raw) => errors.check(
            "owner_id",
            raw.parse::<Uuid>()
                .map_err(|_| "must be a UUID".to_string()),
        ),
    };
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > 100) {
        errors.add("q", "must be at most 100 characters");
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // A user lists their own plants only; botanists and admins may filter by owner.
    let owner = if reads_all(&auth) {
        owner_filter
    } else {
        Some(auth.user_id)
    };
    let rows: Vec<PlantRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM plants \
          WHERE ($1::uuid IS NULL OR owner_id = $1) \
            AND ($2::uuid IS NULL OR id < $2) \
            AND ($3::text IS NULL OR name ILIKE $3 OR species ILIKE $3) \
          ORDER BY id DESC LIMIT $4"
    ))
    .bind(owner)
    .bind(cursor)
    .bind(q.map(pagination::like_pattern))
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    let views = rows.into_iter().map(PlantView::from).collect();
    Ok(Json(pagination::page(views, limit, |p: &PlantView| p.id)))
}

/// One plant the caller may see.
#[utoipa::path(get, path = "/{id}", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id")),
    responses(
        (status = 200, description = "The plant", body = PlantView),
        (status = 404, description = "No such plant, or not one the caller may see", body = ErrorBody),
    ))]
async fn get_plant(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<PlantView>, ApiError> {
    visible_plant(&app, &auth, id).await.map(Json)
}

/// Changes a plant (its owner, or an ADMIN).
#[utoipa::path(patch, path = "/{id}", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id")),
    request_body = PlantBody,
    responses(
        (status = 200, description = "The plant as changed", body = Positioned<PlantView>),
        (status = 202, description = "Changed; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: the role cannot manage plants", body = ErrorBody),
        (status = 404, description = "No such plant of the caller's", body = ErrorBody),
        (status = 409, description = "`concurrent_modification`", body = ErrorBody),
    ))]
async fn update_plant(
    State(app): State<App>,
    auth: Can<ManagePlants>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<PlantBody>,
) -> Result<Response, ApiError> {
    let mut errors = FieldErrors::new();
    let patch = parse_patch(body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let command = PlantCommand::UpdatePlant {
        actor: auth.actor(),
        patch,
    };
    let committed = app
        .store
        .execute::<Plant>(&id.to_string(), command, &(), &auth.metadata(meta))
        .await?;
    respond(&app, id, &committed, StatusCode::OK).await
}

/// Deletes a plant (its owner, or an ADMIN).
#[utoipa::path(delete, path = "/{id}", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 202, description = "Deleted; the read model is catching up", body = Pending),
        (status = 403, description = "`forbidden`: the role cannot manage plants", body = ErrorBody),
        (status = 404, description = "No such plant of the caller's", body = ErrorBody),
        (status = 409, description = "`concurrent_modification`", body = ErrorBody),
    ))]
async fn delete_plant(
    State(app): State<App>,
    auth: Can<ManagePlants>,
    RequestMeta(meta): RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let committed =
        crate::photos::delete_plant(&app, id, auth.actor(), &auth.metadata(meta)).await?;
    if !super::settle(&app, "Plant", &committed).await {
        return Ok(super::accepted(id, &committed));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
