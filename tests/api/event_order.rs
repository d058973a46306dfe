//! The global order of the log: projectors see every event exactly once, in
//! (transaction_id, global_position) order, under concurrent writers, late commits and crashes.

use std::sync::Arc;
use std::time::Duration;

use arosaje::commands::plant::{Plant, PlantCommand, PlantPatch};
use arosaje::commands::values::PlantName;
use arosaje::commands::Actor;
use arosaje::events::plant::Care;
use arosaje::events::store::{CommandError, EventStore, Wakeups};
use arosaje::events::user::Role;
use arosaje::events::{Metadata, Position};
use arosaje::projections::{Projection, Projections, ProjectorSettings};
use arosaje::BackgroundTasks;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::{eventually, pool};

/// Records how many times each event was applied, and in which order.
struct Counting {
    delay: Duration,
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn version(&self) -> i32 {
        1
    }
    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Plant"]
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[arosaje::events::StoredEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            sqlx::query(
                "INSERT INTO test_seen (global_position, n) VALUES ($1, 1) \
                 ON CONFLICT (global_position) DO UPDATE SET n = test_seen.n + 1",
            )
            .bind(event.position.global_position)
            .execute(&mut *conn)
            .await?;
        }
        if !self.delay.is_zero() {
            // Widens the window in which a crash lands inside an open batch.
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

struct Fixture {
    pool: PgPool,
    store: EventStore,
    wake: Arc<Wakeups>,
}

impl Fixture {
    async fn new(options: PgPoolOptions, connect: PgConnectOptions, retries: u32) -> Fixture {
        Self::with_store(options, connect, retries, false).await
    }

    /// `group`: single-event appends go through the group-commit appender.
    async fn with_store(
        options: PgPoolOptions,
        connect: PgConnectOptions,
        retries: u32,
        group: bool,
    ) -> Fixture {
        let pool = pool(options, connect).await;
        sqlx::query(
            "CREATE TABLE test_seen (global_position bigint PRIMARY KEY, n integer NOT NULL, \
                                     applied_order bigserial)",
        )
        .execute(&pool)
        .await
        .expect("test table");
        let wake = Arc::new(Wakeups::default());
        let mut store = EventStore::new(pool.clone(), retries, wake.clone());
        if group {
            store = store.with_group_commit(4, 64);
        }
        Fixture { store, pool, wake }
    }

    async fn projections(&self, delay: Duration, batch_size: i64) -> Projections {
        let projections = Projections::new(
            self.pool.clone(),
            ProjectorSettings {
                batch_size,
                poll_interval: Duration::from_millis(100),
            },
            vec![Arc::new(Counting { delay })],
            self.wake.clone(),
        );
        projections.init().await.expect("init");
        projections
    }

    async fn seen(&self) -> (i64, i32) {
        sqlx::query_as("SELECT count(*), COALESCE(max(n), 0) FROM test_seen")
            .fetch_one(&self.pool)
            .await
            .expect("seen")
    }

    /// The last event in projector order.
    async fn last_position(&self) -> Position {
        let (tx, pos): (String, i64) = sqlx::query_as(
            "SELECT transaction_id::text, global_position FROM events \
             ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1",
        )
        .fetch_one(&self.pool)
        .await
        .expect("last");
        Position {
            transaction_id: tx.parse().expect("xid"),
            global_position: pos,
        }
    }
}

fn create(owner: Uuid) -> PlantCommand {
    PlantCommand::CreatePlant {
        owner_id: owner,
        name: PlantName::parse("Ficus").expect("name"),
        species: None,
        description: None,
        care: Care::default(),
    }
}

fn meta() -> Metadata {
    Metadata::system("test")
}

#[sqlx::test]
async fn concurrent_writers_never_make_a_projector_skip_or_repeat_an_event(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    concurrent_writers(Fixture::with_store(options, connect, 0, false).await).await;
}

#[sqlx::test]
async fn concurrent_group_committed_writers_never_make_a_projector_skip_or_repeat_an_event(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    concurrent_writers(Fixture::with_store(options, connect, 0, true).await).await;
}

async fn concurrent_writers(fixture: Fixture) {
    const WRITERS: usize = 8;
    const COMMANDS: usize = 500;
    let projections = fixture.projections(Duration::ZERO, 100).await;
    let _running = BackgroundTasks::from(projections.spawn());

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let store = fixture.store.clone();
        writers.push(tokio::spawn(async move {
            let owner = Uuid::new_v4();
            for _ in 0..COMMANDS {
                let id = Uuid::now_v7().to_string();
                store
                    .execute_new::<Plant>(&id, create(owner), &(), &meta())
                    .await
                    .expect("append");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }

    let last = fixture.last_position().await;
    eventually(
        "the projector to reach the last event",
        Duration::from_secs(60),
        || {
            let projections = projections.clone();
            async move { projections.checkpoint("counting") == Some(last) }
        },
    )
    .await;
    let (count, max_n) = fixture.seen().await;
    assert_eq!(count, (WRITERS * COMMANDS) as i64, "every event applied");
    assert_eq!(max_n, 1, "no event applied twice");
    let stored = arosaje::projections::runner::load_checkpoint(&fixture.pool, "counting")
        .await
        .expect("checkpoint");
    assert_eq!(stored, last, "the stored checkpoint is the last event");
}

#[sqlx::test]
async fn a_transaction_that_commits_late_is_waited_for_not_skipped(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let fixture = Fixture::new(options, connect, 0).await;
    let projections = fixture.projections(Duration::ZERO, 100).await;

    // A slow writer takes the first global position and keeps its transaction open...
    let mut slow = fixture.pool.begin().await.expect("begin");
    let slow_id = Uuid::now_v7();
    fixture
        .store
        .execute_new_in::<Plant>(
            &mut slow,
            &slow_id.to_string(),
            create(Uuid::new_v4()),
            &(),
            &meta(),
        )
        .await
        .expect("slow append");
    // ...while later writers commit events with higher positions.
    for _ in 0..5 {
        fixture
            .store
            .execute_new::<Plant>(
                &Uuid::now_v7().to_string(),
                create(Uuid::new_v4()),
                &(),
                &meta(),
            )
            .await
            .expect("fast append");
    }

    // A cursor on the position alone would apply positions 2..6 now and never see position 1.
    let outcome = projections.run_batch(0).await.expect("batch");
    assert_eq!(outcome.read, 0, "nothing may pass the open transaction");
    assert!(
        outcome.held_back,
        "committed events are reported as held back"
    );
    assert_eq!(fixture.seen().await.0, 0);

    slow.commit().await.expect("commit");
    projections.catch_up("counting").await.expect("catch up");
    let (count, max_n) = fixture.seen().await;
    assert_eq!((count, max_n), (6, 1), "all six events, each once");
    let first: i64 =
        sqlx::query_scalar("SELECT global_position FROM test_seen ORDER BY applied_order LIMIT 1")
            .fetch_one(&fixture.pool)
            .await
            .expect("first");
    let slow_position: i64 =
        sqlx::query_scalar("SELECT global_position FROM events WHERE aggregate_id = $1")
            .bind(slow_id.to_string())
            .fetch_one(&fixture.pool)
            .await
            .expect("slow position");
    assert_eq!(
        first, slow_position,
        "the late transaction's event is applied first"
    );
    assert_eq!(
        projections.checkpoint("counting"),
        Some(fixture.last_position().await)
    );
}

#[sqlx::test]
async fn a_projector_stopped_mid_stream_resumes_without_repeating_or_missing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const EVENTS: i64 = 600;
    let fixture = Fixture::new(options, connect, 0).await;
    let owner = Uuid::new_v4();
    for _ in 0..EVENTS {
        fixture
            .store
            .execute_new::<Plant>(&Uuid::now_v7().to_string(), create(owner), &(), &meta())
            .await
            .expect("append");
    }

    // First run: slow batches of 25, killed once it is part-way through.
    let first = fixture.projections(Duration::from_millis(30), 25).await;
    let running = BackgroundTasks::from(first.spawn());
    eventually(
        "the first run to get going",
        Duration::from_secs(30),
        || async { fixture.seen().await.0 >= 100 },
    )
    .await;
    running.abort();
    drop(running);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // What committed is exactly the events up to the stored checkpoint: no half batch.
    let checkpoint = arosaje::projections::runner::load_checkpoint(&fixture.pool, "counting")
        .await
        .expect("checkpoint");
    let upto: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (transaction_id, global_position) <= ($1::text::xid8, $2)",
    )
    .bind(checkpoint.transaction_id.to_string())
    .bind(checkpoint.global_position)
    .fetch_one(&fixture.pool)
    .await
    .expect("count");
    let (seen, _) = fixture.seen().await;
    assert_eq!(seen, upto, "the effects match the checkpoint exactly");
    assert!(seen < EVENTS, "the run was stopped mid-stream");

    // Restart, as a new process would.
    let second = fixture.projections(Duration::ZERO, 25).await;
    second.catch_up("counting").await.expect("catch up");
    let (count, max_n) = fixture.seen().await;
    assert_eq!(count, EVENTS, "nothing missed");
    assert_eq!(max_n, 1, "nothing applied twice");
}

#[sqlx::test]
async fn two_commands_on_one_aggregate_never_both_win_the_same_version(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    racing_commands(Fixture::with_store(options, connect, 0, false).await).await;
}

#[sqlx::test]
async fn group_committed_commands_on_one_aggregate_never_both_win_the_same_version(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    racing_commands(Fixture::with_store(options, connect, 0, true).await).await;
}

async fn racing_commands(fixture: Fixture) {
    const RACERS: usize = 16;
    let owner = Uuid::new_v4();
    let id = Uuid::now_v7().to_string();
    fixture
        .store
        .execute_new::<Plant>(&id, create(owner), &(), &meta())
        .await
        .expect("create");

    let mut racers = Vec::new();
    for i in 0..RACERS {
        let store = fixture.store.clone();
        let id = id.clone();
        racers.push(tokio::spawn(async move {
            let patch = PlantPatch {
                name: Some(PlantName::parse(&format!("Ficus {i}")).expect("name")),
                ..Default::default()
            };
            let actor = Actor {
                id: owner,
                role: Role::User,
            };
            store
                .execute::<Plant>(
                    &id,
                    PlantCommand::UpdatePlant { actor, patch },
                    &(),
                    &meta(),
                )
                .await
        }));
    }
    let mut won = 0;
    let mut conflicts = 0;
    let mut versions = Vec::new();
    for racer in racers {
        match racer.await.expect("racer") {
            Ok(committed) => {
                won += 1;
                versions.push(committed.version);
            }
            Err(CommandError::Conflict) => conflicts += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert!(won >= 1);
    assert!(
        conflicts >= 1,
        "with no retries, racing writers must conflict"
    );
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), won, "no two winners share a version");
    let stream: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(&id)
            .fetch_all(&fixture.pool)
            .await
            .expect("stream");
    assert_eq!(
        stream,
        (1..=(1 + won as i64)).collect::<Vec<_>>(),
        "one event per winner, no gaps"
    );
}

#[sqlx::test]
async fn transaction_ids_are_ordered_as_numbers_not_as_text(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let fixture = Fixture::new(options, connect, 0).await;
    // Long-finished transactions 10 and 9 (explicit ids; the column only defaults to the writer's).
    for tx in ["10", "9"] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                                 payload, metadata, transaction_id) \
             VALUES ('Plant', $1, 1, 'PlantDeleted', '1', '\"PlantDeleted\"', '{}', $2::xid8)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(tx)
        .execute(&fixture.pool)
        .await
        .expect("insert");
    }
    let projections = fixture.projections(Duration::ZERO, 100).await;
    projections.catch_up("counting").await.expect("catch up");
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT e.transaction_id::text FROM test_seen s JOIN events e USING (global_position) \
         ORDER BY s.applied_order",
    )
    .fetch_all(&fixture.pool)
    .await
    .expect("order");
    assert_eq!(order, ["9", "10"]);
}

/// Fails its first `failures` batches, then records events like `Counting`.
struct Flaky {
    failures: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Projection for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn version(&self) -> i32 {
        1
    }
    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Plant"]
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[arosaje::events::StoredEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            sqlx::query("INSERT INTO test_flaky (global_position) VALUES ($1)")
                .bind(event.position.global_position)
                .execute(&mut *conn)
                .await?;
        }
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            anyhow::bail!("simulated failure, {left} left");
        }
        Ok(())
    }
}

#[sqlx::test]
async fn a_failing_projector_retries_without_holding_up_the_others(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let fixture = Fixture::new(options, connect, 0).await;
    sqlx::query("CREATE TABLE test_flaky (global_position bigint PRIMARY KEY)")
        .execute(&fixture.pool)
        .await
        .expect("table");
    let projections = Projections::new(
        fixture.pool.clone(),
        ProjectorSettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(100),
        },
        vec![
            Arc::new(Flaky {
                failures: std::sync::atomic::AtomicUsize::new(3),
            }),
            Arc::new(Counting {
                delay: Duration::ZERO,
            }),
        ],
        fixture.wake.clone(),
    );
    projections.init().await.expect("init");
    let _running = BackgroundTasks::from(projections.spawn());
    for _ in 0..50 {
        fixture
            .store
            .execute_new::<Plant>(
                &Uuid::now_v7().to_string(),
                create(Uuid::new_v4()),
                &(),
                &meta(),
            )
            .await
            .expect("append");
    }
    let last = fixture.last_position().await;
    eventually(
        "the healthy projector to finish",
        Duration::from_secs(10),
        || {
            let projections = projections.clone();
            async move { projections.checkpoint("counting") == Some(last) }
        },
    )
    .await;
    assert_eq!(fixture.seen().await, (50, 1));
    eventually(
        "the failing projector to recover",
        Duration::from_secs(30),
        || {
            let projections = projections.clone();
            async move { projections.checkpoint("flaky") == Some(last) }
        },
    )
    .await;
    let flaky: i64 = sqlx::query_scalar("SELECT count(*) FROM test_flaky")
        .fetch_one(&fixture.pool)
        .await
        .expect("count");
    assert_eq!(flaky, 50, "failed batches rolled back, then applied once");
}
