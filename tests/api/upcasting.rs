//! One upcasting path: an event stored in its version-1 shape is read in its version-2 shape by
//! the aggregate (command side) and by a projector alike.

use std::sync::Arc;
use std::time::Duration;

use arosaje::events::store::{EventStore, Wakeups};
use arosaje::events::upcast::{Upcaster, Versioned};
use arosaje::events::{Metadata, StoredEvent};
use arosaje::projections::{Projection, Projections, ProjectorSettings};
use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgConnection;

use crate::helpers::pool;

/// Version 2 of `Counted` names its amount `by` and carries a note; version 1 had `{n}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Counted { by: i64, note: String },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Counted".into()
    }
    fn event_version(&self) -> String {
        "2".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct CounterError;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    total: i64,
}

fn counted_v1_to_v2(payload: Value) -> Value {
    let n = payload["Counted"]["n"].as_i64().unwrap_or(0);
    json!({"Counted": {"by": n, "note": "from v1"}})
}

impl Versioned for Counter {
    const UPCASTERS: &'static [Upcaster] = &[Upcaster {
        event_type: "Counted",
        from: "1",
        to: "2",
        upcast: counted_v1_to_v2,
    }];
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = i64;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        by: i64,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        let note = format!("total {}", self.total + by);
        sink.write(CounterEvent::Counted { by, note }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Counted { by, .. } = event;
        self.total += by;
    }
}

/// Records what it decoded.
struct Tally;

#[async_trait]
impl Projection for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }
    fn version(&self) -> i32 {
        1
    }
    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Counter"]
    }
    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        for event in events {
            let CounterEvent::Counted { by, note } = event.decode::<Counter>()?;
            sqlx::query("INSERT INTO test_tally (sequence, by_amount, note) VALUES ($1, $2, $3)")
                .bind(event.sequence)
                .bind(by)
                .bind(note)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[sqlx::test]
async fn a_v1_event_reads_as_v2_in_aggregates_and_projections(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    sqlx::query("CREATE TABLE test_tally (sequence bigint, by_amount bigint, note text)")
        .execute(&pool)
        .await
        .unwrap();
    // Written long ago, in the version-1 shape.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         VALUES ('Counter', 'c1', 1, 'Counted', '1', '{\"Counted\": {\"n\": 3}}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();

    // The command side loads it through the upcaster: the total is 3 before adding 2.
    let wakeups = Arc::new(Wakeups::default());
    let store = EventStore::new(pool.clone(), 0, wakeups.clone());
    store
        .execute::<Counter>("c1", 2, &(), &Metadata::system("test"))
        .await
        .expect("command");
    let (version, payload): (String, Value) = sqlx::query_as(
        "SELECT event_version, payload FROM events WHERE aggregate_id = 'c1' AND sequence = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, "2");
    assert_eq!(payload["Counted"]["note"], "total 5");

    // A projector decodes both through the same path.
    let projections = Projections::new(
        pool.clone(),
        ProjectorSettings {
            batch_size: 10,
            poll_interval: Duration::from_millis(100),
            max_attempts: 1,
            ..Default::default()
        },
        vec![Arc::new(Tally)],
        wakeups,
    );
    projections.init().await.unwrap();
    projections.catch_up("tally").await.unwrap();
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT sequence, by_amount, note FROM test_tally ORDER BY sequence")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(1, 3, "from v1".to_string()), (2, 2, "total 5".to_string())]
    );
}
