//! The sitting expiry job: an open sitting, or an accepted one that never started, whose last
//! day has passed is expired (`SittingExpired`): it leaves browsing and the botanists' queue, the
//! sitter's booked days are freed, and the owner is mailed once.
//!
//! `serve` runs it every `SITTING_EXPIRY_INTERVAL_SECS`, in one instance at a time (a session
//! advisory lock; the others stand by for that round); `arosaje admin expire-sittings` runs it
//! now. Candidates come from the `sittings` read model (open or accepted, ending before today,
//! UTC); each sitting is then asked to `ExpireSitting` and decides from its own events, so a
//! stale row (a sitting started or cancelled a moment ago) costs a refused command, and two runs
//! at once (the CLI beside `serve`) append one `SittingExpired` between them: the loser's retry
//! finds it expired and does nothing. The command runs with the sitters' calendar guard, which
//! frees the booking in the append's transaction.

use std::time::Duration;

use chrono::NaiveDate;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::commands::sitting::SittingCommand;
use crate::App;

/// The session advisory lock a run holds: the lock space of scheduled jobs ("arej"), and the
/// job's name (`pg_try_advisory_lock(class, hashtext(name))`).
pub const LOCK: (i32, &str) = (0x6172_656a, "sitting expiry");

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRun {
    /// Sittings this run expired.
    pub expired: usize,
    /// Candidates with nothing to do: expired already (by an earlier or concurrent run), or
    /// refused (started, completed or cancelled since the read model showed them).
    pub skipped: usize,
    /// Candidates whose command failed (logged); the next run tries them again.
    pub failed: usize,
    /// Another instance was running the job: this one did nothing.
    pub standby: bool,
}

/// Expires every open or accepted-but-not-started sitting whose last day is before `today`, unless
/// another instance is doing it right now (`standby`).
pub async fn run_expiry(app: &App, today: NaiveDate) -> anyhow::Result<ExpiryRun> {
    // The lock lives in a connection of its own, outside the pool: if this process dies, or the
    // connection breaks, the session ends and the lock with it.
    let mut lock = PgConnection::connect_with(&app.pool.connect_options()).await?;
    let (class, name) = LOCK;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        return Ok(ExpiryRun {
            standby: true,
            ..ExpiryRun::default()
        });
    }
    let run = expire_ended(app, today).await;
    // Released at once (closing alone would leave it to the server noticing the socket closed).
    if let Err(err) = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .execute(&mut lock)
        .await
    {
        tracing::warn!(error = %err, "sitting expiry: unlock failed; the session's end releases it");
    }
    if let Err(err) = lock.close().await {
        tracing::debug!(error = %err, "sitting expiry: closing the lock's connection");
    }
    run
}

/// The run itself, without the lock: each sitting decides once.
async fn expire_ended(app: &App, today: NaiveDate) -> anyhow::Result<ExpiryRun> {
    let candidates: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sittings WHERE status IN ('open', 'accepted') AND ends_on < $1 \
          ORDER BY ends_on, id",
    )
    .bind(today)
    .fetch_all(&app.pool)
    .await?;
    let tally = crate::reminders::command_each(app, candidates, "sitting expiry", || {
        SittingCommand::ExpireSitting { today }
    })
    .await;
    Ok(ExpiryRun {
        expired: tally.done,
        skipped: tally.skipped,
        failed: tally.failed,
        standby: false,
    })
}

/// Runs [`run_expiry`] every `every` (what `serve` starts).
pub async fn run_scheduler(app: App, every: Duration) {
    crate::reminders::every(every, "sitting expiry", |today| {
        let app = app.clone();
        async move {
            run_expiry(&app, today)
                .await
                .map(|run| crate::reminders::Tally {
                    done: run.expired,
                    skipped: run.skipped,
                    failed: run.failed,
                })
        }
    })
    .await
}
