//! WebSocket fan-out across instances. Frames for a user are published on the Redis channel
//! `user:{user_id}` (by the `fanout` projector after events commit, or straight away for typing);
//! every instance subscribes to `user:*` and hands each frame to the sockets of that user it
//! holds. Each socket has a bounded queue: a client too slow to drain it is dropped (and its
//! socket closed with a code), so it cannot stall anyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::redis::Redis;

/// Frames waiting for one socket before it counts as too slow.
pub const QUEUE: usize = 256;

struct Client {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
    overflowed: Arc<AtomicBool>,
}

/// The sockets of this instance, by user.
#[derive(Default)]
pub struct Hub {
    clients: RwLock<HashMap<Uuid, Vec<Client>>>,
    next_id: AtomicU64,
}

/// One socket's end: its frames, and whether it was dropped for being too slow.
pub struct Registration {
    pub id: u64,
    pub frames: mpsc::Receiver<Arc<str>>,
    pub overflowed: Arc<AtomicBool>,
}

impl Hub {
    pub fn register(&self, user: Uuid) -> Registration {
        let (tx, frames) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        if let Ok(mut clients) = self.clients.write() {
            clients.entry(user).or_default().push(Client {
                id,
                tx,
                overflowed: overflowed.clone(),
            });
        }
        metrics::gauge!("websocket_connections").increment(1.0);
        Registration {
            id,
            frames,
            overflowed,
        }
    }

    pub fn unregister(&self, user: Uuid, id: u64) {
        if let Ok(mut clients) = self.clients.write() {
            if let Some(list) = clients.get_mut(&user) {
                let before = list.len();
                list.retain(|c| c.id != id);
                if list.len() < before {
                    metrics::gauge!("websocket_connections").decrement(1.0);
                }
                if list.is_empty() {
                    clients.remove(&user);
                }
            }
        }
    }

    /// Hands a frame to every socket of `user` here; drops those whose queue is full.
    pub fn deliver(&self, user: Uuid, frame: Arc<str>) {
        let mut slow = Vec::new();
        if let Ok(clients) = self.clients.read() {
            for client in clients.get(&user).into_iter().flatten() {
                match client.tx.try_send(frame.clone()) {
                    Ok(()) => metrics::counter!("websocket_frames_total", "result" => "queued")
                        .increment(1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        client.overflowed.store(true, Ordering::Relaxed);
                        metrics::counter!("websocket_frames_total", "result" => "dropped")
                            .increment(1);
                        slow.push(client.id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        for id in slow {
            self.unregister(user, id);
        }
    }

    /// Hands a frame to every socket of this instance.
    pub fn broadcast(&self, frame: Arc<str>) {
        let users: Vec<Uuid> = self
            .clients
            .read()
            .map(|c| c.keys().copied().collect())
            .unwrap_or_default();
        for user in users {
            self.deliver(user, frame.clone());
        }
    }

    /// Sockets open on this instance.
    pub fn connections(&self) -> usize {
        self.clients
            .read()
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// The channel of a user's frames.
pub fn channel(user: Uuid) -> String {
    format!("user:{user}")
}

/// Publishes a frame for `user` to every instance.
pub async fn publish(redis: &Redis, user: Uuid, frame: &str) -> redis::RedisResult<()> {
    let (channel, frame) = (channel(user), frame.to_string());
    redis
        .call(|mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(frame)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}

/// Frames published per pipeline: a round trip each, well within the call deadline.
const PUBLISH_CHUNK: usize = 256;

/// Publishes frames, each for its user, in order, a pipeline of [`PUBLISH_CHUNK`] at a time
/// (one round trip each rather than one per frame).
pub async fn publish_all(redis: &Redis, frames: &[(Uuid, String)]) -> redis::RedisResult<()> {
    for chunk in frames.chunks(PUBLISH_CHUNK) {
        let mut pipeline = redis::pipe();
        for (user, frame) in chunk {
            pipeline
                .cmd("PUBLISH")
                .arg(channel(*user))
                .arg(frame)
                .ignore();
        }
        redis
            .call(|mut conn| async move { pipeline.query_async::<()>(&mut conn).await })
            .await?;
    }
    Ok(())
}

/// Follows `user:*` on Redis and hands frames to this instance's sockets; reconnects when Redis
/// goes away (what was published meanwhile is recovered by clients with `resume`).
pub async fn run_subscriber(redis_url: String, hub: Arc<Hub>) {
    let mut first = true;
    loop {
        match subscribe(&redis_url, &hub, first).await {
            Ok(()) => tracing::warn!("websocket fan-out: Redis subscription ended; resubscribing"),
            Err(err) => tracing::warn!(error = %err, "websocket fan-out: Redis unavailable"),
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sent to every socket here when the subscription comes back after a loss: frames published
/// meanwhile did not reach this instance, so clients `resume` from their last position.
pub const RESYNC: &str = r#"{"type":"resync"}"#;

async fn subscribe(redis_url: &str, hub: &Hub, first: bool) -> redis::RedisResult<()> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("user:*").await?;
    if !first {
        tracing::info!("websocket fan-out: Redis subscription back; telling sockets to resume");
        hub.broadcast(Arc::from(RESYNC));
    }
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Some(user) = message
            .get_channel_name()
            .strip_prefix("user:")
            .and_then(|id| id.parse::<Uuid>().ok())
        else {
            continue;
        };
        if let Ok(frame) = message.get_payload::<String>() {
            hub.deliver(user, Arc::from(frame));
        }
    }
    Ok(())
}

/// How long a socket's presence lasts without being refreshed.
pub const PRESENCE_SECS: u64 = 30;

/// Marks `user` online (for [`PRESENCE_SECS`]) and seen now; sockets refresh it while open.
pub async fn seen(redis: &Redis, user: Uuid, online: bool) -> redis::RedisResult<()> {
    let now = chrono::Utc::now().to_rfc3339();
    redis
        .call(|mut conn| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(format!("last_seen:{user}"))
                .arg(&now)
                .arg("EX")
                .arg(30 * 86_400)
                .ignore();
            if online {
                pipe.cmd("SET")
                    .arg(format!("presence:{user}"))
                    .arg(&now)
                    .arg("EX")
                    .arg(PRESENCE_SECS)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        })
        .await
}

/// Whether each user is online, and when they were last seen (unknown when Redis fails).
pub async fn presence(
    redis: &Redis,
    users: &[Uuid],
) -> Vec<(bool, Option<chrono::DateTime<chrono::Utc>>)> {
    if users.is_empty() {
        return Vec::new();
    }
    let keys: Vec<String> = users
        .iter()
        .flat_map(|u| [format!("presence:{u}"), format!("last_seen:{u}")])
        .collect();
    let values: Vec<Option<String>> = redis
        .call(|mut conn| async move {
            redis::cmd("MGET")
                .arg(keys)
                .query_async::<Vec<Option<String>>>(&mut conn)
                .await
        })
        .await
        .unwrap_or_default();
    users
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let online = values.get(2 * i).is_some_and(Option::is_some);
            let last_seen = values
                .get(2 * i + 1)
                .and_then(|v| v.as_deref())
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            (online, last_seen)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_does_not_drain_its_queue_is_dropped_and_told_why() {
        let hub = Hub::default();
        let (slow, quick) = (Uuid::new_v4(), Uuid::new_v4());
        let mut slow_end = hub.register(slow);
        let mut quick_end = hub.register(quick);
        for n in 0..QUEUE {
            hub.deliver(slow, Arc::from(format!("{n}")));
            hub.deliver(quick, Arc::from(format!("{n}")));
            assert!(quick_end.frames.try_recv().is_ok());
        }
        assert!(!slow_end.overflowed.load(Ordering::Relaxed));
        hub.deliver(slow, Arc::from("one too many"));
        assert!(
            slow_end.overflowed.load(Ordering::Relaxed),
            "flagged as too slow"
        );
        assert_eq!(hub.connections(), 1, "and no longer served");
        // What was queued is still there; then the queue ends (the socket closes with 4008).
        let mut drained = 0;
        while slow_end.frames.try_recv().is_ok() {
            drained += 1;
        }
        assert_eq!(drained, QUEUE);
        assert!(matches!(
            slow_end.frames.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // The other socket was not held up.
        hub.deliver(quick, Arc::from("still here"));
        assert_eq!(
            quick_end.frames.try_recv().ok().as_deref(),
            Some("still here")
        );
    }
}
