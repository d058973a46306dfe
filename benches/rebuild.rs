//! Rebuild speed of the plants read model over a generated log, next to the ceiling: the time it
//! takes simply to read those events and deserialise them, in the same run.
//!
//! `cargo bench --bench rebuild` (PostgreSQL must listen). Settings: `BENCH_DATABASE_URL` (see
//! `common`), `BENCH_EVENTS` (default 1,000,000: a quarter `PlantCreated`, then three rounds of
//! `PlantUpdated` over every plant), `BENCH_BATCH` (log positions per batch, default 10,000).

use std::sync::Arc;
use std::time::Instant;

use arosaje::commands::plant::Plant;
use arosaje::events::crypto::KeyStore;
use arosaje::projections::plants::PlantsProjection;
use arosaje::projections::rebuild::{self, RebuildOptions};
use arosaje::MIGRATOR;
use sqlx::postgres::PgPoolOptions;

mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.replace([',', '_'], "").parse().ok())
        .unwrap_or(1_000_000);
    let batch: i64 = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let db = common::BenchDb::create().await?;
    let result = run(&db.url, events, batch).await;
    db.drop_database().await?;
    result
}

async fn run(url: &str, events: i64, batch: i64) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(8).connect(url).await?;
    MIGRATOR.run(&pool).await?;
    let plants = (events / 4).max(1);
    let owners = 1_000;

    // Owners straight into the users read model (the plants' foreign key needs them).
    sqlx::query(
        "INSERT INTO users (id, email, email_hash, display_name, password_hash, role, \
                            created_at, updated_at, version) \
         SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, \
                'owner' || i || '@example.org', sha256(convert_to('owner' || i, 'UTF8')), \
                'Owner ' || i, 'x', 'USER', now(), now(), 1 \
           FROM generate_series(1, $1) AS i",
    )
    .bind(owners)
    .execute(&pool)
    .await?;

    // The log: creations, then rounds of updates (each plant once per round), as the API would
    // have written them (externally tagged payloads, event version 1).
    let generating = Instant::now();
    let chunk = 100_000i64;
    let mut written = 0i64;
    while written < events {
        let upto = (written + chunk).min(events);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                 event_version, payload, metadata, timestamp) \
             SELECT 'Plant', \
                    ('00000000-0000-7000-9000-' || lpad(to_hex(i % $3), 12, '0')), \
                    i / $3 + 1, \
                    CASE WHEN i < $3 THEN 'PlantCreated' ELSE 'PlantUpdated' END, \
                    '1', \
                    CASE WHEN i < $3 THEN jsonb_build_object('PlantCreated', jsonb_build_object( \
                             'owner_id', ('00000000-0000-7000-8000-' \
                                          || lpad(to_hex(i % $4 + 1), 12, '0')), \
                             'name', 'Plant ' || i, 'species', NULL, 'description', NULL, \
                             'care', jsonb_build_object('watering_interval_days', 7, \
                                                        'light', 'bright', 'notes', NULL))) \
                         WHEN i / $3 = 1 THEN jsonb_build_object('PlantUpdated', jsonb_build_object( \
                             'changes', jsonb_build_object('name', 'Renamed ' || i))) \
                         WHEN i / $3 = 2 THEN jsonb_build_object('PlantUpdated', jsonb_build_object( \
                             'changes', jsonb_build_object('species', 'Ficus', \
                                                           'description', NULL))) \
                         ELSE jsonb_build_object('PlantUpdated', jsonb_build_object( \
                             'changes', jsonb_build_object('care', jsonb_build_object( \
                                 'watering_interval_days', 3, 'light', NULL, 'notes', 'mist')))) \
                    END, \
                    jsonb_build_object('actor_id', ('00000000-0000-7000-8000-' \
                                                    || lpad(to_hex(i % $4 + 1), 12, '0')), \
                                       'correlation_id', gen_random_uuid()), \
                    now() \
               FROM generate_series($1, $2 - 1) AS i \
              ORDER BY i",
        )
        .bind(written)
        .bind(upto)
        .bind(plants)
        .bind(owners)
        .execute(&pool)
        .await?;
        written = upto;
    }
    sqlx::query("ANALYZE events").execute(&pool).await?;
    println!(
        "generated {events} events ({plants} plants) in {:.1} s",
        generating.elapsed().as_secs_f64()
    );

    // The ceiling: read the same events in the same batches and deserialise them.
    let reading = Instant::now();
    let mut conn = pool.acquire().await?;
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let mut position = 0;
    let mut read = 0u64;
    while position < head {
        let to = (position + batch).min(head);
        let batch = rebuild::read_range(&mut conn, &["Plant"], position, to).await?;
        for event in &batch {
            std::hint::black_box(event.decode::<Plant>()?);
        }
        read += batch.len() as u64;
        position = to;
    }
    drop(conn);
    let ceiling = read as f64 / reading.elapsed().as_secs_f64();
    println!(
        "read and deserialise: {read} events in {:.2} s = {ceiling:.0} events/s (the ceiling)",
        reading.elapsed().as_secs_f64()
    );

    let projection = PlantsProjection::new(Arc::new(KeyStore::new(pool.clone())));
    let report = rebuild::rebuild(
        &pool,
        &projection,
        &RebuildOptions {
            batch_size: batch,
            ..Default::default()
        },
        &|_| {},
    )
    .await?;
    let rate = report.events_per_second();
    println!(
        "rebuild plants: {} events in {:.2} s = {rate:.0} events/s ({:.0} % of the ceiling); \
         goal >= 100000 events/s and >= 33 %",
        report.events,
        report.elapsed.as_secs_f64(),
        100.0 * rate / ceiling
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM plants WHERE version = 4")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        rows == plants,
        "{rows} plants at version 4, expected {plants}"
    );
    pool.close().await;
    Ok(())
}
