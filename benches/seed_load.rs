//! `seed load` throughput (events appended per second) for a population of about 1,000,000
//! events, then how long the read models take to catch up with it (the projectors, as `serve`
//! runs them, from an empty model), on a fresh database.
//!
//! `cargo bench --bench seed_load` (PostgreSQL and Redis must listen). Settings:
//! `BENCH_DATABASE_URL` (see `common`), `BENCH_SCALE` (default 1.0: 50,000 users, 500
//! botanists, 100,000 plants, 60,000 sittings with 3 applications each, 100,000 advice, 5,000
//! conversations, 200,000 messages, 20,000 access records = about 1,050,000 events of every
//! read model), `BENCH_BATCH` (events per INSERT, default 5,000), `BENCH_ALL_AT_ONCE=1` (every
//! read model from the start, as `serve` on a loaded log: the cold start), `BENCH_TEMPLATE=db`
//! (skip the load: copy that database, e.g. one `seed load --no-wait` filled, and time the read
//! models catching up on its log).

use std::time::Instant;

use arosaje::seed::load::{self, LoadOptions};
use arosaje::{App, MIGRATOR};
use sqlx::postgres::PgPoolOptions;

mod common;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let template = std::env::var("BENCH_TEMPLATE").ok();
    let db = common::BenchDb::create_from(template.as_deref(), "").await?;
    let result = run(&db, scale, batch, template.is_some()).await;
    db.drop_database().await?;
    result
}

async fn run(db: &common::BenchDb, scale: f64, batch: usize, copied: bool) -> anyhow::Result<()> {
    let config = common::config(db);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&db.url)
        .await?;
    MIGRATOR.run(&pool).await?;
    let app = App::with_pool(config, pool.clone()).await?;
    let size = |n: f64| (n * scale).round() as u64;
    let options = LoadOptions {
        users: size(50_000.0),
        plants: size(100_000.0),
        sittings: size(60_000.0),
        applications: 3,
        botanists: size(500.0).max(3),
        advice: size(100_000.0),
        messages: size(200_000.0),
        conversations: Some(size(5_000.0).max(1)),
        access: size(20_000.0),
        batch,
        ..Default::default()
    };
    let events = if copied {
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await?;
        println!("copied a log of {events} events from BENCH_TEMPLATE");
        events as u64
    } else {
        let plan = options.plan()?;
        println!(
            "seed load: {} users, {} botanists, {} plants, {} sittings, {} conversations, \
             {} messages, {} advice, {} access records = {} events, {} per INSERT",
            plan.users,
            plan.botanists,
            plan.plants,
            plan.sittings,
            plan.conversations,
            plan.messages,
            plan.advice,
            plan.access,
            plan.events,
            batch
        );
        let report = load::load(&app, &options, &|_, _| {}).await?;
        println!(
            "  appended {} events in {:.1} s: {:.0} events/s",
            report.plan.events,
            report.elapsed.as_secs_f64(),
            report.events_per_second()
        );
        report.plan.events
    };
    // `BENCH_ALL_AT_ONCE=1`: every read model from the start, as a `serve` started on the
    // loaded log runs them; otherwise `users` first, as `seed load` does (see `load::catch_up`).
    let (laps, catch_up) = if std::env::var("BENCH_ALL_AT_ONCE").is_ok_and(|v| v == "1") {
        let started = Instant::now();
        let tasks: Vec<_> = arosaje::seed::READ_MODELS
            .iter()
            .map(|name| {
                let app = app.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    app.projections.catch_up(name).await?;
                    anyhow::Ok((*name, t.elapsed()))
                })
            })
            .collect();
        let mut laps = Vec::new();
        for task in tasks {
            laps.push(task.await??);
        }
        (laps, started.elapsed())
    } else {
        load::catch_up(&app).await?
    };
    let laps: Vec<String> = laps
        .iter()
        .map(|(name, t)| format!("{name} {:.1} s", t.as_secs_f64()))
        .collect();
    println!(
        "  read models caught up in {:.1} s ({:.0} events/s of log): {}",
        catch_up.as_secs_f64(),
        events as f64 / catch_up.as_secs_f64().max(1e-9),
        laps.join(", ")
    );
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_events")
        .fetch_one(&pool)
        .await?;
    println!("  parked events: {parked}");
    let sittings: i64 = sqlx::query_scalar("SELECT count(*) FROM sittings")
        .fetch_one(&pool)
        .await?;
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.messages")
        .fetch_one(&pool)
        .await?;
    println!("  read models hold {sittings} sittings and {messages} messages");
    Ok(())
}
