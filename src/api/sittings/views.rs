//! What a caller sees of a sitting, and the queries behind `GET /api/sittings`.
//!
//! Home secrets: everyone who may see a sitting sees its city and a point rounded to about 1 km
//! (`GeoPoint::approximate`). The exact point and the instructions (door codes, where the key is)
//! go to its owner, to its accepted sitter only while the sitting is `accepted` or
//! `in_progress` (a former sitter sees it as history), and to an admin only for a stated reason,
//! recorded as an access (`GET /api/sittings/{id}?reason=`). Browse lists show every caller the
//! public view, so the query cache holds no secret. Distances in search results are computed
//! from the rounded point, so ordering by distance reveals nothing finer either.
//!
//! Applicants see an open sitting like everyone; once the owner chose someone else (or the
//! sitting closed) it is no longer theirs to follow: 404, and `not_selected` in their list of
//! applications (`GET /api/me/applications`).

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
    /// For the owner, the accepted sitter while the sitting is `accepted` or `in_progress`, and
    /// admins who give a `reason`; null for everyone else.
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

#[derive(Debug, Clone, sqlx::FromRow, Serialize, serde::Deserialize)]
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
    /// Metres from the searched point (rounded points), or the sort key of other lists.
    pub distance_m: Option<f64>,
}

/// Columns of a [`SittingRow`].
pub const COLUMNS: &str = "s.id, s.owner_id, s.status, s.starts_on, s.ends_on, s.lat, s.lon, \
     s.approx_lat, s.approx_lon, s.city, s.instructions, s.sitter_id, s.applications, s.reports, \
     s.cancel_reason, s.created_at, s.updated_at, s.version, \
     ARRAY(SELECT sp.plant_id FROM sitting_plants sp WHERE sp.sitting_id = s.id ORDER BY sp.plant_id) AS plant_ids";

/// How much of a sitting's home a caller is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disclosure {
    /// The city and a point rounded to about 1 km; no instructions.
    Public,
    /// The exact point and the instructions.
    Home,
}

impl SittingRow {
    fn is_owner(&self, viewer: &AuthUser) -> bool {
        self.owner_id == viewer.user_id
    }

    fn is_sitter(&self, viewer: &AuthUser) -> bool {
        self.sitter_id == Some(viewer.user_id)
    }

    /// Open sittings are public (people apply to them); others belong to their owner, their
    /// sitter (a former one sees them as history), botanists (who advise on plants in care) and
    /// admins. Applicants who were not chosen no longer follow them.
    pub fn visible_to(&self, viewer: &AuthUser) -> bool {
        self.status == "open"
            || self.is_owner(viewer)
            || self.is_sitter(viewer)
            || matches!(viewer.role, Role::Botanist | Role::Admin)
    }

    /// Whether the sitting's home is the sitter's business now: accepted or running.
    fn in_care(&self) -> bool {
        matches!(self.status.as_str(), "accepted" | "in_progress")
    }

    /// What `viewer` is shown of the home: the owner and, while it is in their care, the
    /// sitter see it; an admin only with a recorded reason (`admin_reason`).
    pub fn disclosure(&self, viewer: &AuthUser, admin_reason: bool) -> Disclosure {
        let home = self.is_owner(viewer)
            || (self.is_sitter(viewer) && self.in_care())
            || (viewer.role == Role::Admin && admin_reason);
        if home {
            Disclosure::Home
        } else {
            Disclosure::Public
        }
    }

    /// The row without its secrets (exact point, instructions): what may be cached or stored.
    pub fn without_home(mut self) -> Self {
        self.lat = self.approx_lat;
        self.lon = self.approx_lon;
        self.instructions = None;
        self
    }

    /// The sitting as `viewer` sees it, with the home as `disclosure` allows.
    pub fn view_for(self, viewer: &AuthUser, disclosure: Disclosure) -> SittingView {
        let insider = disclosure == Disclosure::Home;
        // Cancel reasons: for the owner, the sitter (past or present) and admins.
        let participant =
            self.is_owner(viewer) || self.is_sitter(viewer) || viewer.role == Role::Admin;
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

pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<SittingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS}, NULL::float8 AS distance_m FROM sittings s WHERE s.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The sitting as the caller may see it; 404 when they may not (whether or not it exists).
pub async fn visible(pool: &PgPool, viewer: &AuthUser, id: Uuid) -> Result<SittingRow, ApiError> {
    load(pool, id)
        .await?
        .filter(|row| row.visible_to(viewer))
        .ok_or(ApiError::NotFound("sitting"))
}
