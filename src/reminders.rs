//! The start reminder job: the day before an accepted sitting starts, its owner and its sitter are
//! reminded (the mailer mails both on `SittingStartReminderIssued`).
//!
//! Every `serve` instance runs it every `START_REMINDER_INTERVAL_SECS`. It finds candidates in
//! the `sittings` read model (accepted, starting tomorrow, UTC) and asks each sitting to
//! `RemindStart`: the aggregate decides from its own events and issues the reminder once, so two
//! instances racing on one sitting append one event between them (the loser's retry finds it
//! issued and does nothing), and a stale row (a sitting cancelled a moment ago) costs a refused
//! command, nothing more. Reading a read model to pick candidates is the one thing the job does
//! outside the aggregate; the aggregate alone decides. A sitting accepted after the last run of
//! the day before its start gets no reminder.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use uuid::Uuid;

use crate::commands::sitting::{Sitting, SittingCommand};
use crate::events::bookings::SitterCalendar;
use crate::events::store::CommandError;
use crate::events::Metadata;
use crate::App;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemindersRun {
    /// Reminders this run issued.
    pub issued: usize,
    /// Candidates with nothing to do: reminded already (by an earlier run or another instance),
    /// or refused (no longer accepted, another start day than the row said).
    pub skipped: usize,
    /// Candidates whose command failed (logged); the next run tries them again.
    pub failed: usize,
}

/// Issues the start reminder of every accepted sitting that starts the day after `today`.
/// Running it again, on any instance, issues nothing more.
pub async fn run_start_reminders(app: &App, today: NaiveDate) -> anyhow::Result<RemindersRun> {
    let tomorrow = today
        .succ_opt()
        .ok_or_else(|| anyhow::anyhow!("no day after {today}"))?;
    let candidates: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sittings WHERE status = 'accepted' AND starts_on = $1 ORDER BY id",
    )
    .bind(tomorrow)
    .fetch_all(&app.pool)
    .await?;
    let tally = command_each(app, candidates, "start reminders", || {
        SittingCommand::RemindStart { today }
    })
    .await;
    Ok(RemindersRun {
        issued: tally.done,
        skipped: tally.skipped,
        failed: tally.failed,
    })
}

/// What a job's commands did, one sitting each.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Commands that appended their event.
    pub done: usize,
    /// Commands with nothing to do, or refused (the read model that named the candidate lags).
    pub skipped: usize,
    /// Commands that failed (logged); the job's next run tries them again.
    pub failed: usize,
}

/// Asks each candidate sitting to run `command` as the system (job `what`), through the sitters'
/// calendar guard (a command that ends a booking frees its days in the same transaction).
pub async fn command_each(
    app: &App,
    candidates: Vec<Uuid>,
    what: &'static str,
    command: impl Fn() -> SittingCommand,
) -> Tally {
    let metadata = Metadata::system(what);
    let mut tally = Tally::default();
    for id in candidates {
        let outcome = app
            .store
            .execute_guarded::<Sitting>(&id.to_string(), command(), &(), &metadata, &SitterCalendar)
            .await;
        match outcome {
            Ok(committed) if committed.position.is_some() => tally.done += 1,
            Ok(_) => tally.skipped += 1,
            Err(CommandError::Domain(reason)) => {
                tracing::debug!(sitting_id = %id, %reason, job = what, "nothing to do");
                tally.skipped += 1;
            }
            Err(err) => {
                tracing::warn!(sitting_id = %id, error = %format!("{err:#}"), job = what,
                    "command failed; next run retries");
                tally.failed += 1;
            }
        }
    }
    tally
}

/// Runs `job` for the current day (UTC) every `every`, until aborted, logging what it did. The
/// first run comes one interval after start, so instances started together (a deployment) do
/// not all run at once.
pub async fn every<F, Fut>(every: Duration, what: &'static str, job: F)
where
    F: Fn(NaiveDate) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Tally>>,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match job(Utc::now().date_naive()).await {
            Ok(tally) if tally.done > 0 || tally.failed > 0 => {
                tracing::info!(done = tally.done, failed = tally.failed, job = what);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %format!("{err:#}"), job = what),
        }
    }
}

/// Runs [`run_start_reminders`] every `every` (what `serve` starts).
pub async fn run_scheduler(app: App, every: Duration) {
    self::every(every, "start reminders", |today| {
        let app = app.clone();
        async move {
            run_start_reminders(&app, today).await.map(|run| Tally {
                done: run.issued,
                skipped: run.skipped,
                failed: run.failed,
            })
        }
    })
    .await
}
