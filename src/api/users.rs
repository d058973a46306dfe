//! `GET /api/users/{id}`: a user's public profile, what a stranger about to hand over their keys
//! (or to come and sit) may know: name, city, rating, completed sittings, recent reviews. Never
//! the e-mail address or phone.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::docs::ErrorBody;
use super::error::ApiError;
use super::extract::ApiPath;
use super::token::AuthUser;
use crate::App;

pub fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(public_profile))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema, sqlx::FromRow)]
pub struct ReviewView {
    pub sitting_id: Uuid,
    pub author_id: Uuid,
    pub author_name: Option<String>,
    pub rating: i16,
    /// Null once its writer was erased.
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct PublicProfile {
    pub id: Uuid,
    pub display_name: String,
    pub city: Option<String>,
    /// `USER`, `BOTANIST`...
    pub role: String,
    /// Mean of the ratings others gave this user (1-5); null without reviews.
    pub average_rating: Option<f64>,
    pub reviews: i64,
    /// Sittings completed, as owner or as sitter.
    pub completed_sittings: i64,
    /// The latest reviews of this user, newest first.
    pub recent_reviews: Vec<ReviewView>,
    pub member_since: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    id: Uuid,
    display_name: String,
    city: Option<String>,
    role: String,
    created_at: DateTime<Utc>,
    average_rating: Option<f64>,
    reviews: i64,
    completed_sittings: i64,
}

impl PublicProfile {
    /// An active user's profile with their `recent` latest reviews.
    pub async fn load(
        pool: &PgPool,
        id: Uuid,
        recent: i64,
    ) -> Result<Option<PublicProfile>, sqlx::Error> {
        let row: Option<ProfileRow> = sqlx::query_as(
            "SELECT u.id, u.display_name, u.city, u.role, u.created_at, \
                    (SELECT avg(r.rating)::float8 FROM reviews r WHERE r.subject_id = u.id) AS average_rating, \
                    (SELECT count(*) FROM reviews r WHERE r.subject_id = u.id) AS reviews, \
                    (SELECT count(*) FROM sittings s \
                      WHERE s.status = 'completed' AND (s.owner_id = u.id OR s.sitter_id = u.id)) \
                      AS completed_sittings \
               FROM users u WHERE u.id = $1 AND u.status = 'active'",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let recent_reviews: Vec<ReviewView> = if recent > 0 {
            sqlx::query_as(
                "SELECT r.sitting_id, r.author_id, a.display_name AS author_name, r.rating, \
                        r.comment, r.created_at \
                   FROM reviews r LEFT JOIN users a ON a.id = r.author_id \
                  WHERE r.subject_id = $1 ORDER BY r.created_at DESC LIMIT $2",
            )
            .bind(id)
            .bind(recent)
            .fetch_all(pool)
            .await?
        } else {
            Vec::new()
        };
        Ok(Some(PublicProfile {
            id: row.id,
            display_name: row.display_name,
            city: row.city,
            role: row.role,
            average_rating: row.average_rating.map(|r| (r * 100.0).round() / 100.0),
            reviews: row.reviews,
            completed_sittings: row.completed_sittings,
            recent_reviews,
            member_since: row.created_at,
        }))
    }
}

/// A user's public profile (from the query cache while the read models it comes from have not
/// changed).
#[utoipa::path(get, path = "/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The public profile", body = PublicProfile),
        (status = 404, description = "No such active user", body = ErrorBody),
    ))]
async fn public_profile(
    State(app): State<App>,
    _auth: AuthUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<PublicProfile>, ApiError> {
    let versions = crate::infra::cache::versions(&app.pool, &["users", "sittings"]).await?;
    let key = app.cache.key("profile", &versions, &id.to_string());
    if let Some(profile) = app.cache.get::<PublicProfile>("public_profile", &key).await {
        return Ok(Json(profile));
    }
    let profile = PublicProfile::load(&app.pool, id, 10)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    app.cache.put(&key, &profile).await;
    Ok(Json(profile))
}
