//! Read model `plants`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::plant::Plant;
use crate::events::crypto::{CryptoError, KeyStore};
use crate::events::plant::PlantEvent;
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

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        // Runs of creations are written with one statement; anything else flushes the run first,
        // so events still take effect in log order.
        let mut created = NewPlants::default();
        for event in events {
            let plant_id: Uuid = event.aggregate_id.parse()?;
            match event.decode::<Plant>()? {
                PlantEvent::PlantCreated {
                    owner_id,
                    name,
                    species,
                    description,
                    care,
                } => {
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
                    created.flush(conn).await?;
                    let care = changes.care.as_ref();
                    sqlx::query(
                        "UPDATE plants SET \
                            name = COALESCE($2, name), \
                            species = CASE WHEN $3 THEN $4 ELSE species END, \
                            description = CASE WHEN $5 THEN $6 ELSE description END, \
                            watering_interval_days = CASE WHEN $7 THEN $8 ELSE watering_interval_days END, \
                            light = CASE WHEN $7 THEN $9 ELSE light END, \
                            care_notes = CASE WHEN $7 THEN $10 ELSE care_notes END, \
                            updated_at = $11, version = $12, projected_at = clock_timestamp() \
                          WHERE id = $1 AND version < $12",
                    )
                    .bind(plant_id)
                    .bind(&changes.name)
                    .bind(changes.species.is_some())
                    .bind(changes.species.clone().flatten())
                    .bind(changes.description.is_some())
                    .bind(changes.description.clone().flatten())
                    .bind(care.is_some())
                    .bind(care.and_then(|c| c.watering_interval_days))
                    .bind(care.and_then(|c| c.light.clone()))
                    .bind(care.and_then(|c| c.notes.clone()))
                    .bind(event.timestamp)
                    .bind(event.sequence)
                    .execute(&mut *conn)
                    .await?;
                }
                PlantEvent::PlantDeleted => {
                    created.flush(conn).await?;
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
        created.flush(conn).await
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
