//! Create-plant throughput and latency over the real HTTP API, against plain INSERTs of the same
//! payload through the same pool, plus the projection lag at half load.
//!
//! `cargo bench --bench create_plant` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_DATABASE_URL` (a database to create the bench database from; default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`), `REDIS_URL`, `BENCH_SECS` (per phase,
//! default 5), `BENCH_CLIENTS` (default `1,8,32`).

use std::time::Duration;

use anyhow::Context;

mod common;
use common::{drive, ms, plain_inserts, Ask};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    let client_counts: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let max_clients = client_counts.iter().copied().max().unwrap_or(32);

    let db = common::BenchDb::create().await?;
    let result = async {
        let mut config = common::config(&db);
        config.read_your_writes_timeout_ms = std::env::var("BENCH_RYW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let (_app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;

        // One account per client.
        let mut tokens = Vec::new();
        for i in 0..max_clients {
            let login = common::account(&http, &base, &format!("bench{i}@example.com")).await?;
            tokens.push(login["access_token"].as_str().context("token")?.to_string());
        }
        let url = format!("{base}/api/plants");
        // Warm-up.
        drive(&http, &url, Ask::PostPlant, &tokens, 4, Duration::from_millis(500), None).await;

        println!("create-plant over HTTP ({secs} s per run, read-your-writes on)");
        println!("{:>8} {:>12} {:>10} {:>10} {:>7}", "clients", "commands/s", "p50", "p99", "errors");
        let mut at_max = 0.0;
        for &clients in &client_counts {
            let run = drive(&http, &url, Ask::PostPlant, &tokens, clients, duration, None).await;
            println!(
                "{clients:>8} {:>12.0} {:>10} {:>10} {:>7}",
                run.per_second(),
                ms(run.percentile(50.0)),
                ms(run.percentile(99.0)),
                run.errors
            );
            if clients == max_clients {
                at_max = run.per_second();
            }
        }

        let inserts = plain_inserts(&pool, max_clients, duration).await?;
        println!("plain INSERT of the same payload, {max_clients} tasks, same pool: {inserts:.0} rows/s");
        println!("event-sourced / plain at {max_clients} clients: {:.2}", at_max / inserts);

        // Projection lag at half the load measured above.
        let rate = at_max / 2.0;
        let phase_start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
        let run = drive(&http, &url, Ask::PostPlant, &tokens, max_clients, duration, Some(rate)).await;
        let (p50, p99, n): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), count(*) \
               FROM (SELECT extract(epoch FROM p.projected_at - e.timestamp)::float8 AS lag \
                       FROM plants p \
                       JOIN events e ON e.aggregate_type = 'Plant' AND e.aggregate_id = p.id::text \
                                    AND e.sequence = 1 \
                      WHERE e.timestamp >= $1) lags",
        )
        .bind(phase_start)
        .fetch_one(&pool)
        .await?;
        println!(
            "projection lag (event commit -> read-model row) at {:.0} commands/s offered, {:.0} served: \
             p50 {:.2} ms, p99 {:.2} ms over {n} events; command p50 {} p99 {}",
            rate,
            run.per_second(),
            p50.unwrap_or(0.0) * 1000.0,
            p99.unwrap_or(0.0) * 1000.0,
            ms(run.percentile(50.0)),
            ms(run.percentile(99.0)),
        );
        pool.close().await;
        anyhow::Ok(())
    }
    .await;

    db.drop_database().await?;
    result
}
