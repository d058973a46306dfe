//! The botanists' work queue over the real HTTP API, with 100,000 plants in open sittings: the
//! first page of `tab=to_review`, pages deep in it (following cursors), and `tab=reviewed` for a
//! botanist with 1,000 advice.
//!
//! `cargo bench --bench advice` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_QUEUE_PLANTS` (default 100000),
//! `BENCH_QUERIES` (requests per measure, default 400).
//!
//! The queue's rows are written straight into its read model (`plants`, `advice_queue`, `advice`),
//! as the projector would leave them: the queue query reads nothing else. A tenth of the plants
//! are flagged urgent, and three in ten already have advice (not in `to_review`).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

mod common;
use common::ms;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn seed(
    pool: &sqlx::PgPool,
    owner: uuid::Uuid,
    botanist: uuid::Uuid,
    plants: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut tx = arosaje::infra::db::begin(pool).await?;
    sqlx::query(
        "CREATE TEMP TABLE bench_plants ON COMMIT DROP AS \
         SELECT i, gen_random_uuid() AS plant_id, gen_random_uuid() AS sitting_id \
           FROM generate_series(1, $1) AS i",
    )
    .bind(plants as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO plants (id, owner_id, name, species, created_at, updated_at, version) \
         SELECT plant_id, $1, 'Plant ' || i, 'Ficus', now(), now(), 1 FROM bench_plants",
    )
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO advice_queue (sitting_id, plant_id, sitting_status, starts_on, ends_on, \
                                   requested_at, advice_count, flagged) \
         SELECT sitting_id, plant_id, 'open', current_date + (i % 90)::int, \
                current_date + (i % 90)::int + 7, now(), \
                CASE WHEN i % 10 < 3 THEN 1 ELSE 0 END, i % 10 = 9 \
           FROM bench_plants",
    )
    .execute(&mut *tx)
    .await?;
    // The botanist's own advice: 1,000, on plants that have advice.
    sqlx::query(
        "INSERT INTO advice (id, plant_id, plant_owner_id, author_id, priority, body, revision, \
                             state, created_at, updated_at, version) \
         SELECT gen_random_uuid(), plant_id, $1, $2, 'normal', 'Water it weekly', 1, 'active', \
                now(), now(), 1 \
           FROM bench_plants WHERE i % 10 < 3 ORDER BY i LIMIT 1000",
    )
    .bind(owner)
    .bind(botanist)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for table in ["plants", "advice_queue", "advice"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(pool)
            .await?;
    }
    println!(
        "seeded {plants} plants in open sittings in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(Duration, Value)> {
    let t = Instant::now();
    let reply = http.get(url).bearer_auth(token).send().await?;
    anyhow::ensure!(reply.status().is_success(), "{url}: {}", reply.status());
    let body: Value = reply.json().await?;
    Ok((t.elapsed(), body))
}

fn report(label: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{label}: p50 {} p99 {} ({} requests)",
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
        latencies.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plants = env("BENCH_QUEUE_PLANTS", 100_000);
    let queries = env("BENCH_QUERIES", 400);
    let db = common::BenchDb::create().await?;
    let result = async {
        let mut config = common::config(&db);
        // The bench admin has no authenticator app.
        config.admin_mfa = arosaje::config::MfaPolicy::Optional;
        let (app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .build()?;
        let owner = common::account(&http, &base, "owner@bench.example").await?;
        let botanist = common::account(&http, &base, "botanist@bench.example").await?;
        arosaje::identity::create_admin(&app, "admin@bench.example", common::PASSWORD, "Admin")
            .await?;
        let admin = common::login(&http, &base, "admin@bench.example").await?;
        let admin = admin["access_token"].as_str().context("admin token")?;
        let botanist_id: uuid::Uuid = botanist["user"]["id"].as_str().context("id")?.parse()?;
        let promoted = http
            .put(format!("{base}/api/admin/users/{botanist_id}/role"))
            .bearer_auth(admin)
            .json(&json!({"role": "BOTANIST"}))
            .send()
            .await?;
        anyhow::ensure!(
            promoted.status().is_success(),
            "role: {}",
            promoted.text().await?
        );
        let token = botanist["access_token"].as_str().context("token")?;
        let owner_id: uuid::Uuid = owner["user"]["id"].as_str().context("id")?.parse()?;
        seed(&pool, owner_id, botanist_id, plants).await?;

        let first = format!("{base}/api/botanist/queue?tab=to_review&limit=20");
        for _ in 0..20 {
            get(&http, &first, token).await?;
        }
        let mut latencies = Vec::with_capacity(queries);
        for _ in 0..queries {
            let (took, body) = get(&http, &first, token).await?;
            anyhow::ensure!(body["items"][0]["urgent"] == true, "urgent first: {body}");
            latencies.push(took);
        }
        report(
            &format!("queue to_review, first page of 20, {plants} plants in open sittings"),
            latencies,
        );

        // Deep pages: follow the cursor from the start, 100 a page.
        let mut latencies = Vec::with_capacity(queries);
        let mut cursor: Option<String> = None;
        let mut seen = 0usize;
        while latencies.len() < queries {
            let url = match &cursor {
                None => format!("{base}/api/botanist/queue?tab=to_review&limit=100"),
                Some(c) => format!("{base}/api/botanist/queue?tab=to_review&limit=100&cursor={c}"),
            };
            let (took, body) = get(&http, &url, token).await?;
            latencies.push(took);
            seen += body["items"].as_array().map_or(0, Vec::len);
            cursor = body["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        report(
            &format!("queue to_review, pages of 100 followed by cursor ({seen} items walked)"),
            latencies,
        );

        let reviewed = format!("{base}/api/botanist/queue?tab=reviewed&limit=20");
        let mut latencies = Vec::with_capacity(queries);
        for _ in 0..queries {
            latencies.push(get(&http, &reviewed, token).await?.0);
        }
        report(
            "queue reviewed, first page of 20, a botanist with 1,000 advice",
            latencies,
        );

        let stats = format!("{base}/api/botanist/stats");
        let mut latencies = Vec::with_capacity(queries);
        for _ in 0..queries {
            latencies.push(get(&http, &stats, token).await?.0);
        }
        report("botanist stats, 1,000 advice", latencies);
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
