//! One Redis connection for the process (it reconnects by itself), with a hard deadline on every
//! call and a short circuit breaker: when Redis is down, callers learn it within the deadline,
//! and for a moment after that at once, instead of queueing behind reconnect attempts.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, RedisResult};

#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    deadline: Duration,
    /// Until when (ms since the epoch) calls fail fast after a failure.
    open_until_ms: Arc<AtomicU64>,
}

/// How long calls fail fast after Redis failed.
const BREAK: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Redis {
    /// Connects with the given per-call deadline. Redis must answer a `PING` at start-up, within
    /// a few deadlines: a server that wants a password REDIS_URL lacks (`NOAUTH`), refuses the
    /// one it has (`WRONGPASS`), or does not answer, stops the start with that reason instead of
    /// hanging or starting an API whose every session call fails.
    pub async fn connect(url: &str, deadline: Duration) -> RedisResult<Redis> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(deadline)
            .set_response_timeout(deadline)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let start_up = (deadline * 3).max(Duration::from_secs(3));
        let no_answer =
            || RedisError::from((ErrorKind::IoError, "Redis did not answer at start-up"));
        let conn =
            tokio::time::timeout(start_up, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| no_answer())??;
        let mut probe = conn.clone();
        let pong: String =
            tokio::time::timeout(start_up, redis::cmd("PING").query_async(&mut probe))
                .await
                .map_err(|_| no_answer())??;
        if pong != "PONG" {
            return Err(RedisError::from((
                ErrorKind::ResponseError,
                "Redis answered PING with something else",
                pong,
            )));
        }
        Ok(Redis {
            conn,
            deadline,
            open_until_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Runs one call on the connection, within the deadline.
    pub async fn call<T, F, Fut>(&self, f: F) -> RedisResult<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(RedisError::from((
                ErrorKind::IoError,
                "redis unavailable (recent failure)",
            )));
        }
        let result = match tokio::time::timeout(self.deadline, f(self.conn.clone())).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                ErrorKind::IoError,
                "redis call timed out",
            ))),
        };
        if let Err(err) = &result {
            if err.is_io_error()
                || err.is_timeout()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
            {
                self.open_until_ms
                    .store(now_ms() + BREAK.as_millis() as u64, Ordering::Relaxed);
            }
        }
        result
    }
}
