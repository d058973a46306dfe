//! A day's mixed workload over the real HTTP API and real WebSockets, against 1, 2 and 4
//! `arosaje serve` processes sharing one database and one Redis, at 32 and 256 connections.
//!
//! `cargo bench --bench mix [-- --quick | --secs 20 | --connections 32,256 | --instances 1,2,4]`
//! (PostgreSQL and Redis must listen: `./scripts/services.sh`). On a fresh database it runs
//! `arosaje migrate`, `arosaje seed load` (the background population) and `arosaje admin
//! create`, then makes the active people through the API (users with a plant each and a
//! conversation in pairs, botanists and an auditor, given their roles by the admin). For each
//! instance count it starts that many `arosaje serve` processes (distinct ports, the database
//! connections split among them so the total stays the same), and for each connection count it
//! warms up, then measures: per route req/s, p50 and p99; errors by status; projection lag (a
//! message's 2xx to its `message.created` frame on the other participant's socket; a new
//! plant's 2xx to its first read on another instance; the worst checkpoint behind the log's
//! head); each server's peak RSS (`VmRSS`). Then the curve: req/s and p99 per instance count.
//! Requests go round-robin over the instances. Settings: `BENCH_DATABASE_URL`, `REDIS_URL`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::{ms, percentile};

#[derive(Parser, Debug)]
struct Options {
    /// Seconds measured per point.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// Seconds of warm-up (not measured) before each point.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    #[arg(long, value_delimiter = ',', default_value = "32,256")]
    connections: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    instances: Vec<usize>,
    /// Active users (each owns a plant and talks with one other); connections share them.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Size of the `seed load` population (1.0: 5,000 users, 10,000 plants, 5,000 sittings...).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Database connections of all instances together (PostgreSQL allows 100 on the shared box).
    #[arg(long, default_value_t = 48)]
    db_connections: u32,
    /// 5 s points, 1 s warm-up, a tenth of the population.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The mix, in percent of requests. A day on a plant-sitting site is mostly people looking:
/// searching for sittings near them (30) and reading their own things (35: profile, plants, a
/// sitting, a conversation). Writes are rarer and follow the product's funnel: plants are
/// registered once and now and then (8), a sitting takes three requests from two people
/// (request, apply, accept: 7), and people talk while they arrange it (12 sent, each delivered
/// over WebSocket). Botanists are few (advice 5, reads over writes), auditors fewer (3).
const MIX: [(Op, u32); 12] = [
    (Op::Browse, 30),
    (Op::Me, 8),
    (Op::Plants, 8),
    (Op::Plant, 5),
    (Op::Sitting, 7),
    (Op::Messages, 7),
    (Op::CreatePlant, 8),
    (Op::SittingFlow, 7),
    (Op::SendMessage, 12),
    (Op::AdviceRead, 3),
    (Op::AdviceWrite, 2),
    (Op::Audit, 3),
];

#[derive(Clone, Copy, Debug)]
enum Op {
    Browse,
    Me,
    Plants,
    Plant,
    Sitting,
    Messages,
    CreatePlant,
    SittingFlow,
    SendMessage,
    AdviceRead,
    AdviceWrite,
    Audit,
}

const CITIES: [(&str, f64, f64); 4] = [
    ("Paris", 48.8566, 2.3522),
    ("Lyon", 45.7640, 4.8357),
    ("Bordeaux", 44.8378, -0.5792),
    ("Lille", 50.6292, 3.0573),
];

/// Runs the `arosaje` binary with the run's settings.
struct Arosaje {
    vars: Vec<(&'static str, String)>,
    dir: PathBuf,
}

impl Arosaje {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_arosaje"));
        command
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (*k, v)));
        command
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(
            self.dir
                .join(format!("{}.log", args[..args.len().min(2)].join("-"))),
        )?;
        let status = self
            .command(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "arosaje {args:?}: {status}");
        Ok(())
    }
}

struct Server {
    child: tokio::process::Child,
    pid: u32,
    base: String,
}

async fn start(arosaje: &Arosaje, index: usize, pool: u32) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(arosaje.dir.join(format!("serve-{index}.log")))?;
    let child = arosaje
        .command(&["serve"])
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_MAX_CONNECTIONS", pool.to_string())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("serve exited")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(Server { child, pid, base });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("serve {index} did not answer /health within 120 s")
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct User {
    id: String,
    token: String,
    plant: String,
    conversation: String,
}

/// The people who act during the measurement.
struct World {
    users: Vec<User>,
    botanists: Vec<String>,
    auditor: String,
    open_sittings: Vec<String>,
}

/// The JSON of a 2xx body (`Null` when there is none).
fn json_of(body: Option<bytes::Bytes>) -> Value {
    body.and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn text(v: &Value, key: &str) -> anyhow::Result<String> {
    Ok(v[key]
        .as_str()
        .with_context(|| format!("{key} in {v}"))?
        .to_string())
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let reply = http.post(url).bearer_auth(token).json(&body).send().await?;
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {body}");
    Ok(body)
}

async fn make_world(http: &reqwest::Client, base: &str, users: usize) -> anyhow::Result<World> {
    let logins: Vec<Value> = futures::stream::iter(0..users + 5)
        .map(|i| async move { common::account(http, base, &format!("mix{i}@bench.example")).await })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let (people, staff) = logins.split_at(users);
    let mut world = World {
        users: Vec::new(),
        botanists: Vec::new(),
        auditor: String::new(),
        open_sittings: Vec::new(),
    };
    for login in people {
        let token = text(login, "access_token")?;
        let plant = post(
            http,
            &format!("{base}/api/plants"),
            &token,
            common::plant_body(0),
        )
        .await?;
        world.users.push(User {
            id: text(&login["user"], "id")?,
            token,
            plant: text(&plant, "id")?,
            conversation: String::new(),
        });
    }
    for pair in 0..users / 2 {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let talk = post(
            http,
            &format!("{base}/api/conversations"),
            &world.users[a].token,
            json!({"participant_ids": [world.users[b].id]}),
        )
        .await?;
        let id = text(&talk, "id")?;
        world.users[a].conversation = id.clone();
        world.users[b].conversation = id;
    }
    let admin = common::login(http, base, "admin@bench.example").await?;
    let admin = text(&admin, "access_token")?;
    for (i, login) in staff.iter().enumerate() {
        let role = if i == 0 { "AUDITOR" } else { "BOTANIST" };
        let id = text(&login["user"], "id")?;
        let reply = http
            .put(format!("{base}/api/admin/users/{id}/role"))
            .bearer_auth(&admin)
            .json(&json!({"role": role}))
            .send()
            .await?;
        anyhow::ensure!(reply.status().is_success(), "role: {}", reply.status());
        let token = text(login, "access_token")?;
        match i {
            0 => world.auditor = token,
            _ => world.botanists.push(token),
        }
    }
    let page: Value = http
        .get(format!("{base}/api/sittings?limit=100"))
        .bearer_auth(&world.users[0].token)
        .send()
        .await?
        .json()
        .await?;
    world.open_sittings = page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!world.open_sittings.is_empty(), "no open sitting to read");
    Ok(world)
}

/// A sitting on its way from request to accepted sitter.
enum Flow {
    Requested {
        id: String,
        owner: usize,
    },
    Applied {
        id: String,
        owner: usize,
        sitter: usize,
    },
}

/// What every client shares during a point.
struct Shared {
    world: World,
    /// The instances' base URLs (they change between instance counts).
    bases: std::sync::RwLock<Vec<String>>,
    next_instance: AtomicUsize,
    flows: Mutex<VecDeque<Flow>>,
    /// Sittings get one day each, all different, so no sitter is ever booked twice on a day.
    next_day: AtomicU64,
    next_message: AtomicU64,
    /// Message number -> when its `message.created` frame reached the other participant.
    frames: Mutex<HashMap<u64, Instant>>,
    stop: AtomicBool,
}

impl Shared {
    /// The next instance, round-robin.
    fn base(&self) -> String {
        let i = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let bases = self.bases.read();
        let base = bases.ok().and_then(|b| b.get(i % b.len().max(1)).cloned());
        base.unwrap_or_default()
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    /// (route, status) -> count of answers neither 200 nor 201; status 0 is a transport error.
    errors: BTreeMap<(&'static str, u16), usize>,
    /// Message number -> when its POST answered 2xx.
    sent: Vec<(u64, Instant)>,
    /// A new plant's 2xx to its first read on another instance.
    visible: Vec<Duration>,
    never_visible: usize,
}

impl Tally {
    /// Sends, times until the whole body is in, records; the body of a 2xx.
    async fn call(
        &mut self,
        route: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Option<bytes::Bytes> {
        let sent = Instant::now();
        let (status, body) = match request.send().await {
            Ok(r) => {
                let status = r.status();
                (status.as_u16(), r.bytes().await.ok())
            }
            Err(_) => (0, None),
        };
        match body {
            Some(body) if (200..300).contains(&status) => {
                // 202: done, but answered before the read models caught up (the bounded wait).
                if status == 202 {
                    *self.errors.entry((route, status)).or_default() += 1;
                }
                self.latencies
                    .entry(route)
                    .or_default()
                    .push(sent.elapsed());
                Some(body)
            }
            _ => {
                *self.errors.entry((route, status)).or_default() += 1;
                None
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (route, l) in other.latencies {
            self.latencies.entry(route).or_default().extend(l);
        }
        for (key, n) in other.errors {
            *self.errors.entry(key).or_default() += n;
        }
        self.sent.extend(other.sent);
        self.visible.extend(other.visible);
        self.never_visible += other.never_visible;
    }
}

async fn client(shared: Arc<Shared>, http: reqwest::Client, c: usize) -> Tally {
    let mut tally = Tally::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
    let w = &shared.world;
    let me = &w.users[c % w.users.len()];
    while !shared.stop.load(Ordering::Relaxed) {
        let mut roll = rng.gen_range(0..100);
        let op = MIX
            .iter()
            .find(|(_, weight)| {
                let hit = roll < *weight;
                roll = roll.saturating_sub(*weight);
                hit
            })
            .map_or(Op::Me, |(op, _)| *op);
        let base = shared.base();
        match op {
            Op::Browse => {
                let (_, lat, lon) = CITIES[rng.gen_range(0..CITIES.len())];
                let (lat, lon) = (
                    lat + rng.gen_range(-0.1..0.1),
                    lon + rng.gen_range(-0.1..0.1),
                );
                let url = format!("{base}/api/sittings?near={lat:.2},{lon:.2}&radius_km=10");
                tally
                    .call(
                        "GET /api/sittings?near=",
                        http.get(url).bearer_auth(&me.token),
                    )
                    .await;
            }
            Op::Me => {
                let r = http.get(format!("{base}/api/me")).bearer_auth(&me.token);
                tally.call("GET /api/me", r).await;
            }
            Op::Plants => {
                let r = http
                    .get(format!("{base}/api/plants"))
                    .bearer_auth(&me.token);
                tally.call("GET /api/plants", r).await;
            }
            Op::Plant => {
                let r = http
                    .get(format!("{base}/api/plants/{}", me.plant))
                    .bearer_auth(&me.token);
                tally.call("GET /api/plants/{id}", r).await;
            }
            Op::Sitting => {
                let id = &w.open_sittings[rng.gen_range(0..w.open_sittings.len())];
                let r = http
                    .get(format!("{base}/api/sittings/{id}"))
                    .bearer_auth(&me.token);
                tally.call("GET /api/sittings/{id}", r).await;
            }
            Op::Messages => {
                let url = format!("{base}/api/conversations/{}/messages", me.conversation);
                let r = http.get(url).bearer_auth(&me.token);
                tally.call("GET /api/conversations/{id}/messages", r).await;
            }
            Op::CreatePlant => {
                let r = http
                    .post(format!("{base}/api/plants"))
                    .bearer_auth(&me.token)
                    .json(&common::plant_body(c));
                let created = json_of(tally.call("POST /api/plants", r).await);
                let done = Instant::now();
                // One in four: how soon another instance shows it.
                if let Some(id) = created["id"].as_str() {
                    if rng.gen_range(0..4) == 0 {
                        let url = format!("{}/api/plants/{id}", shared.base());
                        let mut seen = false;
                        while done.elapsed() < Duration::from_secs(2) && !seen {
                            let r = http.get(&url).bearer_auth(&me.token).send().await;
                            seen = r.is_ok_and(|r| r.status().is_success());
                        }
                        if seen {
                            tally.visible.push(done.elapsed());
                        } else {
                            tally.never_visible += 1;
                        }
                    }
                }
            }
            Op::SittingFlow => sitting_step(&shared, &http, &base, &mut tally, &mut rng, c).await,
            Op::SendMessage => {
                let n = shared.next_message.fetch_add(1, Ordering::Relaxed);
                let url = format!("{base}/api/conversations/{}/messages", me.conversation);
                let r = http
                    .post(url)
                    .bearer_auth(&me.token)
                    .json(&json!({"body": format!("mix {n}")}));
                if tally
                    .call("POST /api/conversations/{id}/messages", r)
                    .await
                    .is_some()
                {
                    tally.sent.push((n, Instant::now()));
                }
            }
            Op::AdviceRead => {
                let r = http
                    .get(format!("{base}/api/plants/{}/advice", me.plant))
                    .bearer_auth(&me.token);
                tally.call("GET /api/plants/{id}/advice", r).await;
            }
            Op::AdviceWrite => {
                let plant = &w.users[rng.gen_range(0..w.users.len())].plant;
                let botanist = &w.botanists[c % w.botanists.len()];
                let body = json!({"body": "Moins d'eau en hiver : laisser sécher la terre entre deux arrosages."});
                let r = http
                    .post(format!("{base}/api/plants/{plant}/advice"))
                    .bearer_auth(botanist)
                    .json(&body);
                tally.call("POST /api/plants/{id}/advice", r).await;
            }
            Op::Audit => {
                let query = match rng.gen_range(0..3) {
                    0 => "limit=50".to_string(),
                    1 => format!("aggregate_type=Plant&aggregate_id={}", me.plant),
                    _ => format!("actor_id={}&limit=50", me.id),
                };
                let r = http
                    .get(format!("{base}/api/audit/events?{query}"))
                    .bearer_auth(&w.auditor);
                tally.call("GET /api/audit/events", r).await;
            }
        }
    }
    tally
}

/// The next step of a sitting in the pipeline (request, apply, accept), or a new one.
async fn sitting_step(
    shared: &Shared,
    http: &reqwest::Client,
    base: &str,
    tally: &mut Tally,
    rng: &mut rand::rngs::StdRng,
    c: usize,
) {
    let users = &shared.world.users;
    let next = shared.flows.lock().ok().and_then(|mut f| f.pop_front());
    match next {
        Some(Flow::Requested { id, owner }) => {
            let sitter = (owner + rng.gen_range(1..users.len())) % users.len();
            let r = http
                .post(format!("{base}/api/sittings/{id}/applications"))
                .bearer_auth(&users[sitter].token)
                .json(&json!({"message": "Je peux passer tous les deux jours."}));
            if tally
                .call("POST /api/sittings/{id}/applications", r)
                .await
                .is_some()
            {
                if let Ok(mut f) = shared.flows.lock() {
                    f.push_back(Flow::Applied { id, owner, sitter });
                }
            }
        }
        Some(Flow::Applied { id, owner, sitter }) => {
            let r = http
                .post(format!("{base}/api/sittings/{id}/accept"))
                .bearer_auth(&users[owner].token)
                .json(&json!({"sitter_id": users[sitter].id}));
            tally.call("POST /api/sittings/{id}/accept", r).await;
        }
        None => {
            let owner = c % users.len();
            let day = chrono::Utc::now().date_naive()
                + chrono::Days::new(1 + shared.next_day.fetch_add(1, Ordering::Relaxed));
            let (city, lat, lon) = CITIES[c % CITIES.len()];
            let body = json!({
                "plant_ids": [users[owner].plant], "starts_on": day, "ends_on": day,
                "location": {"lat": lat + rng.gen_range(-0.05..0.05),
                             "lon": lon + rng.gen_range(-0.05..0.05), "city": city},
                "instructions": "Arroser le lundi.",
            });
            let r = http
                .post(format!("{base}/api/sittings"))
                .bearer_auth(&users[owner].token)
                .json(&body);
            let sitting = json_of(tally.call("POST /api/sittings", r).await);
            if let Some(id) = sitting["id"].as_str() {
                if let Ok(mut f) = shared.flows.lock() {
                    f.push_back(Flow::Requested {
                        id: id.to_string(),
                        owner,
                    });
                }
            }
        }
    }
}

/// One socket per user, on the instances in turn; frames of the others' messages are noted.
async fn open_sockets(shared: &Arc<Shared>) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut readers = Vec::new();
    for user in &shared.world.users {
        let base = shared.base();
        let mut request =
            format!("{}/ws", base.replace("http://", "ws://")).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", user.token).parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let (shared, me) = (shared.clone(), user.id.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let at = Instant::now();
                let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
                    continue;
                };
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let data = &frame["data"];
                if frame["type"] != "message.created" || data["sender_id"].as_str() == Some(&me) {
                    continue;
                }
                let n = data["body"].as_str().and_then(|b| b.strip_prefix("mix "));
                if let (Some(n), Ok(mut frames)) =
                    (n.and_then(|n| n.parse().ok()), shared.frames.lock())
                {
                    frames.entry(n).or_insert(at);
                }
            }
        }));
    }
    Ok(readers)
}

/// Runs the mix with `connections` clients for `duration`, sampling RSS and checkpoint lag.
async fn run_mix(
    shared: &Arc<Shared>,
    http: &reqwest::Client,
    pool: &sqlx::PgPool,
    pids: &[u32],
    connections: usize,
    duration: Duration,
) -> (Tally, Duration, Vec<f64>, (i64, String)) {
    shared.stop.store(false, Ordering::Relaxed);
    let started = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|c| tokio::spawn(client(shared.clone(), http.clone(), c)))
        .collect();
    let mut peak = vec![0.0f64; pids.len()];
    let mut behind = (0i64, String::new());
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (p, pid) in peak.iter_mut().zip(pids) {
            *p = p.max(rss_mib(*pid));
        }
        let worst: Option<(i64, String)> = sqlx::query_as(
            "SELECT (SELECT COALESCE(max(global_position), 0) FROM events) - last_position, name \
               FROM projection_checkpoints WHERE name = ANY($1) ORDER BY 1 DESC LIMIT 1",
        )
        .bind(
            arosaje::seed::READ_MODELS
                .iter()
                .chain(&["fanout"])
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_optional(pool)
        .await
        .ok()
        .flatten();
        if let Some(worst) = worst.filter(|w| w.0 > behind.0) {
            behind = worst;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for client in clients {
        if let Ok(t) = client.await {
            tally.merge(t);
        }
    }
    (tally, started.elapsed(), peak, behind)
}

/// What the curve keeps of a point.
struct Point {
    instances: usize,
    connections: usize,
    per_second: f64,
    p99: Duration,
}

fn report(tally: &mut Tally, elapsed: Duration, shared: &Shared) -> (f64, Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "  {:<40} {:>7} {:>8} {:>11} {:>11}",
        "route", "share", "req/s", "p50", "p99"
    );
    let total: usize = tally.latencies.values().map(Vec::len).sum();
    let mut all = Vec::with_capacity(total);
    for (route, l) in tally.latencies.iter_mut() {
        l.sort_unstable();
        all.extend_from_slice(l);
        println!(
            "  {route:<40} {:>6.1}% {:>8.0} {:>11} {:>11}",
            100.0 * l.len() as f64 / total.max(1) as f64,
            l.len() as f64 / secs,
            ms(percentile(l, 50.0)),
            ms(percentile(l, 99.0)),
        );
    }
    all.sort_unstable();
    let p99 = percentile(&all, 99.0);
    println!(
        "  {:<40} {:>7} {:>8.0} {:>11} {:>11}",
        "all (2xx)",
        "",
        total as f64 / secs,
        ms(percentile(&all, 50.0)),
        ms(p99)
    );
    let errors: Vec<String> = tally
        .errors
        .iter()
        .map(|((route, status), n)| format!("{route} {status}: {n}"))
        .collect();
    println!(
        "  answers neither 200 nor 201 (202: read models not caught up in time): {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    );
    let frames = shared.frames.lock().map(|f| f.clone()).unwrap_or_default();
    let mut lags: Vec<Duration> = tally
        .sent
        .iter()
        .filter_map(|(n, ok)| frames.get(n).map(|at| at.saturating_duration_since(*ok)))
        .collect();
    lags.sort_unstable();
    tally.visible.sort_unstable();
    println!(
        "  lag: message 2xx -> frame p50 {} p99 {} ({} of {} delivered); new plant 2xx -> read \
         on another instance p50 {} p99 {} ({} never within 2 s)",
        ms(percentile(&lags, 50.0)),
        ms(percentile(&lags, 99.0)),
        lags.len(),
        tally.sent.len(),
        ms(percentile(&tally.visible, 50.0)),
        ms(percentile(&tally.visible, 99.0)),
        tally.never_visible,
    );
    (total as f64 / secs, p99)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut options = Options::parse();
    if options.quick {
        options.secs = 5;
        options.warmup = 1;
        options.scale /= 10.0;
    }
    options.users = options.users.max(2).next_multiple_of(2);
    let db = common::BenchDb::create_tagged("_mix").await?;
    let result = run(&options, &db).await;
    db.drop_database().await?;
    result
}

async fn run(options: &Options, db: &common::BenchDb) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("arosaje-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secret = arosaje::config::random_secret;
    let arosaje = Arosaje {
        vars: vec![
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis),
            ("JWT_SECRET", secret()),
            ("EMAIL_PEPPER", secret()),
            ("STORAGE_DIR", dir.join("photos").display().to_string()),
            ("RATE_LIMIT_API", "100000000".into()),
            ("RATE_LIMIT_AUTH", "1000000".into()),
            ("RATE_LIMIT_AUTH_PER_EMAIL", "1000000".into()),
            ("REQUIRE_EMAIL_VERIFICATION", "false".into()),
            ("ADMIN_MFA", "optional".into()),
            ("ADMIN_PASSWORD", common::PASSWORD.into()),
            ("ACCESS_TOKEN_TTL_SECS", "7200".into()),
            ("PRIVILEGED_SESSION_IDLE_SECS", "7200".into()),
            ("RUST_LOG", "warn".into()),
        ],
        dir: dir.clone(),
    };
    println!(
        "logs in {}; load average at start: {}",
        dir.display(),
        load_average()
    );
    arosaje.run(&["migrate"]).await?;
    let started = Instant::now();
    let mut load: Vec<String> = ["seed", "load", "--applications", "2"]
        .map(String::from)
        .into();
    for (flag, n) in [
        ("--users", 5_000.0),
        ("--plants", 10_000.0),
        ("--sittings", 5_000.0),
        ("--botanists", 50.0),
        ("--advice", 2_000.0),
        ("--conversations", 500.0),
        ("--messages", 20_000.0),
        ("--access", 500.0),
    ] {
        load.push(flag.into());
        load.push(((n * options.scale).round() as u64).max(10).to_string());
    }
    arosaje
        .run(&load.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    arosaje
        .run(&["admin", "create", "--email", "admin@bench.example"])
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    println!(
        "seed load: {events} events appended and projected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let mut setup = start(&arosaje, 0, options.db_connections).await?;
    let world = make_world(&http, &setup.base, options.users).await?;
    let _ = setup.child.kill().await;
    println!(
        "world: {} users (a plant each, conversations in pairs), {} botanists, 1 auditor; {} open \
         sittings to read",
        world.users.len(),
        world.botanists.len(),
        world.open_sittings.len()
    );
    let shared = Arc::new(Shared {
        world,
        bases: Default::default(),
        next_instance: AtomicUsize::new(0),
        flows: Mutex::new(VecDeque::new()),
        next_day: AtomicU64::new(0),
        next_message: AtomicU64::new(0),
        frames: Mutex::new(HashMap::new()),
        stop: AtomicBool::new(false),
    });
    let mut points = Vec::new();
    for &instances in &options.instances {
        let per_instance = (options.db_connections / instances as u32).max(2);
        let mut servers = Vec::new();
        for i in 0..instances {
            servers.push(start(&arosaje, i, per_instance).await?);
        }
        let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
        if let Ok(mut bases) = shared.bases.write() {
            *bases = servers.iter().map(|s| s.base.clone()).collect();
        }
        for &connections in &options.connections {
            let readers = open_sockets(&shared).await?;
            let warmup = Duration::from_secs(options.warmup);
            run_mix(&shared, &http, &pool, &pids, connections, warmup).await;
            if let Ok(mut frames) = shared.frames.lock() {
                frames.clear();
            }
            println!(
                "\n{instances} instance(s) x {per_instance} DB connections, {connections} \
                 connections, {} s; load average {}",
                options.secs,
                load_average()
            );
            let duration = Duration::from_secs(options.secs);
            let (mut tally, elapsed, peak, behind) =
                run_mix(&shared, &http, &pool, &pids, connections, duration).await;
            // Frames still on their way.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for reader in readers {
                reader.abort();
            }
            let (per_second, p99) = report(&mut tally, elapsed, &shared);
            let peak: Vec<String> = peak.iter().map(|p| format!("{p:.0}")).collect();
            println!(
                "  checkpoint lag: at worst {} events ({}); server peak RSS (MiB): {}",
                behind.0,
                if behind.1.is_empty() { "-" } else { &behind.1 },
                peak.join(", ")
            );
            points.push(Point {
                instances,
                connections,
                per_second,
                p99,
            });
        }
        for mut server in servers {
            let _ = server.child.kill().await;
        }
    }
    println!("\ncurve (2xx req/s over all routes, p99 over all routes):");
    for &connections in &options.connections {
        let mut last: Option<f64> = None;
        let mut bend = None;
        for p in points.iter().filter(|p| p.connections == connections) {
            let gain = last.map(|l| p.per_second / l);
            println!(
                "  {connections:>4} connections, {} instance(s): {:>7.0} req/s, p99 {}{}",
                p.instances,
                p.per_second,
                ms(p.p99),
                gain.map(|g| format!(" ({g:.2}x the previous)"))
                    .unwrap_or_default()
            );
            if bend.is_none() && gain.is_some_and(|g| g < 1.1) {
                bend = Some(p.instances);
            }
            last = Some(p.per_second);
        }
        match bend {
            Some(n) => println!("  -> at {connections} connections the curve bends at {n} instances (< 10% more than the count before)"),
            None => println!("  -> at {connections} connections no bend within these counts"),
        }
    }
    pool.close().await;
    Ok(())
}
