//! What the benches share: a fresh database, the real server on a loopback port, accounts.
#![allow(dead_code)]

pub mod peer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arosaje::config::Config;
use arosaje::{api, App, BackgroundTasks, MIGRATOR};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};

pub const PASSWORD: &str = "correct horse battery";

/// A database created for one bench run and dropped at its end.
pub struct BenchDb {
    admin: PgConnection,
    pub name: String,
    pub url: String,
}

impl BenchDb {
    /// `BENCH_DATABASE_URL` (default: local `postgres` database) is where it is created from.
    pub async fn create() -> anyhow::Result<BenchDb> {
        Self::create_from(None, "").await
    }

    /// As `create`, with `tag` in the name (for benches that need two databases).
    pub async fn create_tagged(tag: &str) -> anyhow::Result<BenchDb> {
        Self::create_from(None, tag).await
    }

    /// A fresh database, a copy of `template` if given (`CREATE DATABASE ... TEMPLATE`: a kept
    /// log is reused without generating it again; nobody may be connected to the template), with
    /// `tag` in its name.
    pub async fn create_from(template: Option<&str>, tag: &str) -> anyhow::Result<BenchDb> {
        let admin_url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let name = format!("arosaje_bench_{}{tag}", std::process::id());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("BENCH_DATABASE_URL")?;
        let template = template
            .map(|t| format!(" TEMPLATE \"{}\"", t.replace('"', "")))
            .unwrap_or_default();
        sqlx::query(&format!("CREATE DATABASE {name}{template}"))
            .execute(&mut admin)
            .await?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => anyhow::bail!("BENCH_DATABASE_URL needs a database name"),
        };
        Ok(BenchDb { admin, name, url })
    }

    pub async fn drop_database(mut self) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await?;
        Ok(())
    }
}

/// Bench configuration: one client address drives the whole load, so limits are out of the way.
pub fn config(db: &BenchDb) -> Config {
    let mut config = Config::for_tests(&db.url);
    config.rate_limit_api = 100_000_000;
    config.rate_limit_auth = 1_000_000;
    config.rate_limit_auth_per_email = 1_000_000;
    config
}

/// The migrated database, the application with its projectors, and the HTTP server on a
/// loopback port.
pub async fn serve(config: Config) -> anyhow::Result<(App, PgPool, String, BackgroundTasks)> {
    // The pool `serve` opens, with its session settings.
    let pool = arosaje::connect_database(&config.store).await?;
    MIGRATOR.run(&pool).await?;
    let app = App::with_pool(config, pool.clone()).await?;
    let background = app.start_projectors();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = api::router(app.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((app, pool, base, background))
}

/// Logs in with the bench password; returns the login body (an error body when refused).
pub async fn login(http: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<Value> {
    Ok(http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?)
}

/// Registers and logs in; returns the login body.
pub async fn account(http: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "display_name": "Bench"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "register: {}", r.status());
    // With a zero read-your-writes wait the account may need a moment to be readable.
    for _ in 0..200 {
        let login = login(http, base, email).await?;
        if login["access_token"].is_string() {
            return Ok(login);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("cannot log in as {email}")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// What a load run got: successful requests with their latencies, failed ones, wall time.
pub struct Run {
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// The create-plant body, numbered.
pub fn plant_body(i: usize) -> Value {
    json!({"name": format!("Monstera {i}"), "species": "Monstera deliciosa",
           "care": {"watering_interval_days": 7, "light": "bright, indirect", "notes": "mist weekly"}})
}

/// The request each client repeats.
#[derive(Clone, Copy)]
pub enum Ask {
    /// `POST` of [`plant_body`].
    PostPlant,
    Get,
}

/// `clients` tasks each send `ask` to `url` as fast as they can (or at `rate` per second in
/// total), client `c` with `tokens[c % len]` as its bearer token (none when `tokens` is empty).
/// Only 2xx answers count as done.
pub async fn drive(
    http: &reqwest::Client,
    url: &str,
    ask: Ask,
    tokens: &[String],
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = url.to_string();
        let token = (!tokens.is_empty()).then(|| tokens[c % tokens.len()].clone());
        let stop = stop.clone();
        let pace = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut ticker = pace.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let sent = Instant::now();
                let mut request = match ask {
                    Ask::PostPlant => http.post(&url).json(&plant_body(i)),
                    Ask::Get => http.get(&url),
                };
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            run.ok += latencies.len();
            run.errors += errors;
            run.latencies.extend(latencies);
        }
    }
    run.elapsed = start.elapsed();
    run.latencies.sort_unstable();
    run
}

/// `clients` tasks INSERT the same payload as [`plant_body`], one row per statement, through
/// `pool` into a plain table (no trigger, one primary key, one secondary column): rows/s.
pub async fn plain_inserts(
    pool: &PgPool,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_plain (id uuid PRIMARY KEY, owner_id uuid NOT NULL, \
         payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let owner = uuid::Uuid::new_v4();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let done = sqlx::query(
                    "INSERT INTO bench_plain (id, owner_id, payload) VALUES ($1, $2, $3)",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(owner)
                .bind(plant_body(n))
                .execute(&pool)
                .await;
                if done.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
