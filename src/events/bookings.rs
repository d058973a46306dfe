//! The sitters' calendar: a write-side guard (table `sitter_bookings`, not a read model) that
//! keeps a sitter from being accepted for two sittings on overlapping days. A row is inserted in
//! the transaction that appends `SitterAccepted` and deleted in the one that appends the
//! cancellation of an accepted sitting; an exclusion constraint (`btree_gist`) makes two racing
//! acceptances of one sitter for overlapping days impossible, whichever instance runs them.

use sqlx::PgConnection;
use uuid::Uuid;

use super::sitting::SittingEvent;
use super::store::{CommandError, Guard};
use crate::commands::sitting::{Sitting, SittingError};

pub struct SitterCalendar;

/// PostgreSQL's `exclusion_violation`.
const EXCLUSION_VIOLATION: &str = "23P01";
/// `deadlock_detected`: two acceptances inserting overlapping rows at once each wait for the
/// other's row (an exclusion constraint checks after inserting); PostgreSQL aborts one, which is
/// retried and then sees the other's committed booking.
const DEADLOCK_DETECTED: &str = "40P01";

#[async_trait::async_trait]
impl Guard<Sitting> for SitterCalendar {
    async fn check(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        before: &Sitting,
        events: &[SittingEvent],
    ) -> Result<(), CommandError<SittingError>> {
        let sitting_id: Uuid = aggregate_id
            .parse()
            .map_err(|err| CommandError::Internal(anyhow::anyhow!("sitting id: {err}")))?;
        for event in events {
            match event {
                SittingEvent::SitterAccepted { sitter_id } => {
                    let Some((starts_on, ends_on)) = before.period() else {
                        return Err(CommandError::Domain(SittingError::NotFound));
                    };
                    let booked = sqlx::query(
                        "INSERT INTO sitter_bookings (sitting_id, sitter_id, days) \
                         VALUES ($1, $2, daterange($3, $4, '[]'))",
                    )
                    .bind(sitting_id)
                    .bind(sitter_id)
                    .bind(starts_on)
                    .bind(ends_on)
                    .execute(&mut *conn)
                    .await;
                    match booked {
                        Ok(_) => {}
                        Err(sqlx::Error::Database(err))
                            if err.code().as_deref() == Some(EXCLUSION_VIOLATION) =>
                        {
                            return Err(CommandError::Domain(SittingError::SitterUnavailable));
                        }
                        Err(sqlx::Error::Database(err))
                            if err.code().as_deref() == Some(DEADLOCK_DETECTED) =>
                        {
                            return Err(CommandError::Conflict);
                        }
                        Err(err) => return Err(CommandError::Internal(err.into())),
                    }
                }
                SittingEvent::SittingCancelled { .. } => {
                    sqlx::query("DELETE FROM sitter_bookings WHERE sitting_id = $1")
                        .bind(sitting_id)
                        .execute(&mut *conn)
                        .await
                        .map_err(|err| CommandError::Internal(err.into()))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
