//! What authentication and rate limiting cost per request, and what a login costs.
//!
//! `cargo bench --bench auth` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! `BENCH_REQUESTS` (default 2000) requests per measurement, one client, over real HTTP.

use std::time::{Duration, Instant};

use anyhow::Context;
use arosaje::commands::values::Password;
use arosaje::infra::rate_limit::Quota;
use serde_json::json;

mod common;
use common::{ms, percentile};

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(&samples, 50.0);
    println!(
        "{name:<46} p50 {:>10}  p99 {:>10}  (n = {})",
        ms(p50),
        ms(percentile(&samples, 99.0)),
        samples.len()
    );
    p50
}

async fn time<F, Fut, T>(n: usize, mut f: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f().await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let db = common::BenchDb::create().await?;
    let result = async {
        let (app, _pool, base, _background) = common::serve(common::config(&db)).await?;
        let http = reqwest::Client::new();
        let login = common::account(&http, &base, "bench-auth@example.com").await?;
        let token = login["access_token"].as_str().context("token")?.to_string();
        let claims = app.jwt.verify(&token).map_err(|e| anyhow::anyhow!("{e}"))?;

        // Warm-up.
        for _ in 0..200 {
            http.get(format!("{base}/api/me"))
                .bearer_auth(&token)
                .send()
                .await?;
        }

        println!("per request, one client, real HTTP on loopback");
        let health = report(
            "GET /health (no auth, no rate limit)",
            time(n, || async {
                Ok(http
                    .get(format!("{base}/health"))
                    .send()
                    .await?
                    .bytes()
                    .await?)
            })
            .await?,
        );
        let me = report(
            "GET /api/me (auth + rate limit + 1 SELECT)",
            time(n, || async {
                let r = http
                    .get(format!("{base}/api/me"))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "{}", r.status());
                Ok(r.bytes().await?)
            })
            .await?,
        );
        let select = report(
            "  the handler's SELECT alone",
            time(n, || async {
                Ok(arosaje::api::me::load_user(&app.pool, claims.sub).await?)
            })
            .await?,
        );
        let jwt = report(
            "  JWT verification alone",
            time(n, || async {
                app.jwt.verify(&token).map_err(|e| anyhow::anyhow!("{e}"))
            })
            .await?,
        );
        let session = report(
            "  session check in Redis alone (HGET + parse)",
            time(n, || async {
                Ok(app.sessions.get(claims.sub, claims.sid).await?.is_some())
            })
            .await?,
        );
        let quota = Quota {
            limit: 1_000_000,
            window: Duration::from_secs(60),
        };
        let limit = report(
            "  rate-limit check in Redis alone (GCRA script)",
            time(n, || async {
                Ok(app.rate_limiter.check("rate:bench:/api/me", quota).await?)
            })
            .await?,
        );
        println!(
            "auth + rate-limit overhead per request: ~{} at p50 (GET /api/me - /health - SELECT; \
             components: JWT {} + session {} + rate limit {})",
            ms(me.saturating_sub(health).saturating_sub(select)),
            ms(jwt),
            ms(session),
            ms(limit)
        );

        println!("\nlogin (argon2id, m = 19 MiB, t = 2, p = 1)");
        let logins = n.min(50);
        report(
            "POST /api/auth/login",
            time(logins, || async {
                let r = http
                    .post(format!("{base}/api/auth/login"))
                    .json(&json!({"email": "bench-auth@example.com", "password": common::PASSWORD}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "{}", r.status());
                Ok(r.bytes().await?)
            })
            .await?,
        );
        // With TOTP: each code works once, so each account logs in once with the code of the
        // next time step (the one confirming enrolment used the current one).
        let accounts = n.clamp(10, 40);
        let (mut plain, mut with_totp) = (Vec::new(), Vec::new());
        for i in 0..accounts {
            let email = format!("bench-totp-{i}@example.com");
            let login = common::account(&http, &base, &email).await?;
            let token = login["access_token"].as_str().context("token")?.to_string();
            let started = Instant::now();
            let r = http
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"email": email, "password": common::PASSWORD}))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "{}", r.status());
            r.bytes().await?;
            plain.push(started.elapsed());
            let enrolment: serde_json::Value = http
                .post(format!("{base}/api/me/mfa/totp"))
                .bearer_auth(&token)
                .json(&json!({"current_password": common::PASSWORD}))
                .send()
                .await?
                .json()
                .await?;
            let secret = enrolment["secret"].as_str().context("secret")?.to_string();
            let code = |steps: i64| -> anyhow::Result<String> {
                let bytes = totp_rs::Secret::Encoded(secret.clone())
                    .to_bytes()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let totp = totp_rs::TOTP::new_unchecked(
                    totp_rs::Algorithm::SHA1,
                    6,
                    1,
                    30,
                    bytes,
                    None,
                    String::new(),
                );
                Ok(totp.generate((chrono::Utc::now().timestamp() + steps * 30) as u64))
            };
            let confirmed = http
                .post(format!("{base}/api/me/mfa/totp/confirm"))
                .bearer_auth(&token)
                .json(&json!({"code": code(0)?}))
                .send()
                .await?;
            anyhow::ensure!(
                confirmed.status().is_success(),
                "confirm: {}",
                confirmed.status()
            );
            let started = Instant::now();
            let r = http
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"email": email, "password": common::PASSWORD, "totp_code": code(1)?}))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "totp login: {}", r.status());
            r.bytes().await?;
            with_totp.push(started.elapsed());
        }
        report("POST /api/auth/login, no TOTP (same accounts)", plain);
        report("POST /api/auth/login with a TOTP code", with_totp);
        report(
            "  argon2id hash alone",
            time(logins, || async {
                let password =
                    Password::parse(common::PASSWORD, &[]).map_err(anyhow::Error::msg)?;
                arosaje::identity::passwords::hash_password(password).await
            })
            .await?,
        );
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
