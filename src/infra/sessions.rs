//! Sessions in Redis: hash `session:{user_id}`, one field per session id, 24 h TTL (DESIGN.md §4).
//! A token names its session; a token whose session is gone is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What we remember about a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub created_at: DateTime<Utc>,
    pub user_agent: Option<String>,
}

#[derive(Clone)]
pub struct Sessions {
    redis: ConnectionManager,
    ttl: Duration,
}

fn key(user_id: Uuid) -> String {
    format!("session:{user_id}")
}

impl Sessions {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    pub async fn create(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        info: &SessionInfo,
    ) -> redis::RedisResult<()> {
        let value = serde_json::to_string(info).unwrap_or_default();
        let mut conn = self.redis.clone();
        redis::pipe()
            .atomic()
            .hset(key(user_id), session_id.to_string(), value)
            .ignore()
            .expire(key(user_id), self.ttl.as_secs() as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    pub async fn is_active(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        conn.hexists(key(user_id), session_id.to_string()).await
    }

    /// Revokes one session; true when it existed.
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let removed: i64 = conn.hdel(key(user_id), session_id.to_string()).await?;
        Ok(removed > 0)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// Revokes every session of a user.
    pub async fn revoke_all(&self, user_id: Uuid) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        conn.del(key(user_id)).await
    }
}

/// Opens a Redis connection that reconnects by itself and never waits long for an answer.
pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config).await
}
