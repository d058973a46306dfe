//! The global order of the log: projectors see every event exactly once, in position order, under
//! concurrent writers, late commits (manual inserts included) and crashes; nothing outside our
//! appends delays them; an event a projector keeps failing on is parked.

use std::sync::Arc;
use std::time::Duration;

use arosaje::commands::plant::{Plant, PlantCommand, PlantPatch};
use arosaje::commands::values::PlantName;
use arosaje::commands::Actor;
use arosaje::events::plant::Care;
use arosaje::events::store::{CommandError, EventStore, Wakeups};
use arosaje::events::user::Role;
use arosaje::events::{Metadata, Position};
use arosaje::projections::{Mode, Projection, Projections, ProjectorSettings};
use arosaje::BackgroundTasks;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::helpers::{eventually, pool};

/// Counts one more application of `event` in `test_seen`.
async fn record_seen(
    conn: &mut PgConnection,
    event: &arosaje::events::StoredEvent,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO test_seen (global_position, n) VALUES ($1, 1) \
         ON CONFLICT (global_position) DO UPDATE SET n = test_seen.n + 1",
    )
    .bind(event.position.global_position)
    .execute(conn)
    .await?;
    Ok(())
}

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
            record_seen(conn, event).await?;
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
                max_attempts: 3,
                ..Default::default()
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
        let pos: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("last");
        Position::new(pos)
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

/// A plant event as a person in psql would insert it.
const MANUAL_INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                                 event_version, payload, metadata) \
                             VALUES ('Plant', $1, 1, 'PlantDeleted', '1', '\"PlantDeleted\"', '{}')";

#[sqlx::test]
async fn a_transaction_that_commits_late_is_waited_for_not_skipped(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let fixture = Fixture::with_store(options, connect, 0, true).await;
    let projections = fixture.projections(Duration::ZERO, 100).await;

    // A manual INSERT (as in psql) takes a position and keeps its transaction open...
    let mut slow = arosaje::infra::db::begin(&fixture.pool)
        .await
        .expect("begin");
    let slow_id = Uuid::now_v7();
    sqlx::query(MANUAL_INSERT)
        .bind(slow_id.to_string())
        .execute(&mut *slow)
        .await
        .expect("manual insert");
    // ...while commands append: they wait for it (positions go out in commit order).
    let mut writers = Vec::new();
    for _ in 0..5 {
        let store = fixture.store.clone();
        writers.push(tokio::spawn(async move {
            store
                .execute_new::<Plant>(
                    &Uuid::now_v7().to_string(),
                    create(Uuid::new_v4()),
                    &(),
                    &meta(),
                )
                .await
                .expect("append")
        }));
    }

    // Nothing committed yet: a projector reads nothing, and so can skip nothing.
    let outcome = projections.run_batch(0).await.expect("batch");
    assert_eq!(outcome.read, 0, "nothing may pass the open transaction");
    assert_eq!(fixture.seen().await.0, 0);

    slow.commit().await.expect("commit");
    for writer in writers {
        writer.await.expect("writer");
    }
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
    let min: i64 = sqlx::query_scalar("SELECT min(global_position) FROM events")
        .fetch_one(&fixture.pool)
        .await
        .expect("min");
    assert_eq!(
        slow_position, min,
        "its position comes before every later commit"
    );
    assert_eq!(
        projections.checkpoint("counting"),
        Some(fixture.last_position().await)
    );
}

#[sqlx::test]
async fn another_databases_open_transaction_delays_no_projection(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let fixture = Fixture::new(options, connect.clone(), 0).await;
    let projections = fixture.projections(Duration::ZERO, 100).await;
    // A write transaction in another database of the cluster, left open (a nightly job, a
    // forgotten psql session): it holds a transaction id the whole time.
    let mut elsewhere = sqlx::PgConnection::connect_with(&connect.clone().database("postgres"))
        .await
        .expect("connect to postgres");
    sqlx::query("BEGIN")
        .execute(&mut elsewhere)
        .await
        .expect("begin");
    for statement in [
        "CREATE TEMP TABLE held (n int)",
        "INSERT INTO held VALUES (1)",
    ] {
        sqlx::query(statement)
            .execute(&mut elsewhere)
            .await
            .expect("write");
    }

    for _ in 0..3 {
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
    let caught_up = tokio::time::timeout(Duration::from_secs(10), projections.catch_up("counting"))
        .await
        .expect("the projector is not held back")
        .expect("catch up");
    assert_eq!(caught_up, fixture.last_position().await);
    assert_eq!(fixture.seen().await, (3, 1));
    sqlx::query("ROLLBACK")
        .execute(&mut elsewhere)
        .await
        .expect("rollback");
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
    let upto: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position <= $1")
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
            max_attempts: 5,
            ..Default::default()
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

/// Fails, every time, on plants whose id is listed in `test_poison`; records the others. As a
/// side-effect projector, its effects count as repeatable (batches applied whole, as fan-out's).
struct Picky {
    mode: Mode,
}

#[async_trait]
impl Projection for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }
    fn version(&self) -> i32 {
        1
    }
    fn aggregate_types(&self) -> &'static [&'static str] {
        &["Plant"]
    }
    fn mode(&self) -> Mode {
        self.mode
    }
    fn repeatable_effects(&self) -> bool {
        self.mode == Mode::SideEffects
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[arosaje::events::StoredEvent],
    ) -> anyhow::Result<()> {
        for event in events {
            record_seen(conn, event).await?;
            let poison: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM test_poison WHERE aggregate_id = $1)",
            )
            .bind(&event.aggregate_id)
            .fetch_one(&mut *conn)
            .await?;
            if poison {
                anyhow::bail!("cannot digest {}", event.aggregate_id);
            }
        }
        Ok(())
    }
}

#[sqlx::test]
async fn an_event_that_keeps_failing_is_parked_and_the_projection_goes_on(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    parks_the_poison_and_goes_on(options, connect, Mode::ReadModel).await;
}

/// A side-effect projector with repeatable effects applies batches whole: the batch that meets
/// the poison is retried event by event, so the events before it act twice at most, the poison
/// is parked, and the rest act once.
#[sqlx::test]
async fn a_side_effect_batch_applied_whole_parks_its_poison_and_goes_on(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    parks_the_poison_and_goes_on(options, connect, Mode::SideEffects).await;
}

async fn parks_the_poison_and_goes_on(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    mode: Mode,
) {
    let fixture = Fixture::new(options, connect, 0).await;
    sqlx::query("CREATE TABLE test_poison (aggregate_id text PRIMARY KEY)")
        .execute(&fixture.pool)
        .await
        .expect("table");
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = Uuid::now_v7().to_string();
        fixture
            .store
            .execute_new::<Plant>(&id, create(Uuid::new_v4()), &(), &meta())
            .await
            .expect("append");
        ids.push(id);
    }
    let poison = &ids[7];
    sqlx::query("INSERT INTO test_poison VALUES ($1)")
        .bind(poison)
        .execute(&fixture.pool)
        .await
        .expect("poison");
    let projections = Projections::new(
        fixture.pool.clone(),
        ProjectorSettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
            max_attempts: 3,
            ..Default::default()
        },
        vec![Arc::new(Picky { mode })],
        fixture.wake.clone(),
    );
    projections.init().await.expect("init");
    let _running = BackgroundTasks::from(projections.spawn());
    let last = fixture.last_position().await;
    eventually(
        "the projector to pass the poison event",
        Duration::from_secs(30),
        || {
            let projections = projections.clone();
            async move { projections.checkpoint("picky") == Some(last) }
        },
    )
    .await;

    let (seen, max_n) = fixture.seen().await;
    match mode {
        Mode::ReadModel => {
            assert_eq!(seen, 19, "every event but the poison one took effect");
            assert_eq!(max_n, 1, "and each exactly once");
        }
        Mode::SideEffects => {
            // The whole batch once (up to the poison), then one by one: the events before it
            // again, the poison for each of its 3 attempts, the rest once.
            let times: Vec<i32> = sqlx::query_scalar(
                "SELECT COALESCE(s.n, 0) FROM events e \
                   LEFT JOIN test_seen s USING (global_position) \
                  WHERE e.aggregate_type = 'Plant' ORDER BY e.global_position",
            )
            .fetch_all(&fixture.pool)
            .await
            .expect("seen");
            let expected: Vec<i32> = (0..20)
                .map(|i| match i {
                    0..7 => 2,
                    7 => 4,
                    _ => 1,
                })
                .collect();
            assert_eq!(times, expected);
        }
    }
    let parked: Vec<(i64, String, String, i32)> = sqlx::query_as(
        "SELECT global_position, event_type, error, attempts FROM parked_events \
          WHERE projection = 'picky'",
    )
    .fetch_all(&fixture.pool)
    .await
    .expect("parked");
    let poison_position: i64 =
        sqlx::query_scalar("SELECT global_position FROM events WHERE aggregate_id = $1")
            .bind(poison)
            .fetch_one(&fixture.pool)
            .await
            .expect("position");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0, poison_position);
    assert_eq!(parked[0].1, "PlantCreated");
    assert!(parked[0].2.contains("cannot digest"), "{}", parked[0].2);
    assert_eq!(parked[0].3, 3, "parked after the attempt budget");
    let states = arosaje::projections::runner::all_checkpoints(&fixture.pool)
        .await
        .expect("states");
    assert_eq!(states["picky"].parked, 1);
}
