//! Read models, built by projectors that follow the event log in its global order.

pub mod access;
pub mod advice;
pub mod fanout;
pub mod mailer;
pub mod messaging;
pub mod plants;
pub mod rebuild;
pub mod runner;
pub mod series;
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
    /// For [`Mode::SideEffects`]: whether acting on an event twice is harmless (a frame that
    /// carries its position, which sockets drop when seen), so a batch may be applied whole and
    /// retried whole. Otherwise (mail) events are applied one at a time, and the checkpoint
    /// passes each one acted on.
    fn repeatable_effects(&self) -> bool {
        false
    }
    /// Whether commands wait for this projection before answering (read-your-writes). Side
    /// effects such as mail are not read back, so commands do not wait for them.
    fn read_your_writes(&self) -> bool {
        self.mode() == Mode::ReadModel
    }
    /// The tables this read model writes, schema-qualified (`"public.plants"`), parents before
    /// children. A rebuild copies, fills and swaps exactly these (see [`rebuild`]); `apply`
    /// names them unqualified and finds them through the `search_path` the runner sets (see
    /// [`search_path`]), which is how a rebuild points the same code at its shadow copies.
    /// Side-effect projectors have none and are never rebuilt.
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    /// Runs in a rebuild's swap transaction, with the rebuilt tables first on the `search_path`
    /// and the live ones locked: brings in what the log does not hold (state other code wrote
    /// into the live model while the rebuild ran). Most projections have nothing to do.
    async fn reconcile(&self, _conn: &mut PgConnection) -> anyhow::Result<()> {
        Ok(())
    }
    /// A rebuild's replay of the log (see [`rebuild`]): `apply`, except that what is derived
    /// from the rows as they stand (counts, flags) may be left to [`Projection::finish_replay`],
    /// which runs once after the replay: recomputing such a value once at the end equals
    /// recomputing it after every batch. The default is `apply`.
    async fn apply_replay(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        self.apply(conn, events).await
    }
    /// After a rebuild's replay, before it is compared or swapped in (the same `search_path` as
    /// the replay): computes what [`Projection::apply_replay`] left. Events applied after it
    /// (the swap's last ones) go through `apply`, which keeps those values current.
    async fn finish_replay(&self, _conn: &mut PgConnection) -> anyhow::Result<()> {
        Ok(())
    }
    /// Columns that legitimately differ between a rebuilt and the live model (when the row was
    /// written), left out when `projections rebuild --dry-run` compares them.
    fn volatile_columns(&self) -> &'static [&'static str] {
        &["projected_at"]
    }
}

/// The `search_path` a projection's batches run under: `first` (a rebuild's shadow schema), then
/// the schemas of its tables in order, then `public`; as a quoted, comma-separated list.
pub fn search_path(projection: &dyn Projection, first: Option<&str>) -> String {
    let mut schemas: Vec<&str> = first.into_iter().collect();
    for table in projection.tables() {
        let schema = table.split_once('.').map_or("public", |(schema, _)| schema);
        if !schemas.contains(&schema) {
            schemas.push(schema);
        }
    }
    if !schemas.contains(&"public") {
        schemas.push("public");
    }
    schemas
        .iter()
        .map(|s| quote_ident(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a batch into layers for set-based application: the n-th event of each stream in the
/// batch goes into layer n, in log order. A stream's events keep their order across layers, and
/// a layer holds at most one event per stream, so where a projection's effects of different
/// streams commute (each stream writes its own rows), applying layer after layer, each with one
/// statement per kind of event, has the effect of applying the events one by one.
pub(crate) fn layers<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> Vec<Vec<&'a StoredEvent>> {
    let mut depth: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::new();
    let mut layers: Vec<Vec<&StoredEvent>> = Vec::new();
    for event in events {
        let n = depth
            .entry((event.aggregate_type.as_str(), event.aggregate_id.as_str()))
            .or_insert(0);
        if layers.len() <= *n {
            layers.push(Vec::new());
        }
        layers[*n].push(event);
        *n += 1;
    }
    layers
}

/// An SQL identifier, double-quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Position;

    fn event(position: i64, aggregate_type: &str, id: &str) -> StoredEvent {
        StoredEvent {
            position: Position::new(position),
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            sequence: position,
            event_type: "E".into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            timestamp: chrono::Utc::now(),
        }
    }

    #[test]
    fn layers_hold_one_event_per_stream_in_log_order() {
        let events = [
            event(1, "Sitting", "a"),
            event(2, "Sitting", "b"),
            event(3, "Sitting", "a"),
            event(4, "Advice", "a"),
            event(5, "Sitting", "a"),
            event(6, "Sitting", "b"),
        ];
        let layers: Vec<Vec<i64>> = layers(&events)
            .into_iter()
            .map(|l| l.iter().map(|e| e.position.global_position).collect())
            .collect();
        assert_eq!(layers, vec![vec![1, 2, 4], vec![3, 6], vec![5]]);
    }
}
