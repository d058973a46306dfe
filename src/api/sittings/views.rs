//! What a caller sees of a sitting, and the queries behind `GET /api/sittings`.
//!
//! Location privacy: everyone who may see a sitting sees its city and a point rounded to about
//! 1 km (`GeoPoint::approximate`); the exact point and the instructions (door codes, where the
//! key is) only its owner, its accepted sitter and admins. Distances in search results are
//! computed from the rounded point, so ordering by distance reveals nothing finer either.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::api::token::AuthUser;
use crate::events::user::Role;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocationView {
    pub lat: f64,
    pub lon: f64,
    pub city: String,
    /// True when the point is rounded to about 1 km (what strangers see).
    pub approximate: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SittingView {
    pub id: Uuid,
    pub owner_id: Uuid,
    /// `open`, `accepted`, `in_progress`, `completed`, `cancelled` or `expired`.
    pub status: String,
    pub starts_on: NaiveDate,
    pub ends_on: NaiveDate,
    pub plant_ids: Vec<Uuid>,
    pub location: LocationView,
    /// For the owner, the accepted sitter and admins only.
    pub instructions: Option<String>,
    pub sitter_id: Option<Uuid>,
    /// How many applications are pending.
    pub applications: i32,
    /// How many care reports the sitter posted.
    pub reports: i32,
    /// Why it was cancelled (participants and admins).
    pub cancel_reason: Option<String>,
    /// Kilometres from `near`, between rounded points (searches near a place only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, sqlx::FromRow, Serialize, serde::Deserialize)]
pub struct SittingRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub status: String,
    pub starts_on: NaiveDate,
    pub ends_on: NaiveDate,
    pub lat: f64,
    pub lon: f64,
    pub approx_lat: f64,
    pub approx_lon: f64,
    pub city: String,
    pub instructions: Option<String>,
    pub sitter_id: Option<Uuid>,
    pub applications: i32,
    pub reports: i32,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub plant_ids: Vec<Uuid>,
    /// Whether the caller has a pending application.
    pub applied: bool,
    /// Metres from the searched point (rounded points), or the sort key of other lists.
    pub distance_m: Option<f64>,
}

/// Columns of a [`SittingRow`] for caller `$1`.
pub const COLUMNS: &str = "s.id, s.owner_id, s.status, s.starts_on, s.ends_on, s.lat, s.lon, \
     s.approx_lat, s.approx_lon, s.city, s.instructions, s.sitter_id, s.applications, s.reports, \
     s.cancel_reason, s.created_at, s.updated_at, s.version, \
     ARRAY(SELECT sp.plant_id FROM sitting_plants sp WHERE sp.sitting_id = s.id ORDER BY sp.plant_id) AS plant_ids, \
     EXISTS (SELECT 1 FROM sitting_applications a WHERE a.sitting_id = s.id AND a.applicant_id = $1) AS applied";

impl SittingRow {
    fn is_owner(&self, viewer: &AuthUser) -> bool {
        self.owner_id == viewer.user_id
    }

    fn is_sitter(&self, viewer: &AuthUser) -> bool {
        self.sitter_id == Some(viewer.user_id)
    }

    /// Open sittings are public (people apply to them); others belong to their participants,
    /// botanists (who advise on plants in care) and admins.
    pub fn visible_to(&self, viewer: &AuthUser) -> bool {
        self.status == "open"
            || self.is_owner(viewer)
            || self.is_sitter(viewer)
            || self.applied
            || matches!(viewer.role, Role::Botanist | Role::Admin)
    }

    /// Who sees the exact place and the instructions.
    pub fn is_insider(&self, viewer: &AuthUser) -> bool {
        self.is_owner(viewer) || self.is_sitter(viewer) || viewer.role == Role::Admin
    }

    pub fn view_for(self, viewer: &AuthUser) -> SittingView {
        let insider = self.is_insider(viewer);
        let participant = insider || self.applied;
        let location = if insider {
            LocationView {
                lat: self.lat,
                lon: self.lon,
                city: self.city,
                approximate: false,
            }
        } else {
            LocationView {
                lat: self.approx_lat,
                lon: self.approx_lon,
                city: self.city,
                approximate: true,
            }
        };
        SittingView {
            id: self.id,
            owner_id: self.owner_id,
            status: self.status,
            starts_on: self.starts_on,
            ends_on: self.ends_on,
            plant_ids: self.plant_ids,
            location,
            instructions: self.instructions.filter(|_| insider),
            sitter_id: self.sitter_id,
            applications: self.applications,
            reports: self.reports,
            cancel_reason: self.cancel_reason.filter(|_| participant),
            distance_km: None,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        }
    }
}

pub async fn load(
    pool: &PgPool,
    viewer: Uuid,
    id: Uuid,
) -> Result<Option<SittingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, NULL::float8 AS distance_m FROM sittings s WHERE s.id = $2"
    ))
    .bind(viewer)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The sitting as the caller may see it; 404 when they may not (whether or not it exists).
pub async fn visible(pool: &PgPool, viewer: &AuthUser, id: Uuid) -> Result<SittingRow, ApiError> {
    load(pool, viewer.user_id, id)
        .await?
        .filter(|row| row.visible_to(viewer))
        .ok_or(ApiError::NotFound("sitting"))
}
