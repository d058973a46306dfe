//! Sittings over the real HTTP API: photo uploads (3 MB JPEG) with the process's peak memory,
//! the sitting lifecycle as commands/s, and search near a place among 100,000 open sittings,
//! cold (query-cache misses) and cached.
//!
//! `cargo bench --bench sittings` (PostgreSQL and Redis must listen: `./scripts/services.sh`).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_SECS` (per timed phase, default 5),
//! `BENCH_OPEN_SITTINGS` (default 100000), `BENCH_SITTERS` (sitter accounts for the lifecycle,
//! default 160), `BENCH_QUERIES` (searches per phase, default 400).

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// `VmRSS` and `VmHWM` (peak) of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A camera-like JPEG of about 3 MB (4000 x 3000, quality 90): smooth shapes with grain, the
/// grain tuned until the file weighs 2.7 to 3.3 MB.
fn photo() -> Vec<u8> {
    let encode = |grain: u32| {
        let image = image::RgbImage::from_fn(4000, 3000, |x, y| {
            let n = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503);
            let noise = (n >> 7) % (grain + 1);
            image::Rgb([
                ((x / 16 + y / 24) % 256 + noise) as u8,
                ((x / 20) % 256 + noise / 2) as u8,
                ((y / 12) % 256 + noise) as u8,
            ])
        });
        let mut out = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .expect("jpeg");
        out.into_inner()
    };
    let (mut low, mut high) = (0u32, 64u32);
    let mut best = encode(high);
    for _ in 0..7 {
        let grain = (low + high) / 2;
        let jpeg = encode(grain);
        let size = jpeg.len();
        best = jpeg;
        if size > 3_300_000 {
            high = grain;
        } else if size < 2_700_000 {
            low = grain;
        } else {
            break;
        }
    }
    best
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let reply = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {body}");
    Ok(body)
}

async fn plant(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<String> {
    let body = post(
        http,
        format!("{base}/api/plants"),
        token,
        json!({"name": "Bench fern"}),
    )
    .await?;
    Ok(body["id"].as_str().context("plant id")?.to_string())
}

async fn uploads(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let jpeg = Arc::new(photo());
    let plant_id = plant(http, base, token).await?;
    // Peak memory from here on (Linux: "5" resets VmHWM), not the making of the test photo.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_before, _) = memory();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, jpeg, done, stop) = (http.clone(), jpeg.clone(), done.clone(), stop.clone());
        let url = format!("{base}/api/plants/{plant_id}/photos");
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let part = reqwest::multipart::Part::bytes(jpeg.to_vec())
                    .file_name("IMG.jpg")
                    .mime_str("image/jpeg")
                    .expect("mime");
                let form = reqwest::multipart::Form::new().part("file", part);
                let sent = Instant::now();
                match http
                    .post(&url)
                    .bearer_auth(&token)
                    .multipart(form)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => eprintln!("upload: {}", r.status()),
                    Err(err) => eprintln!("upload: {err}"),
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    latencies.sort();
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let (_, peak) = memory();
    println!(
        "photo upload, {:.1} MB JPEG (4000 x 3000), {clients} clients: {:.2} uploads/s ({:.1} MB/s), \
         p50 {} p99 {}; process RSS before {rss_before:.0} MiB, peak {peak:.0} MiB",
        jpeg.len() as f64 / 1e6,
        n as f64 / elapsed,
        n as f64 * jpeg.len() as f64 / 1e6 / elapsed,
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
    );
    Ok(())
}

/// One sitting from request to both reviews: 8 commands.
async fn lifecycle(
    http: &reqwest::Client,
    base: &str,
    owner: &str,
    plant_id: &str,
    sitter: &(String, String),
) -> anyhow::Result<Vec<Duration>> {
    let today = chrono::Utc::now().date_naive().to_string();
    let mut latencies = Vec::with_capacity(8);
    let mut timed = |started: Instant| latencies.push(started.elapsed());
    let t = Instant::now();
    let sitting = post(
        http,
        format!("{base}/api/sittings"),
        owner,
        json!({
        "plant_ids": [plant_id], "starts_on": today, "ends_on": today,
        "location": {"lat": 45.75, "lon": 4.85, "city": "Lyon"}}),
    )
    .await?;
    timed(t);
    let id = sitting["id"].as_str().context("sitting id")?.to_string();
    let url = |action: &str| format!("{base}/api/sittings/{id}/{action}");
    let (sitter_id, sitter_token) = sitter;
    let steps: [(&str, &str, Value); 7] = [
        (
            "applications",
            sitter_token,
            json!({"message": "Happy to help"}),
        ),
        ("accept", owner, json!({"sitter_id": sitter_id})),
        ("start", sitter_token, json!({})),
        (
            "reports",
            sitter_token,
            json!({"plant_id": plant_id, "note": "Watered"}),
        ),
        ("complete", owner, json!({})),
        ("reviews", owner, json!({"rating": 5})),
        ("reviews", sitter_token, json!({"rating": 4})),
    ];
    for (action, token, body) in steps {
        let t = Instant::now();
        post(http, url(action), token, body).await?;
        timed(t);
    }
    Ok(latencies)
}

async fn lifecycles(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    sitters: Vec<(String, String)>,
    duration: Duration,
) -> anyhow::Result<()> {
    let mut owners = Vec::new();
    for i in 0..clients {
        let login = common::account(http, base, &format!("owner{i}@bench.example")).await?;
        let token = login["access_token"].as_str().context("token")?.to_string();
        let plant_id = plant(http, base, &token).await?;
        owners.push((token, plant_id));
    }
    // Each sitter sits once: a sitter cannot be booked twice for the same day.
    let sitters = Arc::new(std::sync::Mutex::new(sitters));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (owner, plant_id) in owners {
        let (http, base, sitters, stop) = (
            http.clone(),
            base.to_string(),
            sitters.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let Some(sitter) = sitters.lock().ok().and_then(|mut s| s.pop()) else {
                    break;
                };
                match lifecycle(&http, &base, &owner, &plant_id, &sitter).await {
                    Ok(l) => latencies.extend(l),
                    Err(err) => {
                        errors += 1;
                        eprintln!("lifecycle: {err:#}");
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let waiting = async {
        let mut all = Vec::new();
        let mut errors = 0;
        for task in tasks.iter_mut() {
            if let Ok((l, e)) = task.await {
                all.extend(l);
                errors += e;
            }
        }
        (all, errors)
    };
    tokio::pin!(waiting);
    let (mut latencies, errors) = tokio::select! {
        done = &mut waiting => done,
        _ = &mut deadline => { stop.store(true, Ordering::Relaxed); waiting.await }
    };
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "sitting lifecycle (request, apply, accept, start, report, complete, 2 reviews), {clients} clients: \
         {:.0} commands/s ({:.1} sittings/s), p50 {} p99 {}, {errors} errors",
        latencies.len() as f64 / elapsed,
        latencies.len() as f64 / 8.0 / elapsed,
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
    );
    Ok(())
}

/// Open sittings written straight into the read model (the search reads nothing else), spread
/// over mainland France.
async fn seed_open_sittings(
    pool: &sqlx::PgPool,
    owner: uuid::Uuid,
    n: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    sqlx::query(
        "INSERT INTO sittings (id, owner_id, status, starts_on, ends_on, lat, lon, approx_lat, approx_lon, \
                               city, created_at, updated_at, version) \
         SELECT gen_random_uuid(), $1, 'open', current_date + (i % 60)::int, current_date + (i % 60)::int + 7, \
                lat, lon, round(lat::numeric, 2)::float8, round(lon::numeric, 2)::float8, 'Bench', now(), now(), 1 \
           FROM (SELECT i, 43.0 + random() * 6.0 AS lat, -1.0 + random() * 8.0 AS lon \
                   FROM generate_series(1, $2) AS i) points",
    )
    .bind(owner)
    .bind(n as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE sittings").execute(pool).await?;
    println!(
        "seeded {n} open sittings in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn searches(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    queries: usize,
    repeat: bool,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::with_capacity(queries);
    let mut found = 0;
    for i in 0..queries {
        // Cold: a new place each time (a query-cache miss); cached: the same few places.
        let k = if repeat { i % 8 } else { i + 1000 };
        let lat = 43.5 + (k as f64 * 0.6180339).fract() * 5.0;
        let lon = -0.5 + (k as f64 * 0.4142135).fract() * 7.0;
        let url = format!("{base}/api/sittings?near={lat:.5},{lon:.5}&radius_km=10&limit=20");
        let t = Instant::now();
        let reply: Value = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        latencies.push(t.elapsed());
        found += reply["items"].as_array().map(Vec::len).unwrap_or(0);
    }
    latencies.sort();
    Ok((latencies, found))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let duration = Duration::from_secs(env("BENCH_SECS", 5) as u64);
    let open = env("BENCH_OPEN_SITTINGS", 100_000);
    let sitter_count = env("BENCH_SITTERS", 160);
    let queries = env("BENCH_QUERIES", 400);
    let db = common::BenchDb::create().await?;
    let result = async {
        let mut config = common::config(&db);
        config.require_email_verification = false;
        config.storage_dir = std::env::temp_dir()
            .join(format!("arosaje-bench-photos-{}", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let storage = config.storage_dir.clone();
        let (_app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let owner = common::account(&http, &base, "photographer@bench.example").await?;
        let token = owner["access_token"].as_str().context("token")?.to_string();

        uploads(&http, &base, &token, 2, duration).await?;
        let _ = std::fs::remove_dir_all(&storage);

        let mut sitters = Vec::new();
        for i in 0..sitter_count {
            let login = common::account(&http, &base, &format!("sitter{i}@bench.example")).await?;
            sitters.push((
                login["user"]["id"].as_str().context("id")?.to_string(),
                login["access_token"].as_str().context("token")?.to_string(),
            ));
        }
        lifecycles(&http, &base, 8, sitters, duration).await?;

        let owner_id: uuid::Uuid = owner["user"]["id"].as_str().context("id")?.parse()?;
        seed_open_sittings(&pool, owner_id, open).await?;
        // Query-cache keys name the read model's version: bump it once so no earlier answer
        // counts, then measure.
        sqlx::query("UPDATE read_model_versions SET version = version + 1 WHERE name = 'sittings'")
            .execute(&pool)
            .await?;
        for (label, repeat) in [("cold (query-cache misses)", false), ("cached (query-cache hits)", true)] {
            if repeat {
                searches(&http, &base, &token, 8, true).await?;
            }
            let (latencies, found) = searches(&http, &base, &token, queries, repeat).await?;
            println!(
                "search near a place, radius 10 km, 20 per page, among {open} open sittings, {label}: \
                 p50 {} p99 {} ({:.1} results a page)",
                ms(common::percentile(&latencies, 50.0)),
                ms(common::percentile(&latencies, 99.0)),
                found as f64 / queries as f64,
            );
        }
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
