//! Read models `sittings`, `sitting_plants`, `sitting_applications`, `care_reports` and
//! `reviews` (projection `sittings`). Sealed fields are opened with their writer's key; a field
//! whose writer was erased reads as NULL, and a sitting whose owner was erased is not projected,
//! nor are the applications, reports and reviews of erased people (what the foreign keys to
//! `users` remove when `UserErased` deletes a user: see `identity::erasure`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
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

    /// Layer by layer (see [`super::layers`]): events of different sittings write different
    /// rows, so each layer is written with one statement per kind of change. The keys of
    /// everyone the batch names are read at once; a missing key is an erased person.
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        crate::infra::cache::bump(conn, "sittings").await?;
        let mut decoded = HashMap::with_capacity(events.len());
        let mut people = HashSet::new();
        for event in events {
            let sitting_event = event.decode::<Sitting>()?;
            match &sitting_event {
                SittingEvent::SittingRequested { owner_id, .. } => people.insert(*owner_id),
                SittingEvent::ApplicationSubmitted { applicant_id, .. } => {
                    people.insert(*applicant_id)
                }
                SittingEvent::SitterAccepted { sitter_id } => people.insert(*sitter_id),
                SittingEvent::CareReported { sitter_id, .. } => people.insert(*sitter_id),
                SittingEvent::SittingCancelled { by, .. } => people.insert(*by),
                SittingEvent::ReviewLeft { author_id, .. } => people.insert(*author_id),
                _ => false,
            };
            decoded.insert(event.position.global_position, sitting_event);
        }
        let people: Vec<Uuid> = people.into_iter().collect();
        let keys = self.keys.ciphers(&people).await?;
        let open = |user: Uuid, sealed: &Sealed| -> anyhow::Result<Option<String>> {
            match keys.get(&user) {
                Some(cipher) => Ok(Some(cipher.open(sealed)?)),
                None => Ok(None),
            }
        };
        // Each sitting's row, written once at the end of the batch.
        let mut rows = Rows::default();
        for layer in super::layers(events) {
            let mut changes = Layer::default();
            for event in layer {
                let id: Uuid = event.aggregate_id.parse()?;
                let at = event.timestamp;
                let version = event.sequence;
                let Some(sitting_event) = decoded.remove(&event.position.global_position) else {
                    continue;
                };
                match sitting_event {
                    SittingEvent::SittingRequested {
                        owner_id,
                        plant_ids,
                        starts_on,
                        ends_on,
                        location,
                        instructions,
                    } => {
                        let Some(location) = open(owner_id, &location)? else {
                            continue;
                        };
                        let location: Location = serde_json::from_str(&location)?;
                        let approx = GeoPoint {
                            lat: location.lat,
                            lon: location.lon,
                        }
                        .approximate();
                        let instructions = match &instructions {
                            Some(sealed) => open(owner_id, sealed)?,
                            None => None,
                        };
                        let r = &mut changes.requested;
                        r.ids.push(id);
                        r.owners.push(owner_id);
                        r.starts.push(starts_on);
                        r.ends.push(ends_on);
                        r.lats.push(location.lat);
                        r.lons.push(location.lon);
                        r.approx_lats.push(approx.lat);
                        r.approx_lons.push(approx.lon);
                        r.cities.push(location.city);
                        r.instructions.push(instructions);
                        r.times.push(at);
                        r.versions.push(version);
                        for plant in plant_ids {
                            changes.plants.0.push(id);
                            changes.plants.1.push(plant);
                        }
                    }
                    SittingEvent::ApplicationSubmitted {
                        applicant_id,
                        message,
                    } => {
                        if keys.contains_key(&applicant_id) {
                            let message = match &message {
                                Some(sealed) => open(applicant_id, sealed)?,
                                None => None,
                            };
                            changes.applied.sittings.push(id);
                            changes.applied.applicants.push(applicant_id);
                            changes.applied.messages.push(message);
                            changes.applied.times.push(at);
                        }
                        rows.touch(id, None, at, version);
                    }
                    SittingEvent::ApplicationWithdrawn { applicant_id } => {
                        changes.withdrawn.0.push(id);
                        changes.withdrawn.1.push(applicant_id);
                        rows.touch(id, None, at, version);
                    }
                    SittingEvent::SitterAccepted { sitter_id } => {
                        // An erased sitter is no longer anyone (as the foreign key's SET NULL).
                        let sitter = keys.contains_key(&sitter_id).then_some(sitter_id);
                        rows.row(id).sitter = Some(sitter);
                        rows.touch(id, Some(Status::Accepted), at, version);
                    }
                    SittingEvent::SittingStarted { .. } => {
                        rows.touch(id, Some(Status::InProgress), at, version);
                    }
                    SittingEvent::CareReported {
                        report_id,
                        sitter_id,
                        plant_id,
                        note,
                        before_photo_id,
                        after_photo_id,
                    } => {
                        if keys.contains_key(&sitter_id) {
                            let r = &mut changes.reports;
                            r.ids.push(report_id);
                            r.sittings.push(id);
                            r.plants.push(plant_id);
                            r.sitters.push(sitter_id);
                            r.notes.push(open(sitter_id, &note)?);
                            r.before.push(before_photo_id);
                            r.after.push(after_photo_id);
                            r.times.push(at);
                        }
                        rows.touch(id, None, at, version);
                    }
                    SittingEvent::SittingCompleted { .. } => {
                        rows.touch(id, Some(Status::Completed), at, version);
                    }
                    SittingEvent::SittingCancelled { by, reason } => {
                        rows.row(id).cancel_reason = Some(open(by, &reason)?);
                        rows.touch(id, Some(Status::Cancelled), at, version);
                    }
                    SittingEvent::ReviewLeft {
                        author_id,
                        subject_id,
                        rating,
                        comment,
                    } => {
                        if keys.contains_key(&author_id) {
                            let comment = match &comment {
                                Some(sealed) => open(author_id, sealed)?,
                                None => None,
                            };
                            let r = &mut changes.reviews;
                            r.sittings.push(id);
                            r.authors.push(author_id);
                            r.subjects.push(subject_id);
                            r.ratings.push(i16::from(rating));
                            r.comments.push(comment);
                            r.times.push(at);
                        }
                        rows.touch(id, None, at, version);
                    }
                    // Nothing to show; the version still follows the stream.
                    SittingEvent::SittingStartReminderIssued { .. } => {
                        rows.touch(id, None, at, version);
                    }
                    // No longer `open`: gone from browsing; the owner still lists it.
                    SittingEvent::SittingExpired { .. } => {
                        rows.touch(id, Some(Status::Expired), at, version);
                    }
                }
            }
            let (reported, recount) = changes.write(conn).await?;
            for id in reported {
                rows.row(id).reports += 1;
            }
            for id in recount {
                rows.row(id).recount = true;
            }
        }
        rows.write(conn).await
    }
}

/// What a batch does to each sitting's own row, folded: the row is updated once, whatever the
/// number of its events. Exact, as for plants: a stream's versions only grow and a checkpoint
/// never replays an event, so `version < last version` holds exactly when every folded event's
/// guard would have; the status is the last one set, the sitter and the reason of cancellation
/// the last ones given, the reports those the batch inserted, and the applications are counted
/// after every insert and withdrawal of the batch.
#[derive(Default)]
struct Rows {
    index: HashMap<Uuid, usize>,
    rows: Vec<(Uuid, RowChange)>,
}

#[derive(Default)]
struct RowChange {
    status: Option<&'static str>,
    at: Option<DateTime<Utc>>,
    version: i64,
    /// The sitter accepted (NULL when erased), if an acceptance was folded in.
    sitter: Option<Option<Uuid>>,
    cancel_reason: Option<Option<String>>,
    reports: i32,
    recount: bool,
}

impl Rows {
    fn row(&mut self, id: Uuid) -> &mut RowChange {
        let next = self.rows.len();
        let i = *self.index.entry(id).or_insert(next);
        if i == next {
            self.rows.push((id, RowChange::default()));
        }
        &mut self.rows[i].1
    }

    fn touch(&mut self, id: Uuid, status: Option<Status>, at: DateTime<Utc>, version: i64) {
        let row = self.row(id);
        if let Some(status) = status {
            row.status = Some(status.as_str());
        }
        row.at = Some(at);
        row.version = version;
    }

    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let n = self.rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut set_sitter = Vec::with_capacity(n);
        let mut sitters = Vec::with_capacity(n);
        let mut set_reason = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut reports = Vec::with_capacity(n);
        let mut recount = Vec::with_capacity(n);
        for (id, row) in self.rows {
            ids.push(id);
            statuses.push(row.status);
            times.push(row.at);
            // No event moved the version (a report of an erased sitter still does): 0 never
            // passes the guard.
            versions.push(if row.at.is_some() { row.version } else { 0 });
            set_sitter.push(row.sitter.is_some());
            sitters.push(row.sitter.flatten());
            set_reason.push(row.cancel_reason.is_some());
            reasons.push(row.cancel_reason.flatten());
            reports.push(row.reports);
            recount.push(row.recount);
        }
        sqlx::query(
            "UPDATE sittings s SET \
                status = CASE WHEN s.version < f.version THEN COALESCE(f.status, s.status) \
                              ELSE s.status END, \
                updated_at = CASE WHEN s.version < f.version THEN f.at ELSE s.updated_at END, \
                projected_at = CASE WHEN s.version < f.version THEN clock_timestamp() \
                                    ELSE s.projected_at END, \
                version = GREATEST(s.version, f.version), \
                sitter_id = CASE WHEN f.set_sitter THEN f.sitter ELSE s.sitter_id END, \
                cancel_reason = CASE WHEN f.set_reason THEN f.reason ELSE s.cancel_reason END, \
                reports = s.reports + f.reports, \
                applications = CASE WHEN f.recount \
                    THEN (SELECT count(*) FROM sitting_applications a WHERE a.sitting_id = s.id) \
                    ELSE s.applications END \
               FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int8[], $5::bool[], \
                           $6::uuid[], $7::bool[], $8::text[], $9::int4[], $10::bool[]) \
                    AS f(id, status, at, version, set_sitter, sitter, set_reason, reason, \
                         reports, recount) \
              WHERE s.id = f.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&times)
        .bind(&versions)
        .bind(&set_sitter)
        .bind(&sitters)
        .bind(&set_reason)
        .bind(&reasons)
        .bind(&reports)
        .bind(&recount)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// New sittings of one layer.
#[derive(Default)]
struct Requested {
    ids: Vec<Uuid>,
    owners: Vec<Uuid>,
    starts: Vec<NaiveDate>,
    ends: Vec<NaiveDate>,
    lats: Vec<f64>,
    lons: Vec<f64>,
    approx_lats: Vec<f64>,
    approx_lons: Vec<f64>,
    cities: Vec<String>,
    instructions: Vec<Option<String>>,
    times: Vec<DateTime<Utc>>,
    versions: Vec<i64>,
}

#[derive(Default)]
struct Reports {
    ids: Vec<Uuid>,
    sittings: Vec<Uuid>,
    plants: Vec<Uuid>,
    sitters: Vec<Uuid>,
    notes: Vec<Option<String>>,
    before: Vec<Option<Uuid>>,
    after: Vec<Option<Uuid>>,
    times: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct Reviews {
    sittings: Vec<Uuid>,
    authors: Vec<Uuid>,
    subjects: Vec<Uuid>,
    ratings: Vec<i16>,
    comments: Vec<Option<String>>,
    times: Vec<DateTime<Utc>>,
}

/// What one layer changes (at most one event per sitting), written with one statement per kind.
#[derive(Default)]
struct Layer {
    requested: Requested,
    /// (sitting, plant) of the new sittings.
    plants: (Vec<Uuid>, Vec<Uuid>),
    applied: Applied,
    /// (sitting, applicant).
    withdrawn: (Vec<Uuid>, Vec<Uuid>),
    reports: Reports,
    reviews: Reviews,
}

#[derive(Default)]
struct Applied {
    sittings: Vec<Uuid>,
    applicants: Vec<Uuid>,
    messages: Vec<Option<String>>,
    times: Vec<DateTime<Utc>>,
}

impl Layer {
    /// Writes the layer's rows of the other tables; returns the sittings that got a report and
    /// those whose applications are to be counted again.
    async fn write(self, conn: &mut PgConnection) -> anyhow::Result<(Vec<Uuid>, Vec<Uuid>)> {
        let r = &self.requested;
        if !r.ids.is_empty() {
            sqlx::query(
                "INSERT INTO sittings (id, owner_id, status, starts_on, ends_on, lat, lon, \
                                       approx_lat, approx_lon, city, instructions, \
                                       created_at, updated_at, version) \
                 SELECT id, owner_id, 'open', starts_on, ends_on, lat, lon, approx_lat, \
                        approx_lon, city, instructions, at, at, version \
                   FROM UNNEST($1::uuid[], $2::uuid[], $3::date[], $4::date[], $5::float8[], \
                               $6::float8[], $7::float8[], $8::float8[], $9::text[], $10::text[], \
                               $11::timestamptz[], $12::int8[]) \
                        AS s(id, owner_id, starts_on, ends_on, lat, lon, approx_lat, approx_lon, \
                             city, instructions, at, version) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&r.ids)
            .bind(&r.owners)
            .bind(&r.starts)
            .bind(&r.ends)
            .bind(&r.lats)
            .bind(&r.lons)
            .bind(&r.approx_lats)
            .bind(&r.approx_lons)
            .bind(&r.cities)
            .bind(&r.instructions)
            .bind(&r.times)
            .bind(&r.versions)
            .execute(&mut *conn)
            .await?;
        }
        if !self.plants.0.is_empty() {
            sqlx::query(
                "INSERT INTO sitting_plants (sitting_id, plant_id) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            )
            .bind(&self.plants.0)
            .bind(&self.plants.1)
            .execute(&mut *conn)
            .await?;
        }
        // Sittings whose applications are counted again.
        let mut recount: Vec<Uuid> = Vec::new();
        if !self.applied.sittings.is_empty() {
            let inserted: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO sitting_applications (sitting_id, applicant_id, message, applied_at) \
                 SELECT a.sitting_id, a.applicant_id, a.message, a.at \
                   FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) \
                        AS a(sitting_id, applicant_id, message, at) \
                  WHERE EXISTS (SELECT 1 FROM sittings s WHERE s.id = a.sitting_id) \
                 ON CONFLICT DO NOTHING RETURNING sitting_id",
            )
            .bind(&self.applied.sittings)
            .bind(&self.applied.applicants)
            .bind(&self.applied.messages)
            .bind(&self.applied.times)
            .fetch_all(&mut *conn)
            .await?;
            recount.extend(inserted);
        }
        if !self.withdrawn.0.is_empty() {
            sqlx::query(
                "DELETE FROM sitting_applications a \
                  USING UNNEST($1::uuid[], $2::uuid[]) AS w(sitting_id, applicant_id) \
                  WHERE a.sitting_id = w.sitting_id AND a.applicant_id = w.applicant_id",
            )
            .bind(&self.withdrawn.0)
            .bind(&self.withdrawn.1)
            .execute(&mut *conn)
            .await?;
            recount.extend(&self.withdrawn.0);
        }
        let mut reported = Vec::new();
        let r = &self.reports;
        if !r.ids.is_empty() {
            reported = sqlx::query_scalar(
                "INSERT INTO care_reports (id, sitting_id, plant_id, sitter_id, note, \
                                           before_photo_id, after_photo_id, created_at) \
                 SELECT r.* FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], \
                                        $5::text[], $6::uuid[], $7::uuid[], $8::timestamptz[]) \
                        AS r(id, sitting_id, plant_id, sitter_id, note, before_photo_id, \
                             after_photo_id, created_at) \
                  WHERE EXISTS (SELECT 1 FROM sittings s WHERE s.id = r.sitting_id) \
                 ON CONFLICT (id) DO NOTHING RETURNING sitting_id",
            )
            .bind(&r.ids)
            .bind(&r.sittings)
            .bind(&r.plants)
            .bind(&r.sitters)
            .bind(&r.notes)
            .bind(&r.before)
            .bind(&r.after)
            .bind(&r.times)
            .fetch_all(&mut *conn)
            .await?;
        }
        let r = &self.reviews;
        if !r.sittings.is_empty() {
            sqlx::query(
                "INSERT INTO reviews (sitting_id, author_id, subject_id, rating, comment, created_at) \
                 SELECT r.* FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int2[], $5::text[], \
                                        $6::timestamptz[]) \
                        AS r(sitting_id, author_id, subject_id, rating, comment, created_at) \
                  WHERE EXISTS (SELECT 1 FROM sittings s WHERE s.id = r.sitting_id) \
                    AND EXISTS (SELECT 1 FROM users u WHERE u.id = r.subject_id) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&r.sittings)
            .bind(&r.authors)
            .bind(&r.subjects)
            .bind(&r.ratings)
            .bind(&r.comments)
            .bind(&r.times)
            .execute(&mut *conn)
            .await?;
        }
        Ok((reported, recount))
    }
}
