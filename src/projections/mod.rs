//! Read models, built by projectors that follow the event log in its global order.

pub mod advice;
pub mod fanout;
pub mod mailer;
pub mod messaging;
pub mod plants;
pub mod runner;
pub mod sittings;
pub mod users;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::events::StoredEvent;

pub use runner::{Projections, ProjectorSettings, Transient};

/// How a projector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Builds tables: each batch and its checkpoint commit in one transaction.
    ReadModel,
    /// Acts on the world (mail, fan-out): runs outside any transaction, one instance at a time,
    /// and must record what it did so that a retried event is not acted on twice.
    SideEffects,
}

/// One read model: a name, a version, and how a batch of events changes its tables.
///
/// For a [`Mode::ReadModel`], `apply` runs inside the transaction that also advances the
/// projector's checkpoint, so a batch takes effect exactly once; for [`Mode::SideEffects`] it gets
/// a connection outside any transaction. It must not panic. An error rolls the batch back (read
/// models) and the projector retries event by event with backoff; an event that fails
/// `max_attempts` times is parked, unless the error is [`Transient`].
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> i32;
    /// Aggregate types this projection reads. Other events pass by (the checkpoint moves on).
    fn aggregate_types(&self) -> &'static [&'static str];
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()>;
    fn mode(&self) -> Mode {
        Mode::ReadModel
    }
    /// Whether commands wait for this projection before answering (read-your-writes). Side
    /// effects such as mail are not read back, so commands do not wait for them.
    fn read_your_writes(&self) -> bool {
        self.mode() == Mode::ReadModel
    }
}
