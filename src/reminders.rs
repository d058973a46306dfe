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
    let metadata = Metadata::system("start reminders");
    let mut run = RemindersRun::default();
    for id in candidates {
        let outcome = app
            .store
            .execute::<Sitting>(
                &id.to_string(),
                SittingCommand::RemindStart { today },
                &(),
                &metadata,
            )
            .await;
        match outcome {
            Ok(committed) if committed.position.is_some() => run.issued += 1,
            Ok(_) => run.skipped += 1,
            Err(CommandError::Domain(reason)) => {
                tracing::debug!(sitting_id = %id, %reason, "no start reminder");
                run.skipped += 1;
            }
            Err(err) => {
                tracing::warn!(sitting_id = %id, error = %format!("{err:#}"), "start reminder failed; next run retries");
                run.failed += 1;
            }
        }
    }
    Ok(run)
}

/// Runs [`run_start_reminders`] for the current day (UTC) every `every`, until aborted. The first
/// run comes one interval after start, so instances started together (a deployment) do not all
/// run at once.
pub async fn run_scheduler(app: App, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match run_start_reminders(&app, Utc::now().date_naive()).await {
            Ok(run) if run.issued > 0 || run.failed > 0 => {
                tracing::info!(issued = run.issued, failed = run.failed, "start reminders");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "start reminders"),
        }
    }
}
