//! Read model `plants`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::plant::Plant;
use crate::events::crypto::{CryptoError, KeyStore};
use crate::events::plant::{PlantChanges, PlantEvent};
use crate::events::StoredEvent;

pub struct PlantsProjection {
    keys: Arc<KeyStore>,
}

impl PlantsProjection {
    pub fn new(keys: Arc<KeyStore>) -> Self {
        PlantsProjection { keys }
    }
}

#[async_trait]
impl Projection for PlantsProjection {
    fn name(&self) -> &'static str {
        "plants"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Plant"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["public.plants", "public.plant_photos"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        // Runs of creations and updates are written with one statement each (creations first,
        // then updates folded per plant); anything else flushes the run first, so events still
        // take effect in log order.
        let mut created = NewPlants::default();
        let mut updated = PlantUpdates::default();
        let mut decoded = Vec::with_capacity(events.len());
        let mut owners = Vec::new();
        for event in events {
            let plant_event = event.decode::<Plant>()?;
            if let PlantEvent::PlantCreated { owner_id, .. } = &plant_event {
                owners.push(*owner_id);
            }
            decoded.push((event, plant_event));
        }
        owners.sort_unstable();
        owners.dedup();
        // The owners' keys at once; a missing key is an erased owner.
        let keys = self.keys.ciphers(&owners).await?;
        for (event, plant_event) in decoded {
            let plant_id: Uuid = event.aggregate_id.parse()?;
            match plant_event {
                PlantEvent::PlantCreated {
                    owner_id,
                    name,
                    species,
                    description,
                    care,
                } => {
                    if !keys.contains_key(&owner_id) {
                        // Its owner was erased: never shown (as the foreign key removes it live).
                        continue;
                    }
                    created.ids.push(plant_id);
                    created.owners.push(owner_id);
                    created.names.push(name);
                    created.species.push(species);
                    created.descriptions.push(description);
                    created.watering.push(care.watering_interval_days);
                    created.light.push(care.light);
                    created.notes.push(care.notes);
                    created.times.push(event.timestamp);
                    created.versions.push(event.sequence);
                }
                PlantEvent::PlantUpdated { changes } => {
                    updated.push(plant_id, changes, event.timestamp, event.sequence);
                }
                PlantEvent::PlantDeleted => {
                    created.flush(conn).await?;
                    updated.flush(conn).await?;
                    sqlx::query("DELETE FROM plants WHERE id = $1")
                        .bind(plant_id)
                        .execute(&mut *conn)
                        .await?;
                }
                PlantEvent::PhotoAdded {
                    photo_id,
                    object_key,
                    thumbnail_key,
                    width,
                    height,
                    bytes,
                    uploaded_by,
                } => {
                    created.flush(conn).await?;
                    updated.flush(conn).await?;
                    let owner: Option<Uuid> =
                        sqlx::query_scalar("SELECT owner_id FROM plants WHERE id = $1")
                            .bind(plant_id)
                            .fetch_optional(&mut *conn)
                            .await?;
                    // A plant gone, or an owner erased: nothing of the photo is shown.
                    let Some(owner) = owner else { continue };
                    let cipher = match self.keys.cipher(owner).await {
                        Ok(cipher) => cipher,
                        Err(CryptoError::KeyMissing(_)) => continue,
                        Err(err) => return Err(err.into()),
                    };
                    sqlx::query(
                        "INSERT INTO plant_photos (id, plant_id, object_key, thumbnail_key, width, \
                                                   height, bytes, uploaded_by, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(photo_id)
                    .bind(plant_id)
                    .bind(cipher.open(&object_key)?)
                    .bind(cipher.open(&thumbnail_key)?)
                    .bind(i32::try_from(width)?)
                    .bind(i32::try_from(height)?)
                    .bind(i64::try_from(bytes)?)
                    .bind(uploaded_by)
                    .bind(event.timestamp)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        created.flush(conn).await?;
        updated.flush(conn).await
    }
}

/// Plants created by consecutive events, inserted together.
#[derive(Default)]
struct NewPlants {
    ids: Vec<Uuid>,
    owners: Vec<Uuid>,
    names: Vec<String>,
    species: Vec<Option<String>>,
    descriptions: Vec<Option<String>>,
    watering: Vec<Option<i32>>,
    light: Vec<Option<String>>,
    notes: Vec<Option<String>>,
    times: Vec<DateTime<Utc>>,
    versions: Vec<i64>,
}

impl NewPlants {
    async fn flush(&mut self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(self);
        sqlx::query(
            "INSERT INTO plants (id, owner_id, name, species, description, watering_interval_days, \
                                 light, care_notes, created_at, updated_at, version) \
             SELECT id, owner_id, name, species, description, watering, light, notes, at, at, version \
               FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
                           $6::int4[], $7::text[], $8::text[], $9::timestamptz[], $10::int8[]) \
                    AS p(id, owner_id, name, species, description, watering, light, notes, at, version) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&batch.ids)
        .bind(&batch.owners)
        .bind(&batch.names)
        .bind(&batch.species)
        .bind(&batch.descriptions)
        .bind(&batch.watering)
        .bind(&batch.light)
        .bind(&batch.notes)
        .bind(&batch.times)
        .bind(&batch.versions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Updates of consecutive events, folded per plant and written together.
///
/// Folding is exact: a later change of a field overrides an earlier one, and the folded update
/// carries the last event's time and version. The per-event guard `version < event version`
/// becomes `version < last version`; a row that had seen some of the folded events already
/// holds the values they set unless a later one (also folded) changed them, so the result is the
/// same as applying the events one by one.
#[derive(Default)]
struct PlantUpdates {
    index: HashMap<Uuid, usize>,
    folded: Vec<FoldedUpdate>,
}

struct FoldedUpdate {
    id: Uuid,
    changes: PlantChanges,
    at: DateTime<Utc>,
    version: i64,
}

impl PlantUpdates {
    fn push(&mut self, id: Uuid, changes: PlantChanges, at: DateTime<Utc>, version: i64) {
        match self.index.get(&id) {
            Some(&i) => {
                let folded = &mut self.folded[i];
                if changes.name.is_some() {
                    folded.changes.name = changes.name;
                }
                if changes.species.is_some() {
                    folded.changes.species = changes.species;
                }
                if changes.description.is_some() {
                    folded.changes.description = changes.description;
                }
                if changes.care.is_some() {
                    folded.changes.care = changes.care;
                }
                folded.at = at;
                folded.version = version;
            }
            None => {
                self.index.insert(id, self.folded.len());
                self.folded.push(FoldedUpdate {
                    id,
                    changes,
                    at,
                    version,
                });
            }
        }
    }

    async fn flush(&mut self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.folded.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(self).folded;
        let n = batch.len();
        let mut ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut set_species = Vec::with_capacity(n);
        let mut species = Vec::with_capacity(n);
        let mut set_description = Vec::with_capacity(n);
        let mut descriptions = Vec::with_capacity(n);
        let mut set_care = Vec::with_capacity(n);
        let mut watering = Vec::with_capacity(n);
        let mut light = Vec::with_capacity(n);
        let mut notes = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        for update in batch {
            let changes = update.changes;
            ids.push(update.id);
            names.push(changes.name);
            set_species.push(changes.species.is_some());
            species.push(changes.species.flatten());
            set_description.push(changes.description.is_some());
            descriptions.push(changes.description.flatten());
            set_care.push(changes.care.is_some());
            let care = changes.care.unwrap_or_default();
            watering.push(care.watering_interval_days);
            light.push(care.light);
            notes.push(care.notes);
            times.push(update.at);
            versions.push(update.version);
        }
        sqlx::query(
            "UPDATE plants p SET \
                name = COALESCE(u.name, p.name), \
                species = CASE WHEN u.set_species THEN u.species ELSE p.species END, \
                description = CASE WHEN u.set_description THEN u.description \
                                   ELSE p.description END, \
                watering_interval_days = CASE WHEN u.set_care THEN u.watering \
                                              ELSE p.watering_interval_days END, \
                light = CASE WHEN u.set_care THEN u.light ELSE p.light END, \
                care_notes = CASE WHEN u.set_care THEN u.notes ELSE p.care_notes END, \
                updated_at = u.at, version = u.version, projected_at = clock_timestamp() \
               FROM UNNEST($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::bool[], \
                           $6::text[], $7::bool[], $8::int4[], $9::text[], $10::text[], \
                           $11::timestamptz[], $12::int8[]) \
                    AS u(id, name, set_species, species, set_description, description, \
                         set_care, watering, light, notes, at, version) \
              WHERE p.id = u.id AND p.version < u.version",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&set_species)
        .bind(&species)
        .bind(&set_description)
        .bind(&descriptions)
        .bind(&set_care)
        .bind(&watering)
        .bind(&light)
        .bind(&notes)
        .bind(&times)
        .bind(&versions)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
