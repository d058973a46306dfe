//! The audit API and `audit verify` on a big log: audit queries (p50/p99 through the real HTTP
//! API) with millions of events, and verification speed next to simply reading the log.
//!
//! `cargo bench --bench audit` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_AUDIT_EVENTS` (default 10000000),
//! `BENCH_QUERIES` (requests per query shape, default 200).
//!
//! The events are generated with SQL (`PlantUpdated` events, 10 per stream, 1,000 actors), through
//! the real insert path of the `events` table: its commit-order and hash-chain triggers run.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

mod common;
use common::ms;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn generate(pool: &sqlx::PgPool, events: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let chunk = 500_000usize;
    let mut done = 0usize;
    while done < events {
        let n = chunk.min(events - done);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                                 payload, metadata, timestamp) \
             SELECT 'Plant', 'bench-' || (i / 10), (i % 10) + 1, \
                    CASE WHEN i % 10 = 0 THEN 'PlantCreated' ELSE 'PlantUpdated' END, '1', \
                    CASE WHEN i % 10 = 0 \
                         THEN jsonb_build_object('PlantCreated', jsonb_build_object( \
                              'owner_id', '00000000-0000-7000-8000-' || lpad((i % 1000)::text, 12, '0'), \
                              'name', 'Plant ' || i, 'species', NULL, 'description', NULL, \
                              'care', jsonb_build_object('watering_interval_days', 7, 'light', NULL, 'notes', NULL))) \
                         ELSE jsonb_build_object('PlantUpdated', jsonb_build_object('changes', \
                              jsonb_build_object('name', 'Plant ' || i))) END, \
                    jsonb_build_object('actor_id', '00000000-0000-7000-8000-' || lpad((i % 1000)::text, 12, '0'), \
                                       'actor_role', 'USER', 'request_id', 'bench', \
                                       'correlation_id', 'bench', 'causation_id', 'bench'), \
                    now() - interval '30 days' + (i * interval '200 milliseconds') \
               FROM generate_series($1::bigint, $2::bigint) AS i ORDER BY i",
        )
        .bind(done as i64)
        .bind((done + n - 1) as i64)
        .execute(pool)
        .await?;
        done += n;
        println!(
            "  {done} events generated ({:.0} events/s)",
            done as f64 / start.elapsed().as_secs_f64()
        );
    }
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(())
}

async fn measure(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    label: &str,
    uri: &str,
    queries: usize,
) -> anyhow::Result<()> {
    let url = format!("{base}{uri}");
    let mut latencies = Vec::with_capacity(queries);
    let mut items = 0;
    for _ in 0..queries {
        let t = Instant::now();
        let reply = http.get(&url).bearer_auth(token).send().await?;
        anyhow::ensure!(reply.status().is_success(), "{uri}: {}", reply.status());
        let body: Value = reply.json().await?;
        latencies.push(t.elapsed());
        items = body["items"].as_array().map_or(0, Vec::len);
    }
    latencies.sort();
    println!(
        "audit {label}: p50 {} p99 {} ({items} events a page)",
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env("BENCH_AUDIT_EVENTS", 10_000_000);
    let queries = env("BENCH_QUERIES", 200);
    let db = common::BenchDb::create().await?;
    let result = async {
        let mut config = common::config(&db);
        config.admin_mfa = arosaje::config::MfaPolicy::Optional;
        let key = arosaje::audit::checkpoint_key(&config);
        let (app, pool, base, background) = common::serve(config).await?;
        // Projectors would follow the generated events; they are not measured here.
        drop(background);
        arosaje::identity::create_admin(&app, "admin@bench.example", common::PASSWORD, "Admin")
            .await?;
        let http = reqwest::Client::new();
        let login = common::login(&http, &base, "admin@bench.example").await?;
        let token = login["access_token"].as_str().context("token")?.to_string();
        println!("generating {events} events");
        generate(&pool, events).await?;

        let mid = events as i64 / 2;
        let actor = "00000000-0000-7000-8000-000000000421";
        let stream = format!("bench-{}", events / 20);
        let from = (chrono::Utc::now() - chrono::Duration::days(15)).to_rfc3339();
        let from = from.replace('+', "%2B");
        for (label, uri) in [
            ("first page, no filter".to_string(), "/api/audit/events?limit=100".to_string()),
            (
                "a page from the middle (after=)".to_string(),
                format!("/api/audit/events?after={mid}&limit=100"),
            ),
            (
                "by aggregate type, from the middle".to_string(),
                format!("/api/audit/events?aggregate_type=Plant&after={mid}&limit=100"),
            ),
            (
                "by actor (1 in 1,000 events)".to_string(),
                format!("/api/audit/events?actor_id={actor}&limit=100"),
            ),
            (
                "by actor, from the middle".to_string(),
                format!("/api/audit/events?actor_id={actor}&after={mid}&limit=100"),
            ),
            (
                "by event type (1 in 10 events)".to_string(),
                "/api/audit/events?event_type=PlantCreated&limit=100".to_string(),
            ),
            (
                "one stream".to_string(),
                format!("/api/audit/events?aggregate_type=Plant&aggregate_id={stream}"),
            ),
            (
                "a time window (from 15 days ago)".to_string(),
                format!("/api/audit/events?from={from}&limit=100"),
            ),
            (
                "one aggregate's state as of now".to_string(),
                format!("/api/audit/aggregates/Plant/{stream}"),
            ),
        ] {
            measure(&http, &base, &token, &label, &uri, queries).await?;
        }

        // Simply reading the log (the ceiling), then verifying it.
        let start = Instant::now();
        let mut position = 0i64;
        let mut read = 0usize;
        loop {
            let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT global_position, payload::text, metadata::text, hash FROM events \
                  WHERE global_position > $1 ORDER BY global_position LIMIT 10000",
            )
            .bind(position)
            .fetch_all(&pool)
            .await?;
            let Some(last) = rows.last() else { break };
            position = last.0;
            read += rows.len();
        }
        let reading = start.elapsed();
        arosaje::audit::checkpoint(&pool, &key).await?;
        let report = arosaje::audit::verify(&pool, &key, &|_, _| {}).await?;
        anyhow::ensure!(report.broken.is_none(), "{:?}", report.broken);
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "reading the log: {read} events in {:.1} s ({:.0} events/s); audit verify: {} events in \
             {:.1} s ({:.0} events/s)",
            reading.as_secs_f64(),
            rate(read, reading),
            report.events,
            report.elapsed.as_secs_f64(),
            rate(report.events as usize, report.elapsed),
        );
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
