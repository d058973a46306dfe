//! Business series for InfluxDB v2: points in line protocol, queued without waiting and written
//! in batches by one background task (`POST {INFLUX_URL}/api/v2/write?org=&bucket=&precision=ns`).
//!
//! Producers never wait for InfluxDB: [`Series::send`] puts a line into a bounded queue with
//! `try_send`, and a full queue drops the point. The writer sends a batch when it holds
//! `INFLUX_BATCH_SIZE` points or every `INFLUX_FLUSH_INTERVAL_MS`, one write at a time; a write
//! that fails or outlasts `INFLUX_TIMEOUT_MS` drops its batch (no retry: a slow InfluxDB then
//! costs points, never memory or latency). What was written, dropped and failed is counted in
//! `influx_points_written_total`, `influx_points_dropped_total{reason}` and
//! `influx_writes_total{result}`, and in [`Series::stats`].
//!
//! The line protocol is written here rather than with a crate: the only one kept by InfluxData
//! (`influxdb-line-protocol`) brings a parser and two more dependencies for the three escaping
//! rules below.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{InfluxConfig, Secret};

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `12i`
    Int(i64),
    /// `0.25`
    Float(f64),
    /// `"text"`
    Str(String),
}

/// One point: measurement, tags, fields and a timestamp in nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    measurement: &'static str,
    tags: Vec<(&'static str, String)>,
    fields: Vec<(&'static str, Field)>,
    timestamp_ns: i64,
}

impl Point {
    pub fn new(measurement: &'static str, timestamp_ns: i64) -> Self {
        Self {
            measurement,
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp_ns,
        }
    }

    /// A tag (written in the order given; InfluxDB sorts them itself).
    pub fn tag(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.tags.push((key, value.into()));
        self
    }

    pub fn field(mut self, key: &'static str, value: Field) -> Self {
        self.fields.push((key, value));
        self
    }

    /// The point as one line of line protocol (no newline). A point without fields is not
    /// valid line protocol: callers always give one.
    pub fn to_line(&self) -> String {
        let mut line = String::with_capacity(96);
        escape(&mut line, self.measurement, &[',', ' ']);
        for (key, value) in &self.tags {
            line.push(',');
            escape(&mut line, key, &[',', '=', ' ']);
            line.push('=');
            escape(&mut line, value, &[',', '=', ' ']);
        }
        for (i, (key, value)) in self.fields.iter().enumerate() {
            line.push(if i == 0 { ' ' } else { ',' });
            escape(&mut line, key, &[',', '=', ' ']);
            line.push('=');
            match value {
                Field::Int(v) => {
                    let _ = write!(line, "{v}i");
                }
                Field::Float(v) if v.is_finite() => {
                    let _ = write!(line, "{v:?}");
                }
                // Line protocol has no NaN or infinity.
                Field::Float(_) => line.push('0'),
                Field::Str(v) => {
                    line.push('"');
                    escape(&mut line, v, &['"']);
                    line.push('"');
                }
            }
        }
        let _ = write!(line, " {}", self.timestamp_ns);
        line
    }
}

/// Appends `value` with a backslash before each of `special` (the protocol's rules: measurements
/// escape `,` and space; tag keys, tag values and field keys also `=`; string field values `"`
/// and `\`). Newlines cannot be escaped: they become spaces.
fn escape(out: &mut String, value: &str, special: &[char]) {
    let quoted = special.contains(&'"');
    for c in value.chars() {
        let c = if c == '\n' || c == '\r' { ' ' } else { c };
        if special.contains(&c) || (quoted && c == '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Counts of one sink (also exported as Prometheus counters).
#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
}

/// What a sink has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesStats {
    /// Points InfluxDB accepted.
    pub written: u64,
    /// Points dropped: the queue was full, or their write failed.
    pub dropped: u64,
    /// Writes that failed (error status, no answer in time, no connection).
    pub failed_writes: u64,
}

/// Where business series go; cheap to clone. Disabled (every point ignored) without
/// `INFLUX_URL`.
#[derive(Clone, Default)]
pub struct Series {
    queue: Option<mpsc::Sender<String>>,
    counters: Arc<Counters>,
}

impl Series {
    /// A sink that writes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// The sink `INFLUX_*` describe, with its writer task started (it ends once every clone of
    /// the sink is dropped, after sending what is queued). Disabled when `INFLUX_URL` is unset.
    pub fn from_config(config: &InfluxConfig) -> anyhow::Result<Series> {
        let (Some(url), Some(token)) = (
            config.influx_url.as_ref().filter(|_| config.enabled()),
            config.influx_token.clone(),
        ) else {
            return Ok(Series::disabled());
        };
        let mut endpoint = url::Url::parse(url.as_str().trim())?;
        let path = format!("{}/api/v2/write", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        endpoint
            .query_pairs_mut()
            .append_pair("org", &config.influx_org)
            .append_pair("bucket", &config.influx_bucket)
            .append_pair("precision", "ns");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.influx_timeout_ms))
            .build()?;
        let (queue, receiver) = mpsc::channel(config.influx_queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            client,
            endpoint,
            token,
            batch_size: config.influx_batch_size.max(1),
            counters: counters.clone(),
            healthy: true,
        };
        tokio::spawn(writer.run(
            receiver,
            Duration::from_millis(config.influx_flush_interval_ms.max(1)),
        ));
        Ok(Series {
            queue: Some(queue),
            counters,
        })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues a point for the next write, or drops it (counted) when the queue is full. Never
    /// waits.
    pub fn send(&self, point: &Point) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(point.to_line()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("influx_points_dropped_total", "reason" => "queue_full").increment(1);
        }
    }

    pub fn stats(&self) -> SeriesStats {
        SeriesStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            failed_writes: self.counters.failed_writes.load(Ordering::Relaxed),
        }
    }
}

struct Writer {
    client: reqwest::Client,
    endpoint: url::Url,
    token: Secret,
    batch_size: usize,
    counters: Arc<Counters>,
    /// Whether the last write succeeded: failures are logged when they start and end, not each.
    healthy: bool,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<String>, interval: Duration) {
        let mut batch: Vec<String> = Vec::with_capacity(self.batch_size);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `batch` is never full here: it is flushed as soon as it is.
            let room = self.batch_size.saturating_sub(batch.len()).max(1);
            tokio::select! {
                received = receiver.recv_many(&mut batch, room) => {
                    if received == 0 {
                        // Every sender is gone: send what is left and stop.
                        self.flush(&mut batch).await;
                        return;
                    }
                    if batch.len() >= self.batch_size {
                        self.flush(&mut batch).await;
                    }
                }
                _ = tick.tick() => self.flush(&mut batch).await,
            }
        }
    }

    async fn flush(&mut self, batch: &mut Vec<String>) {
        if batch.is_empty() {
            return;
        }
        let points = batch.len() as u64;
        let body = batch.join("\n");
        batch.clear();
        let answer = self
            .client
            .post(self.endpoint.clone())
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Token {}", self.token.expose()),
            )
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                Some(format!(
                    "InfluxDB answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                ))
            }
            Err(err) => Some(format!("{err}")),
        };
        match failure {
            None => {
                self.counters.written.fetch_add(points, Ordering::Relaxed);
                metrics::counter!("influx_points_written_total").increment(points);
                metrics::counter!("influx_writes_total", "result" => "ok").increment(1);
                if !self.healthy {
                    tracing::info!("InfluxDB writes succeed again");
                    self.healthy = true;
                }
            }
            Some(error) => {
                self.counters.dropped.fetch_add(points, Ordering::Relaxed);
                self.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("influx_points_dropped_total", "reason" => "write_failed")
                    .increment(points);
                metrics::counter!("influx_writes_total", "result" => "failed").increment(1);
                if self.healthy {
                    tracing::warn!(%error, points, "InfluxDB write failed; its points are dropped (and counted) until writes succeed again");
                    self.healthy = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_escape_what_the_protocol_says() {
        let point = Point::new("my measure,x", 1_700_000_000_000_000_123)
            .tag("a key", "v=1,2 3")
            .field("n", Field::Int(-4))
            .field("f", Field::Float(0.5))
            .field("whole", Field::Float(2.0))
            .field("s", Field::Str("say \"hi\" \\ bye\nnow".into()))
            .field("nan", Field::Float(f64::NAN));
        assert_eq!(
            point.to_line(),
            r#"my\ measure\,x,a\ key=v\=1\,2\ 3 n=-4i,f=0.5,whole=2.0,s="say \"hi\" \\ bye now",nan=0 1700000000000000123"#
        );
    }

    #[test]
    fn a_disabled_sink_takes_points_and_counts_nothing() {
        let series = Series::disabled();
        series.send(&Point::new("m", 1).field("v", Field::Int(1)));
        assert!(!series.enabled());
        assert_eq!(series.stats(), SeriesStats::default());
    }
}
