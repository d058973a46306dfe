//! Read models, built by projectors that follow the event log in its global order.

pub mod mailer;
pub mod plants;
pub mod runner;
pub mod users;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::events::StoredEvent;

pub use runner::{Projections, ProjectorSettings};

/// One read model: a name, a version, and how a batch of events changes its tables.
///
/// `apply` runs inside the transaction that also advances the projector's checkpoint, so a batch
/// takes effect exactly once. It must not panic; an error rolls the batch back and the projector
/// retries it with backoff.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> i32;
    /// Aggregate types this projection reads. Other events pass by (the checkpoint moves on).
    fn aggregate_types(&self) -> &'static [&'static str];
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()>;
    /// Whether commands wait for this projection before answering (read-your-writes). Side
    /// effects such as mail are not read back, so commands do not wait for them.
    fn read_your_writes(&self) -> bool {
        true
    }
}
