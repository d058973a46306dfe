//! Read models `advice`, `advice_versions`, `advice_reviews` and the botanists' work queue
//! `advice_queue` (projection `advice`). The queue follows the sittings' own events (which plants,
//! when, in which state) rather than the `sittings` read model, so this projection rebuilds alone.
//! Sealed text is opened with its writer's key; a writer who was erased leaves NULL.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Projection;
use crate::commands::advice::Advice;
use crate::commands::sitting::{Sitting, Status};
use crate::events::advice::{AdviceEvent, Verdict};
use crate::events::crypto::{KeyStore, Sealed};
use crate::events::sitting::SittingEvent;
use crate::events::StoredEvent;

pub struct AdviceProjection {
    keys: Arc<KeyStore>,
}

impl AdviceProjection {
    pub fn new(keys: Arc<KeyStore>) -> Self {
        AdviceProjection { keys }
    }

    /// The plaintext of a field sealed under `user`'s key; `None` when that user was erased.
    async fn open(&self, user: Uuid, sealed: &Sealed) -> anyhow::Result<Option<String>> {
        Ok(self.keys.open_if_present(user, sealed).await?)
    }

    async fn advice_event(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
    ) -> anyhow::Result<()> {
        let id: Uuid = event.aggregate_id.parse()?;
        let at = event.timestamp;
        let version = event.sequence;
        let plant: Option<Uuid> = match event.decode::<Advice>()? {
            AdviceEvent::AdviceGiven {
                author_id,
                plant_id,
                plant_owner_id,
                sitting_id,
                sitter_id,
                priority,
                body,
            } => {
                if self.keys.is_erased(author_id).await?
                    || self.keys.is_erased(plant_owner_id).await?
                {
                    // Its author or the plant's owner was erased: not shown (as the foreign
                    // keys remove it live).
                    return Ok(());
                }
                // An erased sitter is no one (as the foreign key's SET NULL live).
                let sitter_id = match sitter_id {
                    Some(sitter) if self.keys.is_erased(sitter).await? => None,
                    other => other,
                };
                let body = self.open(author_id, &body).await?;
                let inserted = sqlx::query(
                    "INSERT INTO advice (id, plant_id, plant_owner_id, sitting_id, sitter_id, \
                                         author_id, priority, body, revision, state, created_at, \
                                         updated_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 'active', $9, $9, $10) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(plant_id)
                .bind(plant_owner_id)
                .bind(sitting_id)
                .bind(sitter_id)
                .bind(author_id)
                .bind(priority.as_str())
                .bind(&body)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                if inserted.rows_affected() > 0 {
                    sqlx::query(
                        "INSERT INTO advice_versions (advice_id, revision, priority, body, created_at) \
                         VALUES ($1, 1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(priority.as_str())
                    .bind(&body)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                Some(plant_id)
            }
            AdviceEvent::AdviceRevised {
                version: revision,
                priority,
                body,
            } => {
                let author: Option<Uuid> = sqlx::query_scalar(
                    "UPDATE advice SET revision = $2, priority = $3, updated_at = $4, \
                            version = $5 \
                      WHERE id = $1 AND version < $5 RETURNING author_id",
                )
                .bind(id)
                .bind(revision as i32)
                .bind(priority.as_str())
                .bind(at)
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
                // Not there (its author was erased), or this event was applied before.
                let Some(author) = author else {
                    return Ok(());
                };
                let body = self.open(author, &body).await?;
                sqlx::query("UPDATE advice SET body = $2 WHERE id = $1")
                    .bind(id)
                    .bind(&body)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(
                    "INSERT INTO advice_versions (advice_id, revision, priority, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(revision as i32)
                .bind(priority.as_str())
                .bind(&body)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                plant_of(conn, id).await?
            }
            AdviceEvent::AdviceReviewed {
                botanist_id,
                verdict,
                advice_version,
                comment,
            } => {
                let comment = match &comment {
                    Some(sealed) => self.open(botanist_id, sealed).await?,
                    None => None,
                };
                let inserted = sqlx::query(
                    "INSERT INTO advice_reviews (advice_id, botanist_id, verdict, revision, \
                                                 comment, created_at) \
                     SELECT $1, $2, $3, $4, $5, $6 \
                      WHERE EXISTS (SELECT 1 FROM advice WHERE id = $1) \
                        AND EXISTS (SELECT 1 FROM users WHERE id = $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(botanist_id)
                .bind(verdict.as_str())
                .bind(advice_version as i32)
                .bind(comment)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                let (validations, rejections) = match verdict {
                    Verdict::Validated => (1, 0),
                    Verdict::Rejected => (0, 1),
                };
                let counted = inserted.rows_affected() as i32;
                sqlx::query(
                    "UPDATE advice SET validations = validations + $2, \
                            rejections = rejections + $3, updated_at = $4, version = $5 \
                      WHERE id = $1 AND version < $5",
                )
                .bind(id)
                .bind(validations * counted)
                .bind(rejections * counted)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                None
            }
            AdviceEvent::AdviceWithdrawn { .. } => {
                sqlx::query(
                    "UPDATE advice SET state = 'withdrawn', updated_at = $2, version = $3 \
                      WHERE id = $1 AND version < $3",
                )
                .bind(id)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                plant_of(conn, id).await?
            }
            AdviceEvent::AdviceHidden { by, reason } => {
                sqlx::query(
                    "UPDATE advice SET state = 'hidden', hidden_by = $2, hidden_reason = $3, \
                            hidden_at = $4, updated_at = $4, version = $5 \
                      WHERE id = $1 AND version < $5",
                )
                .bind(id)
                .bind(by)
                .bind(reason)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                plant_of(conn, id).await?
            }
        };
        if let Some(plant) = plant {
            refresh_queue(conn, Some(plant), None).await?;
        }
        Ok(())
    }

    async fn sitting_event(
        &self,
        conn: &mut PgConnection,
        event: &StoredEvent,
    ) -> anyhow::Result<()> {
        let id: Uuid = event.aggregate_id.parse()?;
        let status = match event.decode::<Sitting>()? {
            SittingEvent::SittingRequested {
                plant_ids,
                starts_on,
                ends_on,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO advice_queue (sitting_id, plant_id, sitting_status, starts_on, \
                                               ends_on, requested_at) \
                     SELECT $1, p, 'open', $3, $4, $5 FROM UNNEST($2::uuid[]) AS p \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(&plant_ids)
                .bind(starts_on)
                .bind(ends_on)
                .bind(event.timestamp)
                .execute(&mut *conn)
                .await?;
                return refresh_queue(conn, None, Some(id)).await;
            }
            SittingEvent::SitterAccepted { .. } => Status::Accepted,
            SittingEvent::SittingStarted { .. } => Status::InProgress,
            SittingEvent::SittingCompleted { .. }
            | SittingEvent::SittingCancelled { .. }
            | SittingEvent::SittingExpired { .. } => {
                sqlx::query("DELETE FROM advice_queue WHERE sitting_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        sqlx::query("UPDATE advice_queue SET sitting_status = $2 WHERE sitting_id = $1")
            .bind(id)
            .bind(status.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

async fn plant_of(conn: &mut PgConnection, advice: Uuid) -> anyhow::Result<Option<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT plant_id FROM advice WHERE id = $1")
            .bind(advice)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Recounts the queue rows of one plant, or of one sitting: the active advice on the plant since
/// the sitting was requested (or given in its context), and whether the plant's latest active
/// advice was urgent or asked for a follow-up. Two statements, each with a plain equality its
/// index serves (`advice_queue_plant`, the primary key): an `$1 IS NULL OR ...` condition would
/// make a prepared statement's generic plan scan the whole queue on every event.
pub(super) async fn refresh_queue(
    conn: &mut PgConnection,
    plant: Option<Uuid>,
    sitting: Option<Uuid>,
) -> anyhow::Result<()> {
    const SET: &str = "UPDATE advice_queue q SET \
            advice_count = (SELECT count(*) FROM advice a \
                             WHERE a.plant_id = q.plant_id AND a.state = 'active' \
                               AND (a.created_at >= q.requested_at OR a.sitting_id = q.sitting_id)), \
            flagged = COALESCE((SELECT a.priority IN ('urgent', 'follow_up') FROM advice a \
                                 WHERE a.plant_id = q.plant_id AND a.state = 'active' \
                                 ORDER BY a.updated_at DESC, a.id DESC LIMIT 1), false) ";
    let (condition, id) = match (plant, sitting) {
        (Some(plant), _) => ("WHERE q.plant_id = $1", plant),
        (None, Some(sitting)) => ("WHERE q.sitting_id = $1", sitting),
        (None, None) => return Ok(()),
    };
    sqlx::query(&format!("{SET}{condition}"))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl Projection for AdviceProjection {
    fn name(&self) -> &'static str {
        "advice"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Advice", "Sitting"]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "public.advice",
            "public.advice_versions",
            "public.advice_reviews",
            "public.advice_queue",
        ]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        for event in events {
            match event.aggregate_type.as_str() {
                "Advice" => self.advice_event(conn, event).await?,
                "Sitting" => self.sitting_event(conn, event).await?,
                _ => {}
            }
        }
        Ok(())
    }
}
