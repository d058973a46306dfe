//! GDPR export of a person with many events: time to stream the whole document, and the memory
//! the process holds meanwhile (the export streams page by page, so the peak should not grow with
//! the document).
//!
//! `cargo bench --bench export` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_EXPORT_EVENTS` (default 50000).
//!
//! The person registers, writes a conversation (sealed messages) and creates plants over HTTP;
//! the bulk of their events (`PlantUpdated` on their plants, acted by them) is generated with SQL
//! through the real insert path of `events` (commit-order and hash-chain triggers run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

mod common;

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::var("BENCH_EXPORT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let db = common::BenchDb::create().await?;
    let result = async {
        let config = common::config(&db);
        let (_app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::new();
        let login = common::account(&http, &base, "exporter@bench.example").await?;
        let token = login["access_token"].as_str().context("token")?.to_string();
        let user = login["user"]["id"].as_str().context("id")?.to_string();
        let other = common::account(&http, &base, "friend@bench.example").await?;
        let other_id = other["user"]["id"].as_str().context("id")?.to_string();
        let conversation: Value = http
            .post(format!("{base}/api/conversations"))
            .bearer_auth(&token)
            .json(&json!({"participant_ids": [other_id]}))
            .send()
            .await?
            .json()
            .await?;
        let conversation = conversation["id"].as_str().context("conversation")?.to_string();
        for i in 0..200 {
            let sent = http
                .post(format!("{base}/api/conversations/{conversation}/messages"))
                .bearer_auth(&token)
                .json(&json!({"body": format!("message {i}: the ferns are fine")}))
                .send()
                .await?;
            anyhow::ensure!(sent.status().is_success(), "send: {}", sent.status());
        }
        let plant: Value = http
            .post(format!("{base}/api/plants"))
            .bearer_auth(&token)
            .json(&json!({"name": "Monstera", "care": {"watering_interval_days": 7}}))
            .send()
            .await?
            .json()
            .await?;
        let plant = plant["id"].as_str().context("plant")?.to_string();
        let have: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE metadata ->> 'actor_id' = $1",
        )
        .bind(&user)
        .fetch_one(&pool)
        .await?;
        let more = (events - have).max(0);
        let start = Instant::now();
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                                 payload, metadata, timestamp) \
             SELECT 'Plant', $1, i + 1, 'PlantUpdated', '1', \
                    jsonb_build_object('PlantUpdated', jsonb_build_object('changes', \
                        jsonb_build_object('name', 'Monstera ' || i))), \
                    jsonb_build_object('actor_id', $2::text, 'actor_role', 'USER', \
                        'request_id', 'bench', 'correlation_id', 'bench', 'causation_id', 'bench'), \
                    now() \
               FROM generate_series(1, $3::bigint) AS i ORDER BY i",
        )
        .bind(&plant)
        .bind(&user)
        .bind(more)
        .execute(&pool)
        .await?;
        println!(
            "{} events of the person ({more} generated in {:.1} s)",
            have + more,
            start.elapsed().as_secs_f64()
        );

        for run in 0..3 {
            let baseline = rss();
            let peak = Arc::new(AtomicU64::new(baseline));
            let sampling = {
                let peak = peak.clone();
                tokio::spawn(async move {
                    loop {
                        peak.fetch_max(rss(), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            };
            let start = Instant::now();
            let reply = http
                .get(format!("{base}/api/me/export"))
                .bearer_auth(&token)
                .send()
                .await?;
            anyhow::ensure!(reply.status().is_success(), "export: {}", reply.status());
            let first_byte = start.elapsed();
            let mut bytes = 0usize;
            let mut tail = Vec::new();
            let mut reply = reply;
            while let Some(chunk) = reply.chunk().await? {
                bytes += chunk.len();
                tail.extend_from_slice(&chunk);
                if tail.len() > 256 {
                    tail.drain(..tail.len() - 256);
                }
            }
            let elapsed = start.elapsed();
            sampling.abort();
            let tail = String::from_utf8_lossy(&tail);
            let count = tail
                .rsplit_once("\"event_count\":")
                .and_then(|(_, n)| n.trim_end_matches('}').parse::<u64>().ok())
                .context("event_count at the end of the document")?;
            let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
            println!(
                "export #{run}: {count} events, {:.1} MiB in {:.2} s ({:.0} events/s; first byte \
                 after {:.0} ms); peak resident memory +{:.1} MiB over {:.1} MiB",
                bytes as f64 / 1048576.0,
                elapsed.as_secs_f64(),
                count as f64 / elapsed.as_secs_f64(),
                first_byte.as_secs_f64() * 1000.0,
                grown as f64 / 1048576.0,
                baseline as f64 / 1048576.0,
            );
        }
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
