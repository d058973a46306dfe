//! Reads of sittings and conversations over the real HTTP API at a fixed concurrency: browsing
//! (answered from the query cache), searches near new places (cache misses), an owner's own
//! list, one sitting, and the conversation list (with presence).
//!
//! `cargo bench --bench browse` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_SECS` (per phase, default 5), `BENCH_CLIENTS` (default 32),
//! `BENCH_OPEN_SITTINGS` (default 10,000), `BENCH_CONVERSATIONS` (default 20).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

mod common;
use common::ms;

/// The URL of a client's i-th request.
type Url = Arc<dyn Fn(usize) -> String + Send + Sync>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open sittings written straight into the read model (browsing reads nothing else), spread
/// over mainland France, each with instructions.
async fn seed_open_sittings(
    pool: &sqlx::PgPool,
    owner: uuid::Uuid,
    n: usize,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO sittings (id, owner_id, status, starts_on, ends_on, lat, lon, approx_lat, approx_lon, \
                               city, instructions, created_at, updated_at, version) \
         SELECT gen_random_uuid(), $1, 'open', current_date + (i % 60)::int, current_date + (i % 60)::int + 7, \
                lat, lon, round(lat::numeric, 2)::float8, round(lon::numeric, 2)::float8, 'Bench', \
                'Key under the blue pot; code 4812', now(), now(), 1 \
           FROM (SELECT i, 43.0 + random() * 6.0 AS lat, -1.0 + random() * 8.0 AS lon \
                   FROM generate_series(1, $2) AS i) points \
         RETURNING id",
    )
    .bind(owner)
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    sqlx::query("ANALYZE sittings").execute(pool).await?;
    Ok(ids)
}

/// `clients` tasks GET the URL `url(i)` gives for their i-th request, for `duration`.
async fn drive(
    http: &reqwest::Client,
    token: &str,
    clients: usize,
    duration: Duration,
    url: Url,
) -> (f64, Vec<Duration>, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, token, stop, counter, url) = (
            http.clone(),
            token.to_string(),
            stop.clone(),
            counter.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match http.get(url(i)).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, e)) = task.await {
            all.extend(latencies);
            errors += e;
        }
    }
    let per_second = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    (per_second, all, errors)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let duration = Duration::from_secs(env("BENCH_SECS", 5) as u64);
    let clients = env("BENCH_CLIENTS", 32);
    let open = env("BENCH_OPEN_SITTINGS", 10_000);
    let conversations = env("BENCH_CONVERSATIONS", 20);
    let db = common::BenchDb::create().await?;
    let result = async {
        let config = common::config(&db);
        let (_app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let owner = common::account(&http, &base, "owner@bench.example").await?;
        let owner_token = owner["access_token"].as_str().context("token")?.to_string();
        let owner_id: uuid::Uuid = owner["user"]["id"].as_str().context("id")?.parse()?;
        let reader = common::account(&http, &base, "reader@bench.example").await?;
        let reader_token = reader["access_token"]
            .as_str()
            .context("token")?
            .to_string();
        let ids = Arc::new(seed_open_sittings(&pool, owner_id, open).await?);
        // The owner talks with as many people, each of whom answered once.
        for i in 0..conversations {
            let other = common::account(&http, &base, &format!("friend{i}@bench.example")).await?;
            let other_token = other["access_token"].as_str().context("token")?.to_string();
            let other_id = other["user"]["id"].as_str().context("id")?.to_string();
            let started: serde_json::Value = http
                .post(format!("{base}/api/conversations"))
                .bearer_auth(&owner_token)
                .json(&json!({"participant_ids": [other_id]}))
                .send()
                .await?
                .json()
                .await?;
            let id = started["id"].as_str().context("conversation")?.to_string();
            for token in [&owner_token, &other_token] {
                http.post(format!("{base}/api/conversations/{id}/messages"))
                    .bearer_auth(token)
                    .json(&json!({"body": "Bonjour"}))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }

        println!(
            "reads over HTTP, {clients} clients, {} s per run, {open} open sittings",
            duration.as_secs()
        );
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>7}",
            "route", "req/s", "p50", "p99", "errors"
        );
        let b = base.clone();
        let browse: Url = Arc::new(move |_| format!("{b}/api/sittings"));
        let b = base.clone();
        let near: Url = Arc::new(move |i| {
            let lat = 43.5 + ((i + 1000) as f64 * 0.618_033_9).fract() * 5.0;
            let lon = -0.5 + ((i + 1000) as f64 * 0.414_213_5).fract() * 7.0;
            format!("{b}/api/sittings?near={lat:.5},{lon:.5}&radius_km=10")
        });
        let b = base.clone();
        let own: Url = Arc::new(move |_| format!("{b}/api/sittings?role=owner"));
        let (b, list) = (base.clone(), ids.clone());
        let one: Url = Arc::new(move |i| format!("{b}/api/sittings/{}", list[i % list.len()]));
        let b = base.clone();
        let talks: Url = Arc::new(move |_| format!("{b}/api/conversations"));
        let phases: [(&str, &str, Url); 5] = [
            ("GET /api/sittings (browse, cached)", &reader_token, browse),
            ("GET /api/sittings?near= (new places)", &reader_token, near),
            ("GET /api/sittings?role=owner", &owner_token, own),
            ("GET /api/sittings/{id} (owner)", &owner_token, one),
            ("GET /api/conversations (presence)", &owner_token, talks),
        ];
        for (label, token, url) in phases {
            drive(&http, token, 4, Duration::from_millis(300), url.clone()).await;
            let (per_second, latencies, errors) = drive(&http, token, clients, duration, url).await;
            println!(
                "{label:<44} {per_second:>10.0} {:>10} {:>10} {errors:>7}",
                ms(common::percentile(&latencies, 50.0)),
                ms(common::percentile(&latencies, 99.0)),
            );
        }
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
