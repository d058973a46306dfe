//! Messaging over the real HTTP API and real WebSockets: what a send costs in conversations of
//! 10, 1,000 and 10,000 messages, and live delivery to many open sockets (messages/s, latency
//! from POST to frame received, memory per connection).
//!
//! `ulimit -n 65536; cargo bench --bench messaging` (PostgreSQL and Redis must listen).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_SOCKETS` (default `1000,10000`),
//! `BENCH_LISTENERS` (users the sockets belong to, default 50), `BENCH_MESSAGES` (live messages
//! per run, default 200).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::ms;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
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

async fn conversation(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    other: &str,
) -> anyhow::Result<String> {
    let body = post(
        http,
        format!("{base}/api/conversations"),
        token,
        json!({"participant_ids": [other]}),
    )
    .await?;
    Ok(body["id"].as_str().context("id")?.to_string())
}

/// Fills a conversation with `n` messages, 16 at a time.
async fn fill(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conversation: &str,
    n: usize,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/conversations/{conversation}/messages");
    futures::stream::iter(0..n)
        .map(|i| {
            post(
                http,
                url.clone(),
                token,
                json!({"body": format!("message {i}")}),
            )
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

async fn send_cost(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    other: &str,
) -> anyhow::Result<()> {
    for size in [10usize, 1_000, 10_000] {
        let talk = conversation(http, base, token, other).await?;
        fill(http, base, token, &talk, size).await?;
        let url = format!("{base}/api/conversations/{talk}/messages");
        let mut latencies = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            post(
                http,
                url.clone(),
                token,
                json!({"body": format!("timed {i}")}),
            )
            .await?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        println!(
            "send into a conversation of {size:>6} messages: p50 {} p99 {} (one client, read-your-writes)",
            ms(common::percentile(&latencies, 50.0)),
            ms(common::percentile(&latencies, 99.0)),
        );
    }
    Ok(())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn live(
    http: &reqwest::Client,
    base: &str,
    sender: &str,
    listeners: &[(String, String)],
    sockets: usize,
    messages: usize,
) -> anyhow::Result<()> {
    // One conversation per listener with the sender; sockets spread over the listeners.
    let mut talks = Vec::new();
    for (id, _) in listeners {
        talks.push(conversation(http, base, sender, id).await?);
    }
    let before = rss_mib();
    let ws_base = base.replace("http://", "ws://");
    let mut opened: Vec<(usize, Socket)> = Vec::with_capacity(sockets);
    for i in 0..sockets {
        let listener = i % listeners.len();
        let mut request = format!("{ws_base}/ws").into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", listeners[listener].1).parse()?,
        );
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        opened.push((listener, socket));
    }
    let after = rss_mib();
    let received = Arc::new(std::sync::Mutex::new(Vec::<(usize, Instant)>::new()));
    let mut readers = Vec::new();
    for (listener, mut socket) in opened {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    if frame["type"] == "message.created" {
                        let n: usize = frame["data"]["body"]
                            .as_str()
                            .and_then(|b| b.strip_prefix("live "))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(usize::MAX);
                        if let Ok(mut r) = received.lock() {
                            r.push((n, Instant::now()));
                        }
                    }
                }
            }
            let _ = listener;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_listener = sockets.div_ceil(listeners.len());
    let start = Instant::now();
    let mut sent_at = Vec::with_capacity(messages);
    for n in 0..messages {
        let talk = &talks[n % talks.len()];
        sent_at.push(Instant::now());
        post(
            http,
            format!("{base}/api/conversations/{talk}/messages"),
            sender,
            json!({"body": format!("live {n}")}),
        )
        .await?;
    }
    let sending = start.elapsed();
    // Every socket of the addressed listener gets each message.
    let expected: usize = (0..messages)
        .map(|n| {
            let listener = n % listeners.len();
            (0..sockets)
                .filter(|i| i % listeners.len() == listener)
                .count()
        })
        .sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().map(|r| r.len()).unwrap_or(0) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let got = received.lock().map(|r| r.clone()).unwrap_or_default();
    let mut latencies: Vec<Duration> = got
        .iter()
        .filter_map(|(n, at)| sent_at.get(*n).map(|sent| at.duration_since(*sent)))
        .collect();
    latencies.sort();
    println!(
        "{sockets} sockets ({} users, ~{per_listener} sockets each): {:.0} messages/s sent, {} of {expected} frames \
         delivered ({:.0} frames/s), POST -> frame p50 {} p99 {}; RSS {before:.0} -> {after:.0} MiB \
         ({:.1} KiB per connection, client and server ends in this one process)",
        listeners.len(),
        messages as f64 / sending.as_secs_f64(),
        got.len(),
        got.len() as f64 / elapsed.as_secs_f64(),
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
        (after - before) * 1024.0 / sockets as f64,
    );
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let socket_counts: Vec<usize> = env("BENCH_SOCKETS", "1000,10000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let listener_count: usize = env("BENCH_LISTENERS", "50").parse().unwrap_or(50);
    let messages: usize = env("BENCH_MESSAGES", "200").parse().unwrap_or(200);
    let db = common::BenchDb::create().await?;
    let result = async {
        let config = common::config(&db);
        let (_app, pool, base, _background) = common::serve(config).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let sender = common::account(&http, &base, "sender@bench.example").await?;
        let sender_token = sender["access_token"]
            .as_str()
            .context("token")?
            .to_string();
        let mut listeners = Vec::new();
        for i in 0..listener_count {
            let login =
                common::account(&http, &base, &format!("listener{i}@bench.example")).await?;
            listeners.push((
                login["user"]["id"].as_str().context("id")?.to_string(),
                login["access_token"].as_str().context("token")?.to_string(),
            ));
        }
        send_cost(&http, &base, &sender_token, &listeners[0].0).await?;
        for sockets in socket_counts {
            live(&http, &base, &sender_token, &listeners, sockets, messages).await?;
        }
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}
