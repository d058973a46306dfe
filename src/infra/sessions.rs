//! Sessions in Redis: hash `session:{user_id}`, one field per session id, 24 h TTL (DESIGN.md §4).
//! A token names its session; a token whose session is gone is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use super::redis::Redis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What we remember about a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_seen_at: Option<DateTime<Utc>>,
    pub user_agent: Option<String>,
    /// SHA-256 (hex) of the session's current refresh token; earlier ones are refused.
    #[serde(default)]
    pub refresh_hash: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// It was the current token: it is replaced by the new one.
    Rotated,
    /// It was an old token of a live session: a sign of theft, so the session is revoked.
    ReusedAndRevoked,
    /// No such session (revoked, expired, or never existed).
    Unknown,
}

/// Compare-and-swap of the refresh hash, atomic in Redis.
const ROTATE: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local session = cjson.decode(value)
if session['refresh_hash'] ~= ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return -1
end
session['refresh_hash'] = ARGV[3]
session['last_seen_at'] = ARGV[4]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(session))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"#;

#[derive(Clone)]
pub struct Sessions {
    redis: Redis,
    ttl: Duration,
}

fn key(user_id: Uuid) -> String {
    format!("session:{user_id}")
}

impl Sessions {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    pub async fn create(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        info: &SessionInfo,
    ) -> redis::RedisResult<()> {
        let value = serde_json::to_string(info).unwrap_or_default();
        let ttl = self.ttl.as_secs() as i64;
        self.redis
            .call(|mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hset(key(user_id), session_id.to_string(), value)
                    .ignore()
                    .expire(key(user_id), ttl)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    pub async fn is_active(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        self.redis
            .call(
                |mut conn| async move { conn.hexists(key(user_id), session_id.to_string()).await },
            )
            .await
    }

    /// Revokes one session; true when it existed.
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let removed: i64 = self
            .redis
            .call(|mut conn| async move { conn.hdel(key(user_id), session_id.to_string()).await })
            .await?;
        Ok(removed > 0)
    }

    /// Every open session of a user.
    pub async fn list(&self, user_id: Uuid) -> redis::RedisResult<Vec<(Uuid, SessionInfo)>> {
        let all: std::collections::HashMap<String, String> = self
            .redis
            .call(|mut conn| async move { conn.hgetall(key(user_id)).await })
            .await?;
        let mut sessions: Vec<(Uuid, SessionInfo)> = all
            .into_iter()
            .filter_map(|(id, value)| Some((id.parse().ok()?, serde_json::from_str(&value).ok()?)))
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.1.created_at));
        Ok(sessions)
    }

    /// Replaces the session's refresh hash if `presented` is the current one.
    pub async fn rotate_refresh(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        presented: &str,
        next: &str,
    ) -> redis::RedisResult<Rotation> {
        let ttl = self.ttl.as_secs();
        let outcome: i64 = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(ROTATE)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .arg(presented)
                    .arg(next)
                    .arg(Utc::now().to_rfc3339())
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match outcome {
            1 => Rotation::Rotated,
            -1 => Rotation::ReusedAndRevoked,
            _ => Rotation::Unknown,
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        self.redis
            .call(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    /// Revokes every session of a user.
    pub async fn revoke_all(&self, user_id: Uuid) -> redis::RedisResult<()> {
        self.redis
            .call(|mut conn| async move { conn.del(key(user_id)).await })
            .await
    }
}
