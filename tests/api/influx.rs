//! Business series to InfluxDB: an HTTP server inside the test stands for InfluxDB's write API
//! and checks the line protocol it receives after real traffic through the router; one that
//! never answers, and one that is down, make the sink drop and count while the API answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{config, eventually, unique_email, TestApp};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-influx-token";

/// One write request as InfluxDB would receive it.
#[derive(Debug, Clone)]
struct Write {
    query: HashMap<String, String>,
    authorization: String,
    content_type: String,
    lines: Vec<String>,
}

#[derive(Clone, Default)]
struct Received {
    writes: Arc<Mutex<Vec<Write>>>,
    /// Write requests that arrived, answered or not.
    arrived: Arc<Mutex<usize>>,
}

impl Received {
    fn writes(&self) -> Vec<Write> {
        self.writes.lock().expect("writes").clone()
    }

    fn lines(&self) -> Vec<String> {
        self.writes().into_iter().flat_map(|w| w.lines).collect()
    }

    fn arrived(&self) -> usize {
        *self.arrived.lock().expect("arrived")
    }
}

/// How the stand-in answers a write.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 204, as InfluxDB does.
    Accept,
    /// Never answers.
    Hang,
}

/// An InfluxDB write API on a port of its own; returns its base URL and what it receives.
async fn influx(behaviour: Behaviour) -> (String, Received) {
    async fn write(
        State((received, behaviour)): State<(Received, Behaviour)>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
        body: String,
    ) -> StatusCode {
        *received.arrived.lock().expect("arrived") += 1;
        if let Behaviour::Hang = behaviour {
            std::future::pending::<()>().await;
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        received.writes.lock().expect("writes").push(Write {
            query,
            authorization: header("authorization"),
            content_type: header("content-type"),
            lines: body.lines().map(str::to_string).collect(),
        });
        StatusCode::NO_CONTENT
    }
    let received = Received::default();
    let app = Router::new()
        .route("/api/v2/write", post(write))
        .with_state((received.clone(), behaviour));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("influx stand-in");
    });
    (format!("http://{addr}"), received)
}

fn influx_config(url: &str) -> arosaje::config::Config {
    let mut config = config();
    config.influx.influx_url = Some(arosaje::config::ConnectionUrl::new(url));
    config.influx.influx_token = Some(arosaje::config::Secret::new(TOKEN));
    config.influx.influx_org = "acme".into();
    config.influx.influx_bucket = "garden".into();
    config.influx.influx_flush_interval_ms = 20;
    config
}

/// The lines the log's events must have become, from the events table itself.
async fn expected_lines(t: &TestApp) -> Vec<String> {
    let rows: Vec<(i64, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT global_position, aggregate_type, event_type, timestamp FROM events \
          ORDER BY global_position",
    )
    .fetch_all(&t.pool)
    .await
    .expect("events");
    let mut lines = Vec::new();
    for (position, aggregate, event_type, at) in rows {
        let ns = at.timestamp_micros() * 1000 + position % 1000;
        lines.push(format!(
            "events,aggregate={aggregate},type={event_type} count=1i {ns}"
        ));
        match event_type.as_str() {
            "SittingRequested" => lines.push(format!("sittings,change=opened count=1i {ns}")),
            "SittingCompleted" => lines.push(format!("sittings,change=completed count=1i {ns}")),
            "MessageSent" => lines.push(format!("messages count=1i {ns}")),
            _ => {}
        }
    }
    lines.sort();
    lines
}

/// A conversation between two new users and one message in it.
async fn a_message(t: &TestApp) {
    let (_, ana) = t.user(&unique_email("ana")).await;
    let (ben_id, ben) = t.user(&unique_email("ben")).await;
    let started = t
        .post(
            "/api/conversations",
            Some(&ana),
            json!({"participant_ids": [ben_id]}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let conversation = started.body["id"].as_str().expect("id");
    let sent = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&ben),
            json!({"body": "Watered them, all fine"}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
}

#[sqlx::test]
async fn events_become_business_series_in_line_protocol(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, received) = influx(Behaviour::Accept).await;
    let started = Utc::now();
    let t = TestApp::with_config(options, connect, influx_config(&url), true).await;
    crate::sittings::full_lifecycle(&t).await;
    a_message(&t).await;

    // Every event of the log, once, as its points; nothing else but projection lag.
    let series = std::sync::Mutex::new(Vec::new());
    eventually("every event's points in InfluxDB", WAIT, || async {
        let expected = expected_lines(&t).await;
        let mut business: Vec<String> = received
            .lines()
            .into_iter()
            .filter(|l| !l.starts_with("projection_lag,"))
            .collect();
        business.sort();
        let done = business == expected;
        *series.lock().expect("series") = business;
        done
    })
    .await;
    let business = series.into_inner().expect("series");
    let count = |prefix: &str| business.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        count("sittings,change=opened count=1i "),
        1,
        "{business:#?}"
    );
    assert_eq!(count("sittings,change=completed count=1i "), 1);
    assert_eq!(count("messages count=1i "), 1);
    assert_eq!(
        count("events,aggregate=Sitting,type=SitterAccepted count=1i "),
        1
    );
    assert_eq!(
        count("events,aggregate=Message,type=MessageSent count=1i "),
        1
    );

    // Projection lag: one point per batch a projector applied, in seconds, stamped now.
    let lags: Vec<String> = received
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("projection_lag,"))
        .collect();
    let plants: Vec<&String> = lags
        .iter()
        .filter(|l| l.starts_with("projection_lag,projection=plants seconds="))
        .collect();
    assert!(!plants.is_empty(), "{lags:#?}");
    for line in lags {
        let (series, rest) = line.split_once(" seconds=").expect("seconds field");
        assert!(series.starts_with("projection_lag,projection="), "{line}");
        let (seconds, ns) = rest.split_once(' ').expect("a timestamp");
        let seconds: f64 = seconds.parse().expect("a float");
        assert!((0.0..60.0).contains(&seconds), "{line}");
        let ns: i64 = ns.parse().expect("nanoseconds");
        let at = DateTime::from_timestamp_nanos(ns);
        assert!(at >= started && at <= Utc::now(), "{line}");
    }

    // The write API as InfluxDB v2 documents it, in batches.
    let writes = received.writes();
    for write in &writes {
        let query: Vec<(&str, &str)> = ["org", "bucket", "precision"]
            .iter()
            .map(|k| (*k, write.query.get(*k).map_or("", String::as_str)))
            .collect();
        assert_eq!(
            query,
            [("org", "acme"), ("bucket", "garden"), ("precision", "ns")]
        );
        assert_eq!(write.query.len(), 3, "{:?}", write.query);
        assert_eq!(write.authorization, format!("Token {TOKEN}"));
        assert!(write.content_type.starts_with("text/plain"), "{write:?}");
        assert!(!write.lines.is_empty());
    }
    // Every line the server received is counted as written. The writer goes on sending
    // projection lag meanwhile, and counts a batch once its answer is back (after the server
    // recorded it): compare once the two agree, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = t.app.series.stats();
        let received_lines: usize = received.writes().iter().map(|w| w.lines.len()).sum();
        if stats.written as usize == received_lines {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "written {} != received {received_lines}: {stats:?}",
            stats.written
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert_eq!(stats.failed_writes, 0, "{stats:?}");
    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().expect("metrics text");
    assert!(text.contains("influx_points_written_total"), "{text}");
}

#[sqlx::test]
async fn a_full_batch_is_written_at_once(options: PgPoolOptions, connect: PgConnectOptions) {
    let (url, received) = influx(Behaviour::Accept).await;
    let mut config = influx_config(&url);
    // Never by time within the test: only full batches are written.
    config.influx.influx_flush_interval_ms = 3_600_000;
    config.influx.influx_batch_size = 3;
    let t = TestApp::with_config(options, connect, config, true).await;
    for i in 0..3 {
        let (_, token) = t.user(&unique_email(&format!("batch{i}"))).await;
        assert_eq!(
            t.create_plant(&token, "Batched").await.status,
            StatusCode::CREATED
        );
    }
    eventually("full batches", WAIT, || async {
        received.writes().len() >= 2
    })
    .await;
    for write in received.writes() {
        assert_eq!(write.lines.len(), 3, "{write:?}");
    }
}

#[sqlx::test]
async fn an_influxdb_that_never_answers_costs_points_not_requests(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, received) = influx(Behaviour::Hang).await;
    let mut config = influx_config(&url);
    config.influx.influx_batch_size = 1;
    config.influx.influx_queue_capacity = 2;
    // The stuck write is waited for as long as the test runs: only the queue bounds anything.
    config.influx.influx_timeout_ms = 3_600_000;
    let t = TestApp::with_config(options, connect, config, true).await;

    let (_, token) = t.user(&unique_email("patient")).await;
    eventually("points dropped", WAIT, || async {
        let plant = t.create_plant(&token, "Unrecorded").await;
        assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
        t.app.series.stats().dropped > 0
    })
    .await;
    // InfluxDB still has not answered its first write, and the API still answers.
    assert_eq!(received.arrived(), 1);
    assert!(received.writes().is_empty());
    let plant = t.create_plant(&token, "Still served").await;
    assert_eq!(plant.status, StatusCode::CREATED, "{plant:?}");
    let listed = t.get("/api/plants", &token).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let stats = t.app.series.stats();
    assert_eq!((stats.written, stats.failed_writes), (0, 0), "{stats:?}");

    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().expect("metrics text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("influx_points_dropped_total{reason=\"queue_full\"} ")),
        "{text}"
    );
}

#[sqlx::test]
async fn an_influxdb_that_is_down_costs_points_not_requests(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // A port nothing listens on any more.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let t = TestApp::with_config(
        options,
        connect,
        influx_config(&format!("http://{closed}")),
        true,
    )
    .await;
    let (_, token) = t.user(&unique_email("offline")).await;
    assert_eq!(
        t.create_plant(&token, "Unseen").await.status,
        StatusCode::CREATED
    );
    eventually("a failed write", WAIT, || async {
        t.app.series.stats().failed_writes > 0
    })
    .await;
    let stats = t.app.series.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.written, 0, "{stats:?}");
    let metrics = t.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.body.as_str().expect("metrics text");
    for series in [
        "influx_points_dropped_total{reason=\"write_failed\"} ",
        "influx_writes_total{result=\"failed\"} ",
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series}");
    }
    let me = t.get("/api/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
}

/// Compose initialises InfluxDB with the org and bucket the API writes to and Grafana reads, and
/// gives each the same token.
#[test]
fn compose_influxdb_api_and_grafana_agree() {
    let compose: Value =
        serde_norway::from_str(include_str!("../../docker-compose.yml")).expect("compose YAML");
    let datasource: Value = serde_norway::from_str(include_str!(
        "../../deploy/grafana/provisioning/datasources/influxdb.yml"
    ))
    .expect("datasource YAML");
    let services = &compose["services"];
    let init = &services["influxdb"]["environment"];
    let api = &services["api"]["environment"];
    assert!(services["influxdb"]["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("influxdb:2")));
    assert_eq!(init["DOCKER_INFLUXDB_INIT_MODE"], "setup");
    let source = &datasource["datasources"][0];
    assert_eq!(source["type"], "influxdb");
    assert_eq!(source["jsonData"]["version"], "Flux");
    for (init_key, api_key, grafana_key) in [
        ("DOCKER_INFLUXDB_INIT_ORG", "INFLUX_ORG", "organization"),
        (
            "DOCKER_INFLUXDB_INIT_BUCKET",
            "INFLUX_BUCKET",
            "defaultBucket",
        ),
    ] {
        assert_eq!(init[init_key], api[api_key], "{api_key}");
        assert_eq!(
            init[init_key], source["jsonData"][grafana_key],
            "{grafana_key}"
        );
    }
    assert_eq!(api["INFLUX_URL"], source["url"]);
    assert_eq!(source["url"], "http://influxdb:8086");
    // One token: InfluxDB's admin token, the API's, Grafana's, all the `influx_token` secret.
    assert_eq!(
        init["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"],
        "/run/secrets/influx_token"
    );
    assert_eq!(
        source["secureJsonData"]["token"],
        "$__file{/run/secrets/influx_token}"
    );
    assert_eq!(
        compose["secrets"]["influx_token"]["environment"],
        "INFLUX_TOKEN"
    );
    assert!(api["INFLUX_TOKEN"]
        .as_str()
        .is_some_and(|t| t.starts_with("${INFLUX_TOKEN:?")));
    for service in ["influxdb", "grafana"] {
        let secrets = services[service]["secrets"].as_array().expect("secrets");
        assert!(secrets.contains(&"influx_token".into()), "{service}");
    }
}
