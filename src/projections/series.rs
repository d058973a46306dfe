//! Business series from the log: a side-effect projector that turns each committed event into
//! InfluxDB points (see `infra::influx`).
//!
//! Why the log and not the command bus: the events are the facts, and a follower of the log sees
//! each of them once, whatever the number of API instances. Side-effect projectors run in one
//! instance at a time (an advisory lock, see `runner`), so N instances do not write N copies; a
//! command that failed, was rejected or rolled back wrote no event and is not counted; events
//! appended outside the HTTP path (the CLI, the reminder job) are. A hook in the command bus
//! would count in whichever instance ran the command, but would count appends whose commit then
//! failed, and lose what was counted in memory when an instance stops.
//!
//! Replays are harmless: a point's timestamp is derived from its event (commit time in
//! microseconds, plus the log position modulo 1000 as nanoseconds), and InfluxDB keeps one point
//! per measurement, tag set and timestamp, so an event sent twice (a retried batch, a crash before
//! the checkpoint moved) overwrites its own point instead of counting twice. Events of one
//! transaction share a commit time; their positions differ, so their points do too.
//!
//! Points the sink cannot take (InfluxDB slow or down) are dropped and counted there; the
//! projector never waits and never fails on their account. Events older than `max_age` are passed
//! by: a projector started on an old log does not flood InfluxDB with history.
//!
//! Series (measurement, tags: fields):
//! - `events`, `aggregate`, `type`: `count=1i` for every event, i.e. every successful command by
//!   the event it committed (`RequestSitting` as `SittingRequested`, ...);
//! - `sittings`, `change` = `opened` (`SittingRequested`) or `completed` (`SittingCompleted`):
//!   `count=1i`;
//! - `messages`: `count=1i` per `MessageSent`;
//! - `projection_lag`, `projection`: `seconds` (written by the runner after each batch, see
//!   [`lag_point`]).

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{Mode, Projection};
use crate::events::StoredEvent;
use crate::infra::influx::{Field, Point, Series};

/// The projector's name (its checkpoint row, `projections list`).
pub const NAME: &str = "influx";

pub struct SeriesProjection {
    pub series: Series,
    pub max_age: chrono::Duration,
}

/// The points one event makes.
pub fn points(event: &StoredEvent) -> Vec<Point> {
    let at = timestamp_ns(event);
    let count = || Field::Int(1);
    let mut points = vec![Point::new("events", at)
        .tag("aggregate", event.aggregate_type.as_str())
        .tag("type", event.event_type.as_str())
        .field("count", count())];
    let change = match (event.aggregate_type.as_str(), event.event_type.as_str()) {
        ("Sitting", "SittingRequested") => Some(("sittings", Some("opened"))),
        ("Sitting", "SittingCompleted") => Some(("sittings", Some("completed"))),
        ("Message", "MessageSent") => Some(("messages", None)),
        _ => None,
    };
    if let Some((measurement, change)) = change {
        let mut point = Point::new(measurement, at);
        if let Some(change) = change {
            point = point.tag("change", change);
        }
        points.push(point.field("count", count()));
    }
    points
}

/// An event's points' timestamp: its commit time in microseconds, and its position modulo 1000
/// in the nanoseconds, so that the events of one transaction (one commit time) stay apart.
pub fn timestamp_ns(event: &StoredEvent) -> i64 {
    event
        .timestamp
        .timestamp_micros()
        .saturating_mul(1000)
        .saturating_add(event.position.global_position.rem_euclid(1000))
}

/// How far behind the log a projector's batch was: the oldest of its events, in seconds.
pub fn lag_point(projection: &str, seconds: f64, now: chrono::DateTime<chrono::Utc>) -> Point {
    Point::new(
        "projection_lag",
        now.timestamp_nanos_opt().unwrap_or(i64::MAX),
    )
    .tag("projection", projection)
    .field("seconds", Field::Float(seconds))
}

#[async_trait]
impl Projection for SeriesProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[
            "User",
            "Plant",
            "Sitting",
            "Advice",
            "Conversation",
            "Message",
            "ReadMark",
        ]
    }

    fn mode(&self) -> Mode {
        Mode::SideEffects
    }

    async fn apply(&self, _conn: &mut PgConnection, events: &[StoredEvent]) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        for event in events {
            if now - event.timestamp > self.max_age {
                continue;
            }
            for point in points(event) {
                self.series.send(&point);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Position;

    fn event(aggregate: &str, event_type: &str, position: i64) -> StoredEvent {
        StoredEvent {
            position: Position::new(position),
            aggregate_type: aggregate.into(),
            aggregate_id: "b0b0".into(),
            sequence: 1,
            event_type: event_type.into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            timestamp: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456)
                .expect("a time"),
        }
    }

    #[test]
    fn a_sitting_request_counts_as_an_event_and_an_opened_sitting() {
        let lines: Vec<String> = points(&event("Sitting", "SittingRequested", 2042))
            .iter()
            .map(Point::to_line)
            .collect();
        assert_eq!(
            lines,
            [
                "events,aggregate=Sitting,type=SittingRequested count=1i 1700000000123456042",
                "sittings,change=opened count=1i 1700000000123456042",
            ]
        );
        let lines: Vec<String> = points(&event("Message", "MessageSent", 7))
            .iter()
            .map(Point::to_line)
            .collect();
        assert_eq!(lines[1], "messages count=1i 1700000000123456007");
    }
}
