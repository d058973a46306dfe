//! Plant photos: `POST /api/plants/{id}/photos` (multipart `file`), `GET /api/plants/{id}/photos`,
//! and the images, `GET /api/photos/{id}` and `/thumbnail`, for whoever may see the plant.

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::{ErrorBody, Page, Pending, Positioned};
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, RequestMeta};
use super::pagination::{self, PageParams};
use super::token::AuthUser;
use crate::commands::values::FieldErrors;
use crate::infra::images::PhotoError;
use crate::photos::UploadError;
use crate::App;

/// Routes under `/api/plants`.
pub fn plant_routes() -> OpenApiRouter<App> {
    let (schemas, paths, upload) = routes!(upload_photo);
    // The size is checked while the file streams in (MAX_PHOTO_BYTES), not by the JSON limit.
    let upload = upload.layer(axum::extract::DefaultBodyLimit::disable());
    OpenApiRouter::new()
        .routes((schemas, paths, upload))
        .routes(routes!(list_photos))
}

/// Routes under `/api/photos`.
pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(get_photo))
        .routes(routes!(get_thumbnail))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PhotoView {
    pub id: Uuid,
    pub plant_id: Uuid,
    /// `GET` it with the bearer token.
    pub url: String,
    pub thumbnail_url: String,
    pub width: i32,
    pub height: i32,
    /// Size of the stored JPEG.
    pub bytes: i64,
    pub uploaded_by: Uuid,
    pub created_at: DateTime<Utc>,
}

const PHOTO_COLUMNS: &str = "ph.id, ph.plant_id, '/api/photos/' || ph.id AS url, \
     '/api/photos/' || ph.id || '/thumbnail' AS thumbnail_url, ph.width, ph.height, ph.bytes, \
     ph.uploaded_by, ph.created_at";

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PhotoForm {
    /// A JPEG, PNG or WebP image (told by its content), up to `MAX_PHOTO_BYTES` (10 MB) and
    /// `MAX_PHOTO_PIXELS` (40 megapixels). It is stored re-encoded as JPEG, without EXIF or GPS
    /// data, with a thumbnail.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    file: Vec<u8>,
}

/// The plant's owner, or the caller's standing towards it.
enum Standing {
    Owner(Uuid),
    Sitter(Uuid),
    Reader,
}

/// Who the caller is to a plant; 404 when they may not see it.
async fn standing(app: &App, auth: &AuthUser, plant_id: Uuid) -> Result<Standing, ApiError> {
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT owner_id FROM plants WHERE id = $1")
        .bind(plant_id)
        .fetch_optional(&app.pool)
        .await?;
    let owner = owner.ok_or(ApiError::NotFound("plant"))?;
    if owner == auth.user_id {
        return Ok(Standing::Owner(owner));
    }
    if crate::photos::is_active_sitter(app, auth.user_id, plant_id).await? {
        return Ok(Standing::Sitter(owner));
    }
    if super::plants::reads_all(auth) {
        return Ok(Standing::Reader);
    }
    Err(ApiError::NotFound("plant"))
}

fn multipart_error(err: MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            message: "the upload is too large".into(),
        }
    } else {
        ApiError::BadRequest {
            code: "malformed_multipart",
            message: err.body_text(),
        }
    }
}

/// Adds a photo of a plant: its owner, or the sitter of an accepted or running sitting of it.
#[utoipa::path(post, path = "/{id}/photos", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id")),
    request_body(content = PhotoForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "The stored photo", body = Positioned<PhotoView>),
        (status = 202, description = "Stored; the read model is catching up", body = Pending),
        (status = 400, description = "`malformed_multipart`", body = ErrorBody),
        (status = 403, description = "`forbidden`: only the owner and the active sitter add photos", body = ErrorBody),
        (status = 404, description = "No such plant the caller may see", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over MAX_PHOTO_BYTES, or over MAX_PHOTO_PIXELS (`too_many_pixels`)", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not multipart, or not a JPEG, PNG or WebP image", body = ErrorBody),
        (status = 422, description = "`validation_failed` (no `file` field), `invalid_image`", body = ErrorBody),
    ))]
async fn upload_photo(
    State(app): State<App>,
    auth: AuthUser,
    RequestMeta(meta): RequestMeta,
    ApiPath(plant_id): ApiPath<Uuid>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let owner = match standing(&app, &auth, plant_id).await? {
        Standing::Owner(owner) | Standing::Sitter(owner) => owner,
        Standing::Reader => {
            return Err(ApiError::forbidden(
                "only the plant's owner and its active sitter add photos",
            ))
        }
    };
    let mut multipart = multipart.map_err(|_| ApiError::UnsupportedMediaType {
        message: "expected `Content-Type: multipart/form-data` with a `file` field".into(),
    })?;
    let limit = app.config.max_photo_bytes;
    let mut upload: Option<Vec<u8>> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            continue;
        }
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if data.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge {
                    message: format!("a photo is at most {limit} bytes"),
                });
            }
            data.extend_from_slice(&chunk);
        }
        upload = Some(data);
        break;
    }
    let upload = upload.ok_or_else(|| ApiError::invalid("file", "is required"))?;
    let uploaded = crate::photos::add_photo(
        &app,
        auth.actor(),
        owner,
        plant_id,
        upload,
        &auth.metadata(meta),
    )
    .await
    .map_err(upload_error)?;
    if !super::settle(&app, "Plant", &uploaded.committed).await {
        return Ok(super::accepted(uploaded.photo_id, &uploaded.committed));
    }
    let view: PhotoView = sqlx::query_as(&format!(
        "SELECT {PHOTO_COLUMNS} FROM plant_photos ph WHERE ph.id = $1"
    ))
    .bind(uploaded.photo_id)
    .fetch_optional(&app.pool)
    .await?
    .ok_or(ApiError::NotFound("photo"))?;
    Ok((
        StatusCode::CREATED,
        Json(super::positioned(view, &uploaded.committed)),
    )
        .into_response())
}

fn upload_error(err: UploadError) -> ApiError {
    match err {
        UploadError::Photo(PhotoError::Unsupported) => ApiError::UnsupportedMediaType {
            message: "the file is not a JPEG, PNG or WebP image".into(),
        },
        UploadError::Photo(err @ PhotoError::TooManyPixels { .. }) => ApiError::PayloadTooLarge {
            message: err.to_string(),
        },
        UploadError::Photo(PhotoError::Unreadable(reason)) => ApiError::Unprocessable {
            code: "invalid_image",
            message: format!("the image cannot be read: {reason}"),
        },
        UploadError::Command(err) => err.into(),
        UploadError::Internal(err) => ApiError::Internal(err),
    }
}

/// The photos of a plant the caller may see, oldest first.
#[utoipa::path(get, path = "/{id}/photos", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The plant's id"), PageParams),
    responses(
        (status = 200, description = "The plant's photos", body = Page<PhotoView>),
        (status = 404, description = "No such plant the caller may see", body = ErrorBody),
    ))]
async fn list_photos(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(plant_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<PhotoView>>, ApiError> {
    let mut errors = FieldErrors::new();
    let (limit, cursor) = pagination::parse(
        params.limit.as_deref(),
        params.cursor.as_deref(),
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    standing(&app, &auth, plant_id).await?;
    let rows: Vec<PhotoView> = sqlx::query_as(&format!(
        "SELECT {PHOTO_COLUMNS} FROM plant_photos ph \
          WHERE ph.plant_id = $1 AND ($2::uuid IS NULL OR ph.id > $2) ORDER BY ph.id LIMIT $3"
    ))
    .bind(plant_id)
    .bind(cursor)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(pagination::page(rows, limit, |p: &PhotoView| p.id)))
}

async fn image(
    app: &App,
    auth: &AuthUser,
    photo_id: Uuid,
    thumbnail: bool,
) -> Result<Response, ApiError> {
    let found: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT plant_id, object_key, thumbnail_key FROM plant_photos WHERE id = $1",
    )
    .bind(photo_id)
    .fetch_optional(&app.pool)
    .await?;
    let (plant_id, photo_key, thumbnail_key) = found.ok_or(ApiError::NotFound("photo"))?;
    standing(app, auth, plant_id)
        .await
        .map_err(|_| ApiError::NotFound("photo"))?;
    let key = if thumbnail { thumbnail_key } else { photo_key };
    let bytes = app
        .photos
        .get(&key)
        .await?
        .ok_or(ApiError::NotFound("photo"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}

/// A photo (JPEG, re-encoded: no EXIF or GPS data), for whoever may see its plant.
#[utoipa::path(get, path = "/{id}", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The photo's id")),
    responses(
        (status = 200, description = "The image", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "No such photo the caller may see", body = ErrorBody),
    ))]
async fn get_photo(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    image(&app, &auth, id, false).await
}

/// A photo's thumbnail (at most 320 pixels a side).
#[utoipa::path(get, path = "/{id}/thumbnail", tag = "plants", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The photo's id")),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "No such photo the caller may see", body = ErrorBody),
    ))]
async fn get_thumbnail(
    State(app): State<App>,
    auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    image(&app, &auth, id, true).await
}
