//! The operator's files in `deploy/` against the real service: every metric that the Grafana
//! dashboard and the Prometheus alert rules query is one that `/metrics` serves after traffic,
//! with the labels and label values they select; every panel uses the provisioned data source;
//! every alert says how long, how bad and what. (`scripts/check-deploy.sh` adds `promtool`.)

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{Method, StatusCode};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{config, eventually, unique_email, TestApp};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const DASHBOARD: &str = include_str!("../../deploy/grafana/dashboards/arosaje.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const DATASOURCES: &str =
    include_str!("../../deploy/grafana/provisioning/datasources/prometheus.yml");
const PROMETHEUS: &str = include_str!("../../deploy/prometheus/prometheus.yml");

/// Prometheus's scrape job for the API (deploy/prometheus/prometheus.yml).
const API_JOB: &str = "arosaje-api";

/// Series of node-exporter and postgres-exporter, selected with their jobs, never the API's.
/// (Prometheus's own `up` goes with any scraped job.)
const OTHER_EXPORTERS: &[&str] = &[
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "pg_stat_database_numbackends",
    "pg_settings_max_connections",
];

/// The series the architecture document's panels and alerts are built on.
const EXPECTED: &[&str] = &[
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_count",
    "db_pool_connections_in_use",
    "db_pool_connections_max",
    "cache_requests_total",
    "websocket_connections",
    "process_resident_memory_bytes",
    "process_memory_limit_bytes",
    "projection_lag_events",
    "projection_lag_seconds",
];

#[sqlx::test]
async fn dashboards_and_alerts_query_only_what_the_service_exports(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let datasource_uid = provisioned_datasource_uid();
    let scraped_jobs = scrape_jobs();
    let mut queries = dashboard_queries(&datasource_uid);
    queries.extend(alert_queries());
    let selectors: Vec<(String, Selector)> = queries
        .iter()
        .flat_map(|(place, expr)| selectors(expr).into_iter().map(|s| (place.clone(), s)))
        .collect();
    let names: BTreeSet<&str> = selectors.iter().map(|(_, s)| s.name.as_str()).collect();
    for expected in EXPECTED {
        assert!(names.contains(expected), "nothing queries {expected}");
    }

    let text = metrics_after_traffic(options, connect).await;
    let exported = exposition(&text);
    // Latency is a histogram whose buckets Prometheus can add up across instances, and the
    // latency alert's 500 ms is one of their bounds.
    let buckets: BTreeSet<&str> = exported
        .get("http_request_duration_seconds_bucket")
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("le").map(String::as_str))
        .collect();
    for bound in ["0.5", "+Inf"] {
        assert!(
            buckets.contains(bound),
            "no le=\"{bound}\" bucket: {buckets:?}"
        );
    }
    assert!(
        !exported.contains_key("http_request_duration_seconds"),
        "request latency is still a summary"
    );

    let mut problems = Vec::new();
    for (place, selector) in &selectors {
        let job = selector
            .matchers
            .iter()
            .find(|m| m.label == "job" && m.op == "=")
            .map(|m| m.value.as_str());
        match job {
            Some(job) if scraped_jobs.contains(job) => {}
            _ => problems.push(format!(
                "{place}: {} is not selected by a scraped job ({scraped_jobs:?})",
                selector.name
            )),
        }
        if selector.name == "up" {
            continue;
        }
        if OTHER_EXPORTERS.contains(&selector.name.as_str()) {
            if job == Some(API_JOB) {
                problems.push(format!("{place}: {} is not the API's", selector.name));
            }
            continue;
        }
        let Some(samples) = exported.get(&selector.name) else {
            problems.push(format!(
                "{place}: {} is not on /metrics (request latency is a histogram: _bucket, _sum, \
                 _count; other histograms are summaries: quantile, _sum, _count)",
                selector.name
            ));
            continue;
        };
        for matcher in &selector.matchers {
            if matcher.label == "job" || matcher.label == "instance" {
                continue;
            }
            let labelled = samples.iter().any(|s| s.contains_key(&matcher.label));
            let matched = matcher.op != "="
                || samples
                    .iter()
                    .any(|s| s.get(&matcher.label) == Some(&matcher.value));
            if !labelled || !matched {
                problems.push(format!(
                    "{place}: no {} sample has {}{}{:?}",
                    selector.name, matcher.label, matcher.op, matcher.value
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Traffic that makes every series the dashboard shows exist: requests, an event and its
/// projection, a cache miss and hit, a rate-limited login, an open WebSocket. Returns /metrics.
async fn metrics_after_traffic(options: PgPoolOptions, connect: PgConnectOptions) -> String {
    let mut limited = config();
    limited.rate_limit_auth_per_email = 2;
    let t = TestApp::with_config(options, connect, limited, true).await;
    let (user_id, token) = t.user(&unique_email("dash")).await;
    assert_eq!(
        t.create_plant(&token, "Charted").await.status,
        StatusCode::CREATED
    );
    let target = unique_email("guessed");
    for _ in 0..2 {
        t.login(&target, "wrong guess").await;
    }
    assert_eq!(
        t.login(&target, "wrong guess").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let addr = crate::live::serve(t.app.clone()).await;
    let _socket = crate::live::open_with_token(addr, &token).await;

    // The first look-up fills the cache and the next hits it, unless a projection moved in
    // between (the key holds their versions); the socket counts once the server registered it.
    let text = std::sync::Mutex::new(String::new());
    eventually("a cache hit and the socket on /metrics", WAIT, || async {
        let profile = t.get(&format!("/api/users/{user_id}"), &token).await;
        assert_eq!(profile.status, StatusCode::OK, "{profile:?}");
        let metrics = t.call(Method::GET, "/metrics", None, None).await;
        assert_eq!(metrics.status, StatusCode::OK);
        let body = metrics.body.as_str().expect("text exposition").to_string();
        let exported = exposition(&body);
        let hit = exported.get("cache_requests_total").is_some_and(|samples| {
            samples.iter().any(|s| {
                s.get("cache").map(String::as_str) == Some("public_profile")
                    && s.get("result").map(String::as_str) == Some("hit")
            })
        });
        let socket = exported.contains_key("websocket_connections");
        *text.lock().expect("text") = body;
        hit && socket
    })
    .await;
    text.into_inner().expect("text")
}

/// The uid of the data source that Grafana provisions.
fn provisioned_datasource_uid() -> String {
    let file: Value = serde_norway::from_str(DATASOURCES).expect("datasources YAML");
    let sources = file["datasources"].as_array().expect("datasources");
    assert_eq!(sources.len(), 1, "one data source");
    assert_eq!(sources[0]["type"], "prometheus");
    sources[0]["uid"].as_str().expect("uid").to_string()
}

/// The job names Prometheus scrapes.
fn scrape_jobs() -> BTreeSet<String> {
    let file: Value = serde_norway::from_str(PROMETHEUS).expect("prometheus YAML");
    let jobs: BTreeSet<String> = file["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|c| c["job_name"].as_str().expect("job_name").to_string())
        .collect();
    for job in [API_JOB, "node", "postgres"] {
        assert!(jobs.contains(job), "Prometheus does not scrape {job}");
    }
    jobs
}

/// Every PromQL expression of the dashboard (panels and variables), by where it is; checks that
/// each panel and each query uses the provisioned data source.
fn dashboard_queries(uid: &str) -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut charts = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("title");
        if panel["type"] == "row" {
            assert!(panel.get("targets").is_none(), "row {title} has queries");
            continue;
        }
        charts += 1;
        assert_eq!(panel["datasource"]["uid"], uid, "panel {title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], uid, "a query of {title}");
            let expr = target["expr"].as_str().expect("expr");
            queries.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    assert!(charts >= 7, "the document's seven panels at least");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let name = variable["name"].as_str().expect("name");
        assert_eq!(variable["datasource"]["uid"], uid, "variable {name}");
        let query = variable["query"]["query"].as_str().expect("query");
        // label_values(<selector>, <label>): the selector is PromQL, the label is not a metric.
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("variable {name}: {query}"));
        queries.push((format!("variable {name}"), selector.to_string()));
    }
    queries
}

/// Every alert's expression; checks each has `for`, a severity and a summary.
fn alert_queries() -> Vec<(String, String)> {
    let file: Value = serde_norway::from_str(ALERTS).expect("alerts YAML");
    let mut queries = Vec::new();
    for group in file["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            assert!(rule["for"].as_str().is_some(), "{name} has no `for`");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{name}: severity"
            );
            assert!(
                rule["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: summary"
            );
            let expr = rule["expr"].as_str().expect("expr");
            queries.push((format!("alert {name}"), expr.to_string()));
        }
    }
    assert!(queries.len() >= 6, "the document's six alerts at least");
    queries
}

#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    /// Numbers and durations (`0.5`, `5m`), Grafana variables (`$__rate_interval`).
    Literal,
    Punct(String),
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut value = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Str(value));
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Literal);
        } else if word(c) {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                two
            } else {
                c.to_string()
            };
            i += op.chars().count();
            out.push(Token::Punct(op));
        }
    }
    out
}

/// The metric selectors of a PromQL expression: identifiers that are not functions, aggregation
/// or set operators, keywords, nor the label lists of `by`/`without`/`on`/`ignoring`/`group_*`.
fn selectors(expr: &str) -> Vec<Selector> {
    let tokens = tokens(expr);
    let punct = |i: usize, p: &str| matches!(tokens.get(i), Some(Token::Punct(q)) if q == p);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word)
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str()) =>
            {
                i += 1;
                if punct(i, "(") {
                    while !punct(i, ")") {
                        i += 1;
                    }
                    i += 1;
                }
            }
            Token::Ident(word)
                if ["and", "or", "unless", "bool", "offset"].contains(&word.as_str()) =>
            {
                i += 1
            }
            // A function or an aggregation, `sum (...)` or `sum by (...) (...)`.
            Token::Ident(_)
                if punct(i + 1, "(")
                    || matches!(tokens.get(i + 1), Some(Token::Ident(k)) if k == "by" || k == "without") =>
            {
                i += 1
            }
            Token::Ident(name) => {
                let mut matchers = Vec::new();
                i += 1;
                if punct(i, "{") {
                    i += 1;
                    while !punct(i, "}") {
                        match &tokens[i..i + 3] {
                            [Token::Ident(label), Token::Punct(op), Token::Str(value)] => matchers
                                .push(Matcher {
                                    label: label.clone(),
                                    op: op.clone(),
                                    value: value.clone(),
                                }),
                            other => panic!("a label matcher in {expr:?}: {other:?}"),
                        }
                        i += 3;
                        if punct(i, ",") {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                found.push(Selector {
                    name: name.clone(),
                    matchers,
                });
            }
            Token::Punct(p) if p == "{" => panic!("a selector without a metric name: {expr:?}"),
            Token::Punct(p) if p == "[" => {
                while !punct(i, "]") {
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

/// The samples of a text exposition: name to the label sets it was seen with.
fn exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).expect("a sample line");
        let name = &line[..end];
        let mut labels = BTreeMap::new();
        if line[end..].starts_with('{') {
            let mut rest = &line[end + 1..];
            while let Some((label, after)) = rest.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().expect("a closed label value") {
                        (_, '\\') => value.push(chars.next().expect("escaped").1),
                        (at, '"') => break at,
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(label.trim_start_matches(',').to_string(), value);
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
        samples.entry(name.to_string()).or_default().push(labels);
    }
    samples
}

#[test]
fn selectors_are_told_from_functions_keywords_and_label_lists() {
    let found = selectors(
        r#"sum by (route) (rate(http_request_duration_seconds_count{job="arosaje-api", status=~"5.."}[$__rate_interval])) / on (route) group_left max(up) > bool 1e3 and x:y offset 5m"#,
    );
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["http_request_duration_seconds_count", "up", "x:y"],
        "{found:?}"
    );
    assert_eq!(found[0].matchers[1].label, "status");
    assert_eq!(found[0].matchers[1].op, "=~");
    assert_eq!(found[0].matchers[1].value, "5..");

    let samples = exposition(
        "# TYPE a summary\na{route=\"/api/users/{id}\",q=\"say \\\"hi\\\", ok\"} 1\nb 2\n",
    );
    assert_eq!(samples["a"][0]["route"], "/api/users/{id}");
    assert_eq!(samples["a"][0]["q"], "say \"hi\", ok");
    assert!(samples["b"][0].is_empty());
}
