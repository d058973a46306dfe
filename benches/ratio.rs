//! The ratio check of the write path (`scripts/bench-ratio.sh`): in one run, alternating so that
//! noise hits every contender alike, create-plant over the real HTTP API (auth, idempotency
//! layer, read-your-writes), plain single-row INSERTs of the same payload through the same pool,
//! and the peer (a plain cqrs-es + postgres-es service, [`common::peer`], in its own database),
//! each at 32 clients; then authenticated `GET /api/me` and `GET /api/plants` against `/health`.
//!
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL` (as the other benches), `BENCH_SECS` (per phase,
//! default 5), `BENCH_ROUNDS` (default 3), `BENCH_CLIENTS` (default 32), `BENCH_READS=0` skips
//! the read phases.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

mod common;
use common::{drive, plain_inserts, Ask, Run};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[derive(Default)]
struct Round {
    create: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    plain: f64,
    peer: f64,
    peer_p99: f64,
    health: f64,
    me: f64,
    plants: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = env("BENCH_SECS", 5);
    let rounds: usize = env("BENCH_ROUNDS", 3);
    let clients: usize = env("BENCH_CLIENTS", 32);
    let reads = env("BENCH_READS", 1) != 0;
    let duration = Duration::from_secs(secs);

    let db = common::BenchDb::create().await?;
    let peer_db = common::BenchDb::create_tagged("_peer").await?;
    let result = async {
        let mut config = common::config(&db);
        config.read_your_writes_timeout_ms = 10_000;
        let connections = config.store.database_max_connections;
        let (_app, pool, base, _background) = common::serve(config).await?;
        let peer_pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect(&peer_db.url)
            .await?;
        let peer = common::peer::serve(peer_pool.clone()).await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;

        let mut tokens = Vec::new();
        for i in 0..clients {
            let login = common::account(&http, &base, &format!("ratio{i}@example.com")).await?;
            tokens.push(login["access_token"].as_str().context("token")?.to_string());
        }
        let create_url = format!("{base}/api/plants");
        let peer_url = format!("{peer}/api/plants");
        let warm = Duration::from_secs(1);
        drive(&http, &create_url, Ask::PostPlant, &tokens, clients, warm, None).await;
        drive(&http, &peer_url, Ask::PostPlant, &[], clients, warm, None).await;
        plain_inserts(&pool, clients, warm).await?;

        println!(
            "{clients} clients, {secs} s per phase, {rounds} rounds (create = POST /api/plants with auth \
             and read-your-writes; plain = single-row INSERT, same pool; peer = cqrs-es demo-style)"
        );
        print!(
            "{:>5} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8}",
            "round", "create/s", "p50 ms", "p99 ms", "plain/s", "peer/s", "c/plain", "c/peer", "peer p99"
        );
        if reads {
            print!(" {:>9} {:>8} {:>9} {:>8} {:>8}", "health/s", "me/s", "plants/s", "me/h", "plants/h");
        }
        println!();
        let mut all = Vec::new();
        for r in 0..rounds {
            let mut round = Round::default();
            // Rotate the order so that no contender always runs first (or after the same one).
            for phase in 0..3 {
                match (phase + r) % 3 {
                    0 => {
                        let run: Run =
                            drive(&http, &create_url, Ask::PostPlant, &tokens, clients, duration, None)
                                .await;
                        round.create = run.per_second();
                        round.p50 = millis(run.percentile(50.0));
                        round.p99 = millis(run.percentile(99.0));
                        round.errors = run.errors;
                    }
                    1 => round.plain = plain_inserts(&pool, clients, duration).await?,
                    _ => {
                        let run = drive(&http, &peer_url, Ask::PostPlant, &[], clients, duration, None).await;
                        round.peer = run.per_second();
                        round.peer_p99 = millis(run.percentile(99.0));
                        round.errors += run.errors;
                    }
                }
            }
            if reads {
                let health = format!("{base}/health");
                let me = format!("{base}/api/me");
                round.health = drive(&http, &health, Ask::Get, &[], clients, duration, None)
                    .await
                    .per_second();
                round.me = drive(&http, &me, Ask::Get, &tokens, clients, duration, None)
                    .await
                    .per_second();
                round.plants = drive(&http, &create_url, Ask::Get, &tokens, clients, duration, None)
                    .await
                    .per_second();
            }
            print_round(&(r + 1).to_string(), &round, reads);
            all.push(round);
        }
        let m = |f: fn(&Round) -> f64| median(all.iter().map(f).collect());
        let summary = Round {
            create: m(|r| r.create),
            p50: m(|r| r.p50),
            p99: m(|r| r.p99),
            errors: all.iter().map(|r| r.errors).sum(),
            plain: m(|r| r.plain),
            peer: m(|r| r.peer),
            peer_p99: m(|r| r.peer_p99),
            health: m(|r| r.health),
            me: m(|r| r.me),
            plants: m(|r| r.plants),
        };
        print_round("med", &summary, reads);
        println!(
            "create/plain {:.3}  create/peer {:.2}  create p99 {:.1} ms  (medians of {rounds} rounds; errors {})",
            summary.create / summary.plain,
            summary.create / summary.peer,
            summary.p99,
            summary.errors
        );
        if reads {
            println!(
                "GET /api/me / health {:.2}  GET /api/plants / health {:.2}",
                summary.me / summary.health,
                summary.plants / summary.health
            );
        }
        pool.close().await;
        peer_pool.close().await;
        anyhow::Ok(())
    }
    .await;

    db.drop_database().await?;
    peer_db.drop_database().await?;
    result
}

fn print_round(label: &str, r: &Round, reads: bool) {
    print!(
        "{label:>5} {:>9.0} {:>8.2} {:>8.2} {:>9.0} {:>9.0} {:>8.3} {:>8.2} {:>8.2}",
        r.create,
        r.p50,
        r.p99,
        r.plain,
        r.peer,
        r.create / r.plain,
        r.create / r.peer,
        r.peer_p99
    );
    if reads {
        print!(
            " {:>9.0} {:>8.0} {:>9.0} {:>8.2} {:>8.2}",
            r.health,
            r.me,
            r.plants,
            r.me / r.health,
            r.plants / r.health
        );
    }
    println!();
}
