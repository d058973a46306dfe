//! Read models `sittings`, `sitting_plants`, `sitting_applications`, `care_reports` and
//! `reviews` (projection `sittings`). Sealed fields are opened with their writer's key; a field
//! whose writer was erased reads as NULL, and a sitting whose owner was erased is not projected,
//! nor are the applications, reports and reviews of erased people (what the foreign keys to
//! `users` remove when `UserErased` deletes a user: see `identity::erasure`).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::sitting::{Sitting, Status};
use crate::commands::values::GeoPoint;
use crate::events::crypto::{KeyStore, Sealed};
use crate::events::sitting::{Location, SittingEvent};
use crate::events::StoredEvent;

pub struct SittingsProjection {
    keys: Arc<KeyStore>,
}

impl SittingsProjection {
    pub fn new(keys: Arc<KeyStore>) -> Self {
        SittingsProjection { keys }
    }

    /// The plaintext of a field sealed under `user`'s key; `None` when that user was erased.
    async fn open(&self, user: Uuid, sealed: &Sealed) -> anyhow::Result<Option<String>> {
        Ok(self.keys.open_if_present(user, sealed).await?)
    }

    async fn open_optional(
        &self,
        user: Uuid,
        sealed: &Option<Sealed>,
    ) -> anyhow::Result<Option<String>> {
        match sealed {
            Some(sealed) => self.open(user, sealed).await,
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Projection for SittingsProjection {
    fn name(&self) -> &'static str {
        "sittings"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Sitting"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "public.sittings",
            "public.sitting_plants",
            "public.sitting_applications",
            "public.care_reports",
            "public.reviews",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        if !events.is_empty() {
            crate::infra::cache::bump(conn, "sittings").await?;
        }
        for event in events {
            let id: Uuid = event.aggregate_id.parse()?;
            let at = event.timestamp;
            let version = event.sequence;
            // Every event moves the sitting's version; the row's other columns per event below.
            let touch = |status: Option<Status>| {
                sqlx::query(
                    "UPDATE sittings SET status = COALESCE($2, status), updated_at = $3, \
                            version = $4, projected_at = clock_timestamp() \
                      WHERE id = $1 AND version < $4",
                )
                .bind(id)
                .bind(status.map(|s| s.as_str()))
                .bind(at)
                .bind(version)
            };
            match event.decode::<Sitting>()? {
                SittingEvent::SittingRequested {
                    owner_id,
                    plant_ids,
                    starts_on,
                    ends_on,
                    location,
                    instructions,
                } => {
                    let Some(location) = self.open(owner_id, &location).await? else {
                        continue;
                    };
                    let location: Location = serde_json::from_str(&location)?;
                    let approx = GeoPoint {
                        lat: location.lat,
                        lon: location.lon,
                    }
                    .approximate();
                    let instructions = self.open_optional(owner_id, &instructions).await?;
                    sqlx::query(
                        "INSERT INTO sittings (id, owner_id, status, starts_on, ends_on, lat, lon, \
                                               approx_lat, approx_lon, city, instructions, \
                                               created_at, updated_at, version) \
                         VALUES ($1, $2, 'open', $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(id)
                    .bind(owner_id)
                    .bind(starts_on)
                    .bind(ends_on)
                    .bind(location.lat)
                    .bind(location.lon)
                    .bind(approx.lat)
                    .bind(approx.lon)
                    .bind(&location.city)
                    .bind(instructions)
                    .bind(at)
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(
                        "INSERT INTO sitting_plants (sitting_id, plant_id) \
                         SELECT $1, p FROM UNNEST($2::uuid[]) AS p ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(&plant_ids)
                    .execute(&mut *conn)
                    .await?;
                }
                SittingEvent::ApplicationSubmitted {
                    applicant_id,
                    message,
                } => {
                    if self.keys.is_erased(applicant_id).await? {
                        touch(None).execute(&mut *conn).await?;
                        continue;
                    }
                    let message = self.open_optional(applicant_id, &message).await?;
                    let inserted = sqlx::query(
                        "INSERT INTO sitting_applications (sitting_id, applicant_id, message, applied_at) \
                         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM sittings WHERE id = $1) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(applicant_id)
                    .bind(message)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                    touch(None).execute(&mut *conn).await?;
                    if inserted.rows_affected() > 0 {
                        count_applications(conn, id).await?;
                    }
                }
                SittingEvent::ApplicationWithdrawn { applicant_id } => {
                    sqlx::query(
                        "DELETE FROM sitting_applications WHERE sitting_id = $1 AND applicant_id = $2",
                    )
                    .bind(id)
                    .bind(applicant_id)
                    .execute(&mut *conn)
                    .await?;
                    touch(None).execute(&mut *conn).await?;
                    count_applications(conn, id).await?;
                }
                SittingEvent::SitterAccepted { sitter_id } => {
                    // An erased sitter is no longer anyone (as the foreign key's SET NULL).
                    let sitter = if self.keys.is_erased(sitter_id).await? {
                        None
                    } else {
                        Some(sitter_id)
                    };
                    sqlx::query("UPDATE sittings SET sitter_id = $2 WHERE id = $1")
                        .bind(id)
                        .bind(sitter)
                        .execute(&mut *conn)
                        .await?;
                    touch(Some(Status::Accepted)).execute(&mut *conn).await?;
                }
                SittingEvent::SittingStarted { .. } => {
                    touch(Some(Status::InProgress)).execute(&mut *conn).await?;
                }
                SittingEvent::CareReported {
                    report_id,
                    sitter_id,
                    plant_id,
                    note,
                    before_photo_id,
                    after_photo_id,
                } => {
                    if self.keys.is_erased(sitter_id).await? {
                        touch(None).execute(&mut *conn).await?;
                        continue;
                    }
                    let note = self.open(sitter_id, &note).await?;
                    let inserted = sqlx::query(
                        "INSERT INTO care_reports (id, sitting_id, plant_id, sitter_id, note, \
                                                   before_photo_id, after_photo_id, created_at) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                          WHERE EXISTS (SELECT 1 FROM sittings WHERE id = $2) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(report_id)
                    .bind(id)
                    .bind(plant_id)
                    .bind(sitter_id)
                    .bind(note)
                    .bind(before_photo_id)
                    .bind(after_photo_id)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                    touch(None).execute(&mut *conn).await?;
                    if inserted.rows_affected() > 0 {
                        sqlx::query("UPDATE sittings SET reports = reports + 1 WHERE id = $1")
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                SittingEvent::SittingCompleted { .. } => {
                    touch(Some(Status::Completed)).execute(&mut *conn).await?;
                }
                SittingEvent::SittingCancelled { by, reason } => {
                    let reason = self.open(by, &reason).await?;
                    sqlx::query("UPDATE sittings SET cancel_reason = $2 WHERE id = $1")
                        .bind(id)
                        .bind(reason)
                        .execute(&mut *conn)
                        .await?;
                    touch(Some(Status::Cancelled)).execute(&mut *conn).await?;
                }
                SittingEvent::ReviewLeft {
                    author_id,
                    subject_id,
                    rating,
                    comment,
                } => {
                    if self.keys.is_erased(author_id).await? {
                        touch(None).execute(&mut *conn).await?;
                        continue;
                    }
                    let comment = self.open_optional(author_id, &comment).await?;
                    sqlx::query(
                        "INSERT INTO reviews (sitting_id, author_id, subject_id, rating, comment, created_at) \
                         SELECT $1, $2, $3, $4, $5, $6 \
                          WHERE EXISTS (SELECT 1 FROM sittings WHERE id = $1) \
                            AND EXISTS (SELECT 1 FROM users WHERE id = $3) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(author_id)
                    .bind(subject_id)
                    .bind(i16::from(rating))
                    .bind(comment)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                    touch(None).execute(&mut *conn).await?;
                }
                // Nothing to show; the version still follows the stream.
                SittingEvent::SittingStartReminderIssued { .. } => {
                    touch(None).execute(&mut *conn).await?;
                }
                // No longer `open`: gone from browsing; the owner still lists it.
                SittingEvent::SittingExpired { .. } => {
                    touch(Some(Status::Expired)).execute(&mut *conn).await?;
                }
            }
        }
        Ok(())
    }
}

async fn count_applications(conn: &mut PgConnection, id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE sittings SET applications = \
            (SELECT count(*) FROM sitting_applications WHERE sitting_id = $1) WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
