//! The sitters' calendar: a write-side guard (table `sitter_bookings`, not a read model) that
//! keeps a sitter from being accepted for two sittings on overlapping days. A row is inserted in
//! the transaction that appends `SitterAccepted` and deleted in the one that appends the
//! cancellation or the expiry of an accepted sitting; an exclusion constraint (`btree_gist`)
//! makes two racing acceptances of one sitter for overlapping days impossible, whichever
//! instance runs them.
//!
//! Two acceptances of one sitting at the same moment (the owner's two tabs, two applicants or
//! the same one) meet on the booking's primary key, or, for the same sitter, on the exclusion
//! constraint: the later one is retried, and the reloaded sitting refuses it
//! (`sitting_not_open`). Only a booking of another sitting is `SitterUnavailable`.

use sqlx::PgConnection;
use uuid::Uuid;

use super::constraints::{violated, SITTER_BOOKINGS_OVERLAP, SITTER_BOOKINGS_PKEY};
use super::sitting::SittingEvent;
use super::store::{CommandError, Guard};
use crate::commands::sitting::{Sitting, SittingError};

pub struct SitterCalendar;

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
                    book(conn, sitting_id, *sitter_id, starts_on, ends_on).await?;
                }
                SittingEvent::SittingCancelled { .. } | SittingEvent::SittingExpired { .. } => {
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

/// Books the sitter's days for the sitting, in a savepoint so that, refused, the transaction can
/// still tell whose booking was in the way.
async fn book(
    conn: &mut PgConnection,
    sitting_id: Uuid,
    sitter_id: Uuid,
    starts_on: chrono::NaiveDate,
    ends_on: chrono::NaiveDate,
) -> Result<(), CommandError<SittingError>> {
    let internal = |err: sqlx::Error| CommandError::Internal(err.into());
    sqlx::query("SAVEPOINT sitter_booking")
        .execute(&mut *conn)
        .await
        .map_err(internal)?;
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
    let err = match booked {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT sitter_booking")
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
            return Ok(());
        }
        Err(err) => err,
    };
    if let sqlx::Error::Database(db) = &err {
        if db.code().as_deref() == Some(DEADLOCK_DETECTED) {
            return Err(CommandError::Conflict);
        }
    }
    match violated(&err) {
        // This sitting was accepted by a command that committed first.
        Some(SITTER_BOOKINGS_PKEY) => Err(CommandError::Conflict),
        Some(SITTER_BOOKINGS_OVERLAP) => {
            sqlx::query("ROLLBACK TO SAVEPOINT sitter_booking")
                .execute(&mut *conn)
                .await
                .map_err(internal)?;
            let this_sitting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sitter_bookings WHERE sitting_id = $1)",
            )
            .bind(sitting_id)
            .fetch_one(&mut *conn)
            .await
            .map_err(internal)?;
            if this_sitting {
                // The same sitter, accepted for this sitting a moment ago: not a clash of
                // calendars, a concurrent change of the sitting.
                Err(CommandError::Conflict)
            } else {
                Err(CommandError::Domain(SittingError::SitterUnavailable))
            }
        }
        _ => Err(internal(err)),
    }
}
