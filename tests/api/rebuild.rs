//! Rebuilding read models aside and swapping them in (`arosaje projections rebuild`): after a
//! random workload a rebuild equals the live model; an interrupted rebuild leaves the live model
//! serving and a rerun succeeds; a rebuild while writes continue loses no event; parked events
//! are retried once the code is fixed; an outdated model is rebuilt at start-up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arosaje::events::store::Wakeups;
use arosaje::events::StoredEvent;
use arosaje::projections::rebuild::{self, RebuildOptions};
use arosaje::projections::{Projection, Projections, ProjectorSettings};
use async_trait::async_trait;
use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::advice::{advise, botanists};
use crate::helpers::{unique_email, TestApp};
use crate::sittings::{full_lifecycle, owner_with_plants, request, sitting_body, LYON};

/// The read models of the app (side-effect projectors have no tables).
fn read_models(t: &TestApp) -> Vec<Arc<dyn Projection>> {
    t.app
        .projections
        .projections()
        .into_iter()
        .filter(|p| !p.tables().is_empty())
        .collect()
}

fn model(t: &TestApp, name: &str) -> Arc<dyn Projection> {
    read_models(t)
        .into_iter()
        .find(|p| p.name() == name)
        .expect("read model")
}

/// Every row of every read-model table, volatile columns left out, in a stable order.
async fn snapshot(pool: &PgPool, models: &[Arc<dyn Projection>]) -> Vec<(String, Vec<String>)> {
    let mut tables = Vec::new();
    for projection in models {
        for table in projection.tables() {
            let mut query = String::from("SELECT (to_jsonb(t)");
            for column in projection.volatile_columns() {
                query.push_str(&format!(" - '{column}'"));
            }
            query.push_str(&format!(")::text AS r FROM {table} t ORDER BY r"));
            let rows: Vec<String> = sqlx::query_scalar(&query)
                .fetch_all(pool)
                .await
                .expect("snapshot");
            tables.push((table.to_string(), rows));
        }
    }
    tables
}

/// Waits until every read model has applied the whole log.
async fn settle(t: &TestApp) {
    for projection in read_models(t) {
        t.app
            .projections
            .catch_up(projection.name())
            .await
            .expect("catch up");
    }
}

fn options(batch_size: i64, dry_run: bool) -> RebuildOptions {
    RebuildOptions {
        batch_size,
        dry_run,
        ..Default::default()
    }
}

fn id_of(reply: &crate::helpers::Reply) -> String {
    reply.body["id"].as_str().expect("id").to_string()
}

/// A random workload over HTTP: users, plants (created, updated, deleted), sittings with
/// applications, one full lifecycle, advice, conversations with messages and read marks.
async fn workload(t: &TestApp, rng: &mut StdRng) {
    let (admin, botanists) = botanists(t, 2).await;
    // An admin's search is an access record (projection `access`).
    let listed = t.get("/api/admin/users?q=sitter", &admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let mut owners = Vec::new();
    for _ in 0..3 {
        owners.push(owner_with_plants(t, rng.gen_range(2..5)).await);
    }
    let mut sitters = Vec::new();
    for _ in 0..2 {
        sitters.push(t.verified_user(&unique_email("sitter")).await);
    }
    for (_, token, plants) in &owners {
        for plant in plants {
            for _ in 0..rng.gen_range(0..3) {
                let body = match rng.gen_range(0..4) {
                    0 => json!({"name": format!("Renamed {}", rng.gen::<u16>())}),
                    1 => json!({"species": "Monstera deliciosa"}),
                    2 => json!({"species": null, "description": "by the window"}),
                    _ => {
                        json!({"care": {"watering_interval_days": rng.gen_range(1..30), "light": "bright"}})
                    }
                };
                let updated = t.patch(&format!("/api/plants/{plant}"), token, body).await;
                assert!(updated.status.is_success(), "{updated:?}");
            }
        }
    }
    for (_, token, plants) in &owners {
        let created = request(t, token, sitting_body(&plants[..1], 2, 5, LYON, "Lyon")).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let sitting = id_of(&created);
        for (_, sitter) in &sitters {
            if rng.gen_bool(0.7) {
                let applied = t
                    .post(
                        &format!("/api/sittings/{sitting}/applications"),
                        Some(sitter),
                        json!({"message": "Happy to help"}),
                    )
                    .await;
                assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
            }
        }
        for (_, botanist) in &botanists {
            let plant = &plants[rng.gen_range(0..plants.len())];
            let given = advise(t, botanist, plant, json!({"body": "Less water in winter"})).await;
            assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
        }
    }
    full_lifecycle(t).await;
    // Conversations between owners and sitters.
    for (owner_id, owner, _) in &owners {
        let (sitter_id, sitter) = &sitters[rng.gen_range(0..sitters.len())];
        let started = t
            .post(
                "/api/conversations",
                Some(owner),
                json!({"participant_ids": [sitter_id]}),
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
        let conversation = id_of(&started);
        let mut last = None;
        for i in 0..rng.gen_range(1..4) {
            let (from, _) = if i % 2 == 0 {
                (owner, owner_id)
            } else {
                (sitter, sitter_id)
            };
            let sent = t
                .post(
                    &format!("/api/conversations/{conversation}/messages"),
                    Some(from),
                    json!({"body": format!("Les plantes vont bien {i}")}),
                )
                .await;
            assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
            last = Some(id_of(&sent));
        }
        if let Some(last) = last {
            let read = t
                .post(
                    &format!("/api/conversations/{conversation}/read"),
                    Some(sitter),
                    json!({"up_to": last}),
                )
                .await;
            assert_eq!(read.status, StatusCode::NO_CONTENT, "{read:?}");
        }
    }
    // Some plants go.
    for (_, token, plants) in &owners {
        if rng.gen_bool(0.5) {
            let plant = plants.last().expect("plant");
            let deleted = t.delete(&format!("/api/plants/{plant}"), token).await;
            assert!(deleted.status.is_success(), "{deleted:?}");
        }
    }
}

fn seeded() -> StdRng {
    let seed: u64 = rand::random();
    println!("workload seed {seed}");
    StdRng::seed_from_u64(seed)
}

#[sqlx::test]
async fn after_a_random_workload_a_rebuild_equals_the_live_model(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options_, connect).await;
    let mut rng = seeded();
    workload(&t, &mut rng).await;
    settle(&t).await;
    let models = read_models(&t);
    let before = snapshot(&t.pool, &models).await;
    for table in [
        "public.users",
        "public.plants",
        "public.sitting_applications",
        "public.advice",
        "messaging.messages",
    ] {
        let rows = before
            .iter()
            .find(|(name, _)| name == table)
            .map(|(_, rows)| rows.len());
        assert!(rows.unwrap_or(0) > 0, "{table} is empty");
    }

    for projection in &models {
        let report = rebuild::rebuild(&t.pool, projection.as_ref(), &options(7, true), &|_| {})
            .await
            .expect("dry run");
        let differences = report.differences.clone().expect("differences");
        assert_eq!(differences.len(), projection.tables().len());
        assert!(
            differences.iter().all(|d| d.is_empty()),
            "{}: {differences:?}",
            projection.name()
        );
        assert!(report.events > 0, "{report:?}");
    }
    // The dry run left nothing behind and changed nothing.
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%' OR nspname LIKE 'retired\\_%'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    assert_eq!(snapshot(&t.pool, &models).await, before);

    // Real rebuilds, in order, while the live projectors run.
    let progress = AtomicUsize::new(0);
    for projection in &models {
        let report = rebuild::rebuild(&t.pool, projection.as_ref(), &options(13, false), &|p| {
            assert!(p.done <= p.total);
            progress.fetch_add(1, Ordering::Relaxed);
        })
        .await
        .expect("rebuild");
        assert_eq!(report.parked, 0);
    }
    assert!(progress.load(Ordering::Relaxed) > models.len());
    settle(&t).await;
    assert_eq!(snapshot(&t.pool, &models).await, before);

    // Foreign keys to the swapped tables point at the new ones, with their cascades, and
    // indexes and constraints kept their names (later migrations refer to them).
    let dangling: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid \
           JOIN pg_namespace n ON n.oid = r.relnamespace \
          WHERE c.contype = 'f' AND n.nspname NOT IN ('public', 'messaging')",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(dangling, 0);
    let named: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint \
          WHERE conname IN ('plants_owner_id_fkey', 'plants_pkey', 'users_email_hash_key', \
                            'participants_user_id_fkey', 'reviews_rating_check') \
          ORDER BY 1",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(named.len(), 5, "{named:?}");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes \
          WHERE indexname IN ('plants_owner', 'sittings_open_near', 'messages_search', \
                              'advice_queue_to_review', 'users_botanist_pending')",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(indexes, 5);

    // The service goes on on the new tables: writes, reads, cascades.
    let (_, token, plants) = owner_with_plants(&t, 1).await;
    let listed = t.get("/api/plants", &token).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    assert_eq!(listed.body["items"][0]["id"], plants[0]);
    let listed = rebuild::list(&t.pool, &models).await.expect("list");
    for row in &listed {
        if ["mailer", "fanout"].contains(&row.name.as_str()) {
            assert_eq!(row.state, rebuild::State::SideEffects, "{row:?}");
            continue;
        }
        assert_eq!(row.state, rebuild::State::Live, "{row:?}");
        assert_eq!(row.code_version, row.checkpoint_version, "{row:?}");
    }
}

#[sqlx::test]
async fn an_interrupted_rebuild_leaves_the_live_model_serving_and_a_rerun_succeeds(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options_, connect).await;
    let (_, token, plants) = owner_with_plants(&t, 6).await;
    for plant in &plants {
        let updated = t
            .patch(
                &format!("/api/plants/{plant}"),
                &token,
                json!({"species": "Ficus"}),
            )
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    }
    settle(&t).await;
    let models = read_models(&t);
    let before = snapshot(&t.pool, &models).await;

    // Dropped after its first batches (as Ctrl-C or a crash would stop it).
    for name in ["plants", "users"] {
        let projection = model(&t, name);
        let batches = tokio::sync::Notify::new();
        let seen = AtomicUsize::new(0);
        let progress = |_: rebuild::Progress| {
            if seen.fetch_add(1, Ordering::Relaxed) == 3 {
                batches.notify_one();
            }
        };
        let options = options(1, false);
        let run = rebuild::rebuild(&t.pool, projection.as_ref(), &options, &progress);
        tokio::select! {
            done = run => panic!("the rebuild was to be interrupted: {done:?}"),
            _ = batches.notified() => {}
        }
        // The shadow is there, the live model untouched and serving.
        let shadow: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(format!("rebuild_{name}"))
                .fetch_one(&t.pool)
                .await
                .unwrap();
        assert!(shadow);
        assert_eq!(snapshot(&t.pool, &models).await, before);
        let listed = t.get("/api/plants", &token).await;
        assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
        assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(6));
    }
    // Writes go on and are read back at once.
    let created = t.create_plant(&token, "Calathea").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let one = t
        .get(&format!("/api/plants/{}", id_of(&created)), &token)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    settle(&t).await;
    let expected = snapshot(&t.pool, &models).await;

    // A rerun drops the leftover and succeeds.
    for name in ["users", "plants"] {
        let report = rebuild::rebuild(
            &t.pool,
            model(&t, name).as_ref(),
            &options(3, false),
            &|_| {},
        )
        .await
        .expect("rerun");
        assert!(report.events > 0);
    }
    settle(&t).await;
    assert_eq!(snapshot(&t.pool, &models).await, expected);
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(leftovers, 0);
}

#[sqlx::test]
async fn a_rebuild_while_writes_continue_loses_no_event(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = Arc::new(TestApp::spawn(options_, connect).await);
    let mut owners = Vec::new();
    for _ in 0..3 {
        owners.push(owner_with_plants(&t, 3).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, (_, token, plants)) in owners.into_iter().enumerate() {
        let t = t.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let created = t.create_plant(&token, &format!("Plant {i}-{n}")).await;
                assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
                let plant = &plants[n as usize % plants.len()];
                let updated = t
                    .patch(
                        &format!("/api/plants/{plant}"),
                        &token,
                        json!({"name": format!("Renamed {i}-{n}")}),
                    )
                    .await;
                assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
            }
            n
        }));
    }
    // Rebuilds while they write: users (other tables' foreign keys re-pointed under load) and
    // plants (the tables being written), with small batches so that they interleave.
    for name in ["users", "plants", "plants"] {
        let report = rebuild::rebuild(
            &t.pool,
            model(&t, name).as_ref(),
            &options(2, false),
            &|_| {},
        )
        .await
        .expect("rebuild under writes");
        assert_eq!(report.parked, 0);
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    assert!(written > 0);
    settle(&t).await;

    // Every plant whose creation is in the log is there, with its last name.
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e \
          WHERE e.event_type = 'PlantCreated' \
            AND NOT EXISTS (SELECT 1 FROM plants p WHERE p.id::text = e.aggregate_id)",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(missing, 0);
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM plants p \
          WHERE p.version <> (SELECT max(sequence) FROM events e \
                               WHERE e.aggregate_type = 'Plant' AND e.aggregate_id = p.id::text)",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(stale, 0);
    // And it equals a model computed now, after the writes stopped.
    for name in ["users", "plants"] {
        let report = rebuild::rebuild(
            &t.pool,
            model(&t, name).as_ref(),
            &options(50, true),
            &|_| {},
        )
        .await
        .expect("dry run");
        let differences = report.differences.expect("differences");
        assert!(differences.iter().all(|d| d.is_empty()), "{differences:?}");
    }
}

/// A projection whose code has a bug on `PlantUpdated` until `fixed` is set; it records the
/// positions it applied in `flaky_probe`.
struct Flaky {
    fixed: Arc<AtomicBool>,
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

    fn tables(&self) -> &'static [&'static str] {
        &["public.flaky_probe"]
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        for event in events {
            if event.event_type == "PlantUpdated" && !self.fixed.load(Ordering::Relaxed) {
                anyhow::bail!("bug: cannot apply {}", event.event_type);
            }
            sqlx::query("INSERT INTO flaky_probe (position) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(event.position.global_position)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[sqlx::test]
async fn parked_events_are_retried_once_the_code_is_fixed_and_any_projection_rebuilds(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options_, connect).await;
    let (_, token, plants) = owner_with_plants(&t, 2).await;
    let updated = t
        .patch(
            &format!("/api/plants/{}", plants[0]),
            &token,
            json!({"name": "Fixed"}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    sqlx::query("CREATE TABLE flaky_probe (position bigint PRIMARY KEY)")
        .execute(&t.pool)
        .await
        .unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let flaky = Arc::new(Flaky {
        fixed: fixed.clone(),
    });
    let runner = Projections::new(
        t.pool.clone(),
        ProjectorSettings {
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
            max_attempts: 1,
            ..Default::default()
        },
        vec![flaky.clone()],
        Arc::new(Wakeups::default()),
    );
    runner.init().await.unwrap();
    runner.catch_up("flaky").await.unwrap();
    let probe = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM flaky_probe")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(probe(t.pool.clone()).await, 2, "the two creations");
    let parked = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM parked_events WHERE projection = 'flaky'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(parked(t.pool.clone()).await, 1);
    let listed = rebuild::list(&t.pool, &[flaky.clone() as Arc<dyn Projection>])
        .await
        .unwrap();
    let row = listed.iter().find(|r| r.name == "flaky").expect("listed");
    assert_eq!(row.parked, 1);

    // Not fixed yet: it stays parked, with one more attempt.
    let report = rebuild::retry(&t.pool, flaky.as_ref()).await.unwrap();
    assert_eq!((report.applied, report.still_parked), (0, 1));
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM parked_events WHERE projection = 'flaky'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    // A rebuild of this projection too (any projection with tables gets it) parks it again.
    let rebuilt = rebuild::rebuild(&t.pool, flaky.as_ref(), &options(2, false), &|_| {})
        .await
        .unwrap();
    assert_eq!(rebuilt.parked, 1);
    assert_eq!(parked(t.pool.clone()).await, 1);

    // Fixed: the retry applies it and it leaves the dead-letter table.
    fixed.store(true, Ordering::Relaxed);
    let report = rebuild::retry(&t.pool, flaky.as_ref()).await.unwrap();
    assert_eq!((report.applied, report.still_parked), (1, 0));
    assert_eq!(parked(t.pool.clone()).await, 0);
    assert_eq!(probe(t.pool.clone()).await, 3);
    let value: Value = json!(rebuild::list(&t.pool, &[flaky as Arc<dyn Projection>])
        .await
        .unwrap()
        .iter()
        .filter(|r| r.name == "flaky")
        .map(|r| r.parked)
        .collect::<Vec<_>>());
    assert_eq!(value, json!([0]));
}

#[sqlx::test]
async fn an_outdated_read_model_is_rebuilt_at_start_up(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options_, connect).await;
    let (_, token, _) = owner_with_plants(&t, 2).await;
    settle(&t).await;
    let models = read_models(&t);
    let before = snapshot(&t.pool, &models).await;
    // As after a deploy whose plants projection has a new version.
    sqlx::query("UPDATE projection_checkpoints SET version = 0 WHERE name = 'plants'")
        .execute(&t.pool)
        .await
        .unwrap();
    let listed = rebuild::list(&t.pool, &models).await.unwrap();
    let plants = listed.iter().find(|r| r.name == "plants").expect("plants");
    assert_eq!(plants.state, rebuild::State::NeedsRebuild);
    rebuild::rebuild_outdated(t.pool.clone(), t.app.projections.projections()).await;
    let version: i32 =
        sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE name = 'plants'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(version, model(&t, "plants").version());
    settle(&t).await;
    assert_eq!(snapshot(&t.pool, &models).await, before);
    assert_eq!(t.get("/api/plants", &token).await.status, StatusCode::OK);
}

/// A small `seed load` in which every read model has work.
fn load_of_every_kind() -> arosaje::seed::load::LoadOptions {
    arosaje::seed::load::LoadOptions {
        users: 9,
        plants: 12,
        sittings: 31,
        messages: 40,
        conversations: Some(4),
        applications: 3,
        botanists: 4,
        advice: 29,
        access: 6,
        batch: 17,
        ..Default::default()
    }
}

/// Every BRIN index (events, messages and their keys, mails sent, the access log and each of
/// its monthly partitions) has `autosummarize` (see its migration), after a rebuild too: the
/// copies of a rebuilt model are indexed from the live definitions.
async fn assert_brin_indexes_summarise_new_ranges(pool: &PgPool) {
    let brin: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.oid::regclass::text, \
                COALESCE(c.reloptions @> ARRAY['autosummarize=on'], false) \
           FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
          WHERE a.amname = 'brin' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for name in [
        "events_timestamp_brin",
        "sent_mails_sent_at_brin",
        "message_keys_created_brin",
        "messaging.messages_created_brin",
        "monitoring.access_log_at_brin",
    ] {
        assert!(
            brin.iter().any(|(index, _)| index == name),
            "{name}: {brin:?}"
        );
    }
    assert!(brin.iter().all(|(_, on)| *on), "{brin:?}");
}

/// A `seed load` of every kind (botanists, advice with versions and verdicts, several
/// applications per sitting, reports, reviews, messages, access records), projected live by the
/// runner's batches, is what a rebuild of each model makes in batches cut elsewhere; and the
/// load is one the aggregates and the tamper evidence accept.
#[sqlx::test]
async fn a_seed_load_of_every_kind_rebuilds_to_the_live_model(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use arosaje::seed::load;
    let t = TestApp::with_config(options_, connect, crate::helpers::config(), false).await;
    let sizes = load_of_every_kind();
    let plan = sizes.plan().expect("plan");
    let report = load::load(&t.app, &sizes, &|_, _| {})
        .await
        .expect("seed load");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(logged as u64, plan.events);
    assert_eq!(report.plan, plan);
    load::catch_up(&t.app).await.expect("catch up");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);

    // Every model has work: rows in each of its tables (a load uploads no photos).
    let models = read_models(&t);
    let before = snapshot(&t.pool, &models).await;
    for (table, rows) in &before {
        if table != "public.plant_photos" {
            assert!(!rows.is_empty(), "{table} is empty after the load");
        }
    }
    let count = |sql: &'static str| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM advice").await, 29);
    // Given, plus one version per even advice.
    assert_eq!(count("SELECT count(*) FROM advice_versions").await, 29 + 15);
    // Validated by one botanist, rejected by another when `a % 3 == 0`.
    assert_eq!(count("SELECT count(*) FROM advice_reviews").await, 29 + 10);
    assert_eq!(
        count("SELECT count(*) FROM advice WHERE state = 'withdrawn'").await,
        5
    );
    assert_eq!(
        count("SELECT count(*) FROM users WHERE role = 'BOTANIST'").await,
        4
    );
    // Two more applications on each sitting that was not cancelled.
    assert_eq!(
        count("SELECT count(*) FROM sitting_applications").await,
        3 * (31 - plan.sittings_by_status[4] as i64)
    );
    assert_eq!(count("SELECT count(*) FROM monitoring.access_log").await, 6);
    assert!(count("SELECT count(*) FROM advice_queue WHERE advice_count > 0").await > 0);

    // A rebuild of each, in batches of 7 log positions, compared with the live model...
    for projection in &models {
        let report = rebuild::rebuild(&t.pool, projection.as_ref(), &options(7, true), &|_| {})
            .await
            .expect("dry run");
        let differences = report.differences.clone().expect("differences");
        assert!(
            differences.iter().all(|d| d.is_empty()),
            "{}: {differences:?}",
            projection.name()
        );
        assert!(report.events > 0, "{report:?}");
    }
    // ... and swapped in, in batches of 1,000: the same rows, foreign keys validated.
    for projection in &models {
        let report = rebuild::rebuild(
            &t.pool,
            projection.as_ref(),
            &options(1_000, false),
            &|_| {},
        )
        .await
        .expect("rebuild");
        assert_eq!(report.parked, 0, "{report:?}");
    }
    assert_eq!(snapshot(&t.pool, &models).await, before);
    assert_brin_indexes_summarise_new_ranges(&t.pool).await;
    let unvalidated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(unvalidated, 0);

    // The aggregates load the advice: another botanist's verdict on a loaded advice is taken.
    let (advice, author): (Uuid, Uuid) = sqlx::query_as(
        "SELECT id, author_id FROM advice WHERE state = 'active' ORDER BY id LIMIT 1",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let reviewer: String = sqlx::query_scalar(
        "SELECT email FROM users WHERE role = 'BOTANIST' AND id <> $1 \
            AND id NOT IN (SELECT botanist_id FROM advice_reviews WHERE advice_id = $2) LIMIT 1",
    )
    .bind(author)
    .bind(advice)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let _projectors = t.app.start_projectors();
    let login = t.login(&reviewer, load::LOAD_PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let token = login.body["access_token"].as_str().expect("token");
    let reviewed = t
        .post(
            &format!("/api/advice/{advice}/validate"),
            Some(token),
            json!({}),
        )
        .await;
    assert!(reviewed.status.is_success(), "{reviewed:?}");
    let key = arosaje::audit::checkpoint_key(&t.app.config);
    let verified = arosaje::audit::verify(&t.pool, &key, &|_, _| {})
        .await
        .expect("verify");
    assert!(verified.broken.is_none(), "{:?}", verified.broken);
}

/// Empties every read model and sets its checkpoint back to the start: a cold start.
async fn forget_read_models(pool: &PgPool, models: &[Arc<dyn Projection>]) {
    let tables: Vec<&str> = models.iter().flat_map(|m| m.tables().to_vec()).collect();
    sqlx::query(&format!("TRUNCATE {} CASCADE", tables.join(", ")))
        .execute(pool)
        .await
        .unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    sqlx::query("UPDATE projection_checkpoints SET last_position = 0 WHERE name = ANY($1)")
        .bind(&names)
        .execute(pool)
        .await
        .unwrap();
}

/// A cold start (read models never built, a large log) builds them by rebuilds, `users` first,
/// and they equal what the batches of the live projectors made: called directly in small
/// batches (the replay and its `finish_replay` run), and through `spawn` as `serve` does.
#[sqlx::test]
async fn a_cold_start_builds_the_read_models_by_rebuilds_equal_to_the_batches(
    options_: PgPoolOptions,
    connect: PgConnectOptions,
) {
    use arosaje::seed::load;
    let t = TestApp::with_config(options_, connect, crate::helpers::config(), false).await;
    let sizes = load_of_every_kind();
    load::load(&t.app, &sizes, &|_, _| {})
        .await
        .expect("seed load");
    // Below the cold start threshold (100,000 events by default): batch by batch.
    assert!(t.app.projections.cold_models().await.unwrap().is_empty());
    load::catch_up(&t.app).await.expect("catch up");
    let models = read_models(&t);
    let before = snapshot(&t.pool, &models).await;
    assert!(
        before
            .iter()
            .filter(|(table, _)| table != "public.plant_photos")
            .all(|(_, rows)| !rows.is_empty()),
        "every model has rows"
    );
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let cold_runner = || {
        Projections::new(
            t.pool.clone(),
            ProjectorSettings {
                poll_interval: Duration::from_millis(50),
                cold_start_log: 1,
                ..Default::default()
            },
            t.app.projections.projections(),
            Arc::new(Wakeups::default()),
        )
    };

    forget_read_models(&t.pool, &models).await;
    let runner = cold_runner();
    let cold = runner.cold_models().await.unwrap();
    let mut cold_names: Vec<&str> = cold.iter().map(|m| m.name()).collect();
    cold_names.sort_unstable();
    let mut all: Vec<&str> = models.iter().map(|m| m.name()).collect();
    all.sort_unstable();
    assert_eq!(cold_names, all);
    // Two instances starting cold at once: each model is built once, and both return.
    let small = options(5, false);
    let (first, second) = tokio::join!(
        rebuild::build_cold(&t.pool, &cold, &small),
        rebuild::build_cold(&t.pool, &cold, &small),
    );
    first.expect("cold build");
    second.expect("cold build beside another");
    assert!(runner.cold_models().await.unwrap().is_empty());
    assert_eq!(snapshot(&t.pool, &models).await, before);

    forget_read_models(&t.pool, &models).await;
    let runner = cold_runner();
    runner.init().await.unwrap();
    let tasks = runner.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints WHERE name = ANY($1) AND last_position < $2",
        )
        .bind(&all)
        .bind(head)
        .fetch_one(&t.pool)
        .await
        .unwrap();
        if behind == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind} models behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in &tasks {
        task.abort();
    }
    assert_eq!(snapshot(&t.pool, &models).await, before);
    let unvalidated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(unvalidated, 0);
}
