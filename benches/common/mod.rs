//! What the benches share: a fresh database, the real server on a loopback port, accounts.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context;
use arosaje::config::Config;
use arosaje::{api, App, BackgroundTasks, MIGRATOR};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
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
        Self::create_from(None).await
    }

    /// A fresh database, a copy of `template` if given (`CREATE DATABASE ... TEMPLATE`: a kept
    /// log is reused without generating it again; nobody may be connected to the template).
    pub async fn create_from(template: Option<&str>) -> anyhow::Result<BenchDb> {
        let admin_url = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let name = format!("arosaje_bench_{}", std::process::id());
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
    let pool = PgPoolOptions::new()
        .max_connections(config.store.database_max_connections)
        .connect(config.store.database_url.as_str())
        .await?;
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
        let login: Value = http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?
            .json()
            .await?;
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
