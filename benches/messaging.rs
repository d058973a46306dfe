//! Messaging over the real HTTP API and real WebSockets: what a send costs in conversations of
//! 10, 1,000 and 10,000 messages, and live delivery to many open sockets (messages/s, latency
//! from POST to frame received, memory per connection).
//!
//! `cargo bench --bench messaging` (the sockets' client ends run in a child process) (PostgreSQL and Redis must listen).
//! Settings: `BENCH_DATABASE_URL`, `REDIS_URL`, `BENCH_SOCKETS` (default `1000,10000`),
//! `BENCH_LISTENERS` (users the sockets belong to, default 50), `BENCH_MESSAGES` (live messages
//! per run, default 200), `BENCH_SEND_COST=0` to skip the send-cost part.

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

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What the client process is told (a JSON file named by `BENCH_CLIENT_SPEC`).
#[derive(serde::Serialize, serde::Deserialize)]
struct ClientSpec {
    ws_base: String,
    tokens: Vec<String>,
    sockets: usize,
    expected: usize,
}

/// The client process: opens the sockets (a process of its own, so that client and server ends
/// each get this sandbox's 20,000 file descriptors), says READY, then prints each `live N`
/// frame's arrival time as JSON once all expected frames came (or after 90 s).
async fn client_process(spec_path: &str) -> anyhow::Result<()> {
    let spec: ClientSpec = serde_json::from_str(&std::fs::read_to_string(spec_path)?)?;
    let received = Arc::new(std::sync::Mutex::new(Vec::<(usize, u128)>::with_capacity(
        spec.expected,
    )));
    let mut readers = Vec::new();
    for i in 0..spec.sockets {
        let mut request = format!("{}/ws", spec.ws_base).into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", spec.tokens[i % spec.tokens.len()]).parse()?,
        );
        let (mut socket, _): (Socket, _) = tokio_tungstenite::connect_async(request).await?;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    if frame["type"] == "message.created" {
                        if let Some(n) = frame["data"]["body"]
                            .as_str()
                            .and_then(|b| b.strip_prefix("live "))
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            if let Ok(mut r) = received.lock() {
                                r.push((n, unix_nanos()));
                            }
                        }
                    }
                }
            }
        }));
    }
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(90);
    while received.lock().map(|r| r.len()).unwrap_or(0) < spec.expected && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.lock().map(|r| r.clone()).unwrap_or_default();
    println!("{}", serde_json::to_string(&got)?);
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

async fn live(
    http: &reqwest::Client,
    base: &str,
    sender: &str,
    listeners: &[(String, String)],
    sockets: usize,
    messages: usize,
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    // One conversation per listener with the sender; sockets spread over the listeners.
    let mut talks = Vec::new();
    for (id, _) in listeners {
        talks.push(conversation(http, base, sender, id).await?);
    }
    let expected: usize = (0..messages)
        .map(|n| {
            (0..sockets)
                .filter(|i| i % listeners.len() == n % listeners.len())
                .count()
        })
        .sum();
    let spec = ClientSpec {
        ws_base: base.replace("http://", "ws://"),
        tokens: listeners.iter().map(|(_, t)| t.clone()).collect(),
        sockets,
        expected,
    };
    let spec_path =
        std::env::temp_dir().join(format!("arosaje-bench-clients-{}.json", std::process::id()));
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let before = rss_mib();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env("BENCH_CLIENT_SPEC", &spec_path)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(ready == "READY", "client process: {ready}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib();
    let start = Instant::now();
    let mut sent_at = Vec::with_capacity(messages);
    for n in 0..messages {
        let talk = &talks[n % talks.len()];
        sent_at.push(unix_nanos());
        post(
            http,
            format!("{base}/api/conversations/{talk}/messages"),
            sender,
            json!({"body": format!("live {n}")}),
        )
        .await?;
    }
    let sending = start.elapsed();
    let report = lines.next_line().await?.unwrap_or_default();
    let elapsed = start.elapsed();
    let _ = child.wait().await;
    let _ = std::fs::remove_file(&spec_path);
    let got: Vec<(usize, u128)> = serde_json::from_str(&report).context("client report")?;
    let mut latencies: Vec<Duration> = got
        .iter()
        .filter_map(|(n, at)| {
            let sent = *sent_at.get(*n)?;
            Some(Duration::from_nanos(at.saturating_sub(sent) as u64))
        })
        .collect();
    latencies.sort();
    let last = got.iter().map(|(_, at)| *at).max().unwrap_or(0);
    let first_sent = sent_at.first().copied().unwrap_or(0);
    let delivering =
        Duration::from_nanos(last.saturating_sub(first_sent) as u64).max(Duration::from_millis(1));
    println!(
        "{sockets} sockets ({} users): {:.0} messages/s sent, {} of {expected} frames delivered \
         ({:.0} frames/s), POST -> frame p50 {} p99 {}; server RSS {before:.0} -> {after:.0} MiB \
         ({:.1} KiB per connection); {:.1} s in all",
        listeners.len(),
        messages as f64 / sending.as_secs_f64(),
        got.len(),
        got.len() as f64 / delivering.as_secs_f64(),
        ms(common::percentile(&latencies, 50.0)),
        ms(common::percentile(&latencies, 99.0)),
        (after - before) * 1024.0 / sockets as f64,
        elapsed.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var("BENCH_CLIENT_SPEC") {
        return client_process(&spec).await;
    }
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
        if env("BENCH_SEND_COST", "1") != "0" {
            send_cost(&http, &base, &sender_token, &listeners[0].0).await?;
        }
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
