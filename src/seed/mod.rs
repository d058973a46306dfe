//! Populations for newcomers and benches (`arosaje seed`).
//!
//! - [`demo`]: a small French demo world, made through the real commands (the same aggregates,
//!   guards, sealing and photo pipeline the API uses), so the event log tells its story too.
//! - [`load`]: large populations for benches, appended in batches straight into the event store
//!   as the aggregates would have written them (sealed, hash-chained by the store's trigger);
//!   the projections then catch up like after any append.

pub mod demo;
pub mod load;
mod picture;

use crate::App;

/// Why a seed did not run.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The log already holds events and `--force` was not given.
    #[error(
        "the database is not empty ({0} events in the log): `seed demo` fills an empty database \
         (use --force to add the demo world anyway)"
    )]
    NotEmpty(i64),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for SeedError {
    fn from(err: sqlx::Error) -> Self {
        SeedError::Other(err.into())
    }
}

/// How many events the log holds.
pub async fn log_size(app: &App) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
}

/// Brings every read model up to the head of the log (the side-effect projectors, mail and
/// WebSocket fan-out, are left to `serve`). Safe while `serve` runs: a read model's batches are
/// serialised across processes by its checkpoint row.
pub async fn catch_up_read_models(app: &App) -> anyhow::Result<()> {
    for name in READ_MODELS {
        app.projections.catch_up(name).await?;
    }
    Ok(())
}

/// The read models, in the order a rebuild runs them.
pub const READ_MODELS: &[&str] = &[
    "users",
    "plants",
    "sittings",
    "advice",
    "messaging",
    "access",
];
