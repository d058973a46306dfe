//! Plant photos: an upload is checked and re-encoded (`infra::images`), stored (`PhotoStore`),
//! then recorded as `PhotoAdded` on the plant. Nothing stored outlives a failed upload:
//!
//! 1. a row in `photo_uploads` names the objects before they are written;
//! 2. the objects are written;
//! 3. `PhotoAdded` is appended in a transaction that also deletes that row.
//!
//! An upload that fails after 1 deletes what it wrote; one whose process died leaves a row, and
//! [`sweep_orphans`] (run by `serve`) deletes its objects once it is old enough that no upload
//! can still be running.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::commands::plant::{Plant, PlantCommand, PlantError};
use crate::commands::Actor;
use crate::events::plant::PlantEvent;
use crate::events::store::{CommandError, Committed, Guard};
use crate::events::Metadata;
use crate::infra::images::{self, PhotoError};
use crate::App;

/// A row of `photo_uploads` older than this names objects whose event never committed.
pub const ORPHAN_AGE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Photo(#[from] PhotoError),
    #[error(transparent)]
    Command(#[from] CommandError<PlantError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for UploadError {
    fn from(err: sqlx::Error) -> Self {
        UploadError::Internal(err.into())
    }
}

/// A stored photo.
pub struct Uploaded {
    pub photo_id: Uuid,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub committed: Committed,
}

/// Whether `user` sits `plant_id` now: the sitter of an accepted or running sitting of it (a
/// fact the plant cannot know, from the sittings read model).
pub async fn is_active_sitter(app: &App, user: Uuid, plant_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sittings s JOIN sitting_plants p ON p.sitting_id = s.id \
          WHERE p.plant_id = $1 AND s.sitter_id = $2 AND s.status IN ('accepted', 'in_progress'))",
    )
    .bind(plant_id)
    .bind(user)
    .fetch_one(&app.pool)
    .await
}

/// Checks, re-encodes, stores and records a photo of `plant_id`, owned by `owner_id`.
pub async fn add_photo(
    app: &App,
    actor: Actor,
    owner_id: Uuid,
    plant_id: Uuid,
    upload: Vec<u8>,
    metadata: &Metadata,
) -> Result<Uploaded, UploadError> {
    // Bounded: each decode holds up to a full image in memory.
    let _slot = app
        .photo_slots
        .acquire()
        .await
        .map_err(|err| UploadError::Internal(err.into()))?;
    let max_pixels = app.config.max_photo_pixels;
    let processed = tokio::task::spawn_blocking(move || images::process(&upload, max_pixels))
        .await
        .map_err(|err| UploadError::Internal(err.into()))??;
    let photo_id = Uuid::now_v7();
    let photo_key = format!("photos/{photo_id}.jpg");
    let thumbnail_key = format!("photos/{photo_id}.thumb.jpg");
    let bytes = processed.photo.len() as u64;
    sqlx::query("INSERT INTO photo_uploads (photo_id, keys) VALUES ($1, $2)")
        .bind(photo_id)
        .bind([photo_key.clone(), thumbnail_key.clone()])
        .execute(&app.pool)
        .await?;
    let outcome = store_and_record(
        app,
        actor,
        owner_id,
        plant_id,
        (photo_id, &photo_key, &thumbnail_key),
        processed,
        metadata,
    )
    .await;
    match outcome {
        Ok((width, height, committed)) => Ok(Uploaded {
            photo_id,
            width,
            height,
            bytes,
            committed,
        }),
        Err(err) => {
            // Nothing of a failed upload stays; if this cleanup fails too, the sweeper does it.
            if let Err(cleanup) = forget(app, photo_id, &[photo_key, thumbnail_key]).await {
                tracing::warn!(%photo_id, error = %cleanup, "photo cleanup left to the sweeper");
            }
            Err(err)
        }
    }
}

async fn store_and_record(
    app: &App,
    actor: Actor,
    owner_id: Uuid,
    plant_id: Uuid,
    (photo_id, photo_key, thumbnail_key): (Uuid, &str, &str),
    processed: images::Processed,
    metadata: &Metadata,
) -> Result<(u32, u32, Committed), UploadError> {
    let (width, height, bytes) = (
        processed.width,
        processed.height,
        processed.photo.len() as u64,
    );
    app.photos.put(photo_key, processed.photo).await?;
    app.photos.put(thumbnail_key, processed.thumbnail).await?;
    let cipher = app
        .keys
        .cipher(owner_id)
        .await
        .map_err(|err| UploadError::Internal(err.into()))?;
    let by_active_sitter =
        actor.id != owner_id && is_active_sitter(app, actor.id, plant_id).await?;
    let command = PlantCommand::AddPhoto {
        actor,
        by_active_sitter,
        photo_id,
        object_key: cipher.seal(photo_key),
        thumbnail_key: cipher.seal(thumbnail_key),
        width,
        height,
        bytes,
    };
    let committed = app
        .store
        .execute_guarded::<Plant>(
            &plant_id.to_string(),
            command,
            &(),
            metadata,
            &UploadCompleted,
        )
        .await?;
    Ok((width, height, committed))
}

async fn forget(app: &App, photo_id: Uuid, keys: &[String]) -> anyhow::Result<()> {
    for key in keys {
        app.photos.delete(key).await?;
    }
    sqlx::query("DELETE FROM photo_uploads WHERE photo_id = $1")
        .bind(photo_id)
        .execute(&app.pool)
        .await?;
    Ok(())
}

/// Deletes the in-flight row of a photo in the transaction that records it.
struct UploadCompleted;

#[async_trait::async_trait]
impl Guard<Plant> for UploadCompleted {
    async fn check(
        &self,
        conn: &mut PgConnection,
        _aggregate_id: &str,
        _before: &Plant,
        events: &[PlantEvent],
    ) -> Result<(), CommandError<PlantError>> {
        for event in events {
            if let PlantEvent::PhotoAdded { photo_id, .. } = event {
                sqlx::query("DELETE FROM photo_uploads WHERE photo_id = $1")
                    .bind(photo_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(|err| CommandError::Internal(err.into()))?;
            }
        }
        Ok(())
    }
}

/// Deletes a plant and, once that is committed, its photo objects. The transaction that appends
/// `PlantDeleted` queues the objects in `photo_uploads` (where the sweeper finds them should
/// this process die before deleting them), so nothing of a deleted plant's photos stays stored.
pub async fn delete_plant(
    app: &App,
    plant_id: Uuid,
    actor: Actor,
    metadata: &Metadata,
) -> Result<Committed, CommandError<PlantError>> {
    let guard = ReleasePhotos {
        keys: app.keys.clone(),
        queued: std::sync::Mutex::new(Vec::new()),
    };
    let committed = app
        .store
        .execute_guarded::<Plant>(
            &plant_id.to_string(),
            PlantCommand::DeletePlant { actor },
            &(),
            metadata,
            &guard,
        )
        .await?;
    let queued = guard
        .queued
        .lock()
        .map(|mut queued| std::mem::take(&mut *queued))
        .unwrap_or_default();
    if let Err(err) = delete_queued(app, queued).await {
        tracing::warn!(error = %format!("{err:#}"), %plant_id,
            "deleted plant: photo objects left to the sweeper");
    }
    Ok(committed)
}

/// A photo's objects queued for deletion: its id and object keys.
pub type Queued = (Uuid, Vec<String>);

/// Queues the photo objects of a plant being deleted, in the transaction that deletes it.
struct ReleasePhotos {
    keys: std::sync::Arc<crate::events::crypto::KeyStore>,
    queued: std::sync::Mutex<Vec<Queued>>,
}

#[async_trait::async_trait]
impl Guard<Plant> for ReleasePhotos {
    async fn check(
        &self,
        conn: &mut PgConnection,
        _aggregate_id: &str,
        before: &Plant,
        events: &[PlantEvent],
    ) -> Result<(), CommandError<PlantError>> {
        if !events.iter().any(|e| matches!(e, PlantEvent::PlantDeleted)) {
            return Ok(());
        }
        let Some(owner) = before.created_by() else {
            return Ok(());
        };
        // An owner erased meanwhile: erasure itself queued these objects.
        let cipher = match self.keys.cipher(owner).await {
            Ok(cipher) => cipher,
            Err(crate::events::crypto::CryptoError::KeyMissing(_)) => return Ok(()),
            Err(err) => return Err(CommandError::Internal(err.into())),
        };
        let mut photos = Vec::with_capacity(before.photos().len());
        for photo in before.photos() {
            let keys = [&photo.object_key, &photo.thumbnail_key]
                .into_iter()
                .map(|sealed| cipher.open(sealed))
                .collect::<Result<Vec<String>, _>>()
                .map_err(|err| CommandError::Internal(err.into()))?;
            photos.push((photo.photo_id, keys));
        }
        let queued = queue(conn, photos)
            .await
            .map_err(|err| CommandError::Internal(err.into()))?;
        if let Ok(mut slot) = self.queued.lock() {
            *slot = queued;
        }
        Ok(())
    }
}

/// Queues photo objects for deletion in `photo_uploads` (in the caller's transaction); returns
/// those it queued (a photo already queued is left to whoever queued it).
pub async fn queue(
    conn: &mut PgConnection,
    photos: Vec<Queued>,
) -> Result<Vec<Queued>, sqlx::Error> {
    let mut queued = Vec::with_capacity(photos.len());
    for (photo_id, keys) in photos {
        let inserted = sqlx::query(
            "INSERT INTO photo_uploads (photo_id, keys) VALUES ($1, $2) \
             ON CONFLICT (photo_id) DO NOTHING",
        )
        .bind(photo_id)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() > 0 {
            queued.push((photo_id, keys));
        }
    }
    Ok(queued)
}

/// Deletes queued photo objects, then their `photo_uploads` rows.
pub async fn delete_queued(app: &App, queued: Vec<Queued>) -> anyhow::Result<()> {
    for (photo_id, keys) in queued {
        forget(app, photo_id, &keys).await?;
    }
    Ok(())
}

/// Deletes the objects of uploads older than `older_than` whose event never committed; returns
/// how many uploads it cleaned. Safe with several instances (rows are claimed with
/// `SKIP LOCKED`).
pub async fn sweep_orphans(app: &App, older_than: Duration) -> anyhow::Result<usize> {
    let mut cleaned = 0;
    loop {
        let mut tx = crate::infra::db::begin(&app.pool).await?;
        let claimed: Option<(Uuid, Vec<String>)> = sqlx::query_as(
            "SELECT photo_id, keys FROM photo_uploads \
              WHERE created_at < now() - make_interval(secs => $1) \
              ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(older_than.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((photo_id, keys)) = claimed else {
            return Ok(cleaned);
        };
        for key in &keys {
            app.photos.delete(key).await?;
        }
        sqlx::query("DELETE FROM photo_uploads WHERE photo_id = $1")
            .bind(photo_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(%photo_id, "deleted the objects of an upload that never committed");
        metrics::counter!("photo_orphans_deleted_total").increment(1);
        cleaned += 1;
    }
}

/// Runs [`sweep_orphans`] every few minutes (what `serve` starts).
pub async fn run_sweeper(app: App) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        every.tick().await;
        if let Err(err) = sweep_orphans(&app, ORPHAN_AGE).await {
            tracing::warn!(error = %format!("{err:#}"), "photo sweeper");
        }
    }
}
