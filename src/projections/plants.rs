//! Read model `plants`.

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::events::plant::PlantEvent;
use crate::events::StoredEvent;

pub struct PlantsProjection;

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
        for event in events {
            let plant_id: Uuid = event.aggregate_id.parse()?;
            match event.decode::<PlantEvent>()? {
                PlantEvent::PlantCreated {
                    owner_id,
                    name,
                    species,
                    description,
                    care,
                } => {
                    sqlx::query(
                        "INSERT INTO plants (id, owner_id, name, species, description, \
                                             watering_interval_days, light, care_notes, \
                                             created_at, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(plant_id)
                    .bind(owner_id)
                    .bind(name)
                    .bind(species)
                    .bind(description)
                    .bind(care.watering_interval_days)
                    .bind(care.light)
                    .bind(care.notes)
                    .bind(event.timestamp)
                    .bind(event.sequence)
                    .execute(&mut *conn)
                    .await?;
                }
                PlantEvent::PlantUpdated { changes } => {
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
                    sqlx::query("DELETE FROM plants WHERE id = $1")
                        .bind(plant_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}
