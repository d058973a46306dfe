//! Sessions in Redis: hash `session:{user_id}`, one field per session id (DESIGN.md §4).
//!
//! A session carries the role its requests act with (authorization reads it here, never from the
//! token) and its own lifetime (ASVS 3.3.2): it ends after an idle timeout since its last refresh
//! and, whatever its activity, an absolute lifetime since its login, both by role ([`Lifetimes`]).
//! A login or refresh of one session never extends another. Activity is measured at refresh:
//! access tokens live shorter than any idle timeout (checked by the configuration), so an active
//! client refreshes well within it.
//!
//! Account changes (disable, role change, password change) are applied to the sessions in Redis
//! the moment they are committed, together with a per-user stamp `session_stamp:{user_id}`: the
//! stream version and log position of the latest such change. A login that read the account from
//! a read model older than the stamp waits for the read model and checks again, so a stale read
//! model can never open a session that the change should have prevented (see `identity::login`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::redis::Redis;
use crate::events::user::Role;

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
    /// The role this session acts with, kept current by account changes.
    #[serde(default)]
    pub role: Option<Role>,
    /// Whether the session was opened (or has since been confirmed) with a second factor.
    #[serde(default)]
    pub mfa: bool,
    /// When the user last proved who they are in this session (password, or a fresh TOTP code):
    /// sensitive actions ask for it to be recent (step-up).
    #[serde(default)]
    pub authenticated_at: Option<DateTime<Utc>>,
}

/// How long sessions last, by role: USER and BOTANIST sessions live long on a phone; ADMIN and
/// AUDITOR sessions, which see everyone's homes, short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub idle: Duration,
    pub absolute: Duration,
    pub privileged_idle: Duration,
    pub privileged_absolute: Duration,
}

impl Lifetimes {
    /// (idle, absolute) for a role.
    pub fn of(&self, role: Role) -> (Duration, Duration) {
        match role {
            Role::Admin | Role::Auditor => (self.privileged_idle, self.privileged_absolute),
            Role::User | Role::Botanist => (self.idle, self.absolute),
        }
    }

    /// The longest any session can live (the Redis key's lifetime).
    pub fn longest(&self) -> Duration {
        self.absolute.max(self.privileged_absolute)
    }
}

impl SessionInfo {
    /// When the session ends, by its role's idle timeout and absolute lifetime; `None` for a
    /// session without a role (from before roles lived in sessions), which is over.
    pub fn ends_at(&self, lifetimes: &Lifetimes) -> Option<DateTime<Utc>> {
        let (idle, absolute) = lifetimes.of(self.role?);
        let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        let active = self.last_seen_at.unwrap_or(self.created_at);
        Some((active + span(idle)).min(self.created_at + span(absolute)))
    }

    /// A session that can still act.
    pub fn is_live(&self, now: DateTime<Utc>, lifetimes: &Lifetimes) -> bool {
        self.ends_at(lifetimes).is_some_and(|end| end > now)
    }
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// It was the current token: it is replaced by the new one. The session as it now is.
    Rotated(SessionInfo),
    /// It was an old token of a live session: a sign of theft, so the session is revoked.
    ReusedAndRevoked,
    /// No such session (revoked, expired, or never existed).
    Unknown,
}

/// What an account change does to the user's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// Every session ends (disabled account, password reset).
    RevokeAll,
    /// Every session but this one ends (the user changed their password in it).
    RevokeOthers(Uuid),
    /// Every session now acts with this role.
    SetRole(Role),
    /// Sessions stay as they are; only logins that race with the change look again.
    Stamp,
}

/// The latest account change applied to the sessions: the user stream's version after it, and
/// its position in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub version: i64,
    pub position: i64,
}

/// Adds a session and stretches the hash's lifetime to cover it (never shortens it).
const CREATE: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"#;

/// Compare-and-swap of the refresh hash, atomic in Redis. Returns the updated session.
const ROTATE: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return {0, ''} end
local session = cjson.decode(value)
if session['refresh_hash'] ~= ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {-1, ''}
end
session['refresh_hash'] = ARGV[3]
session['last_seen_at'] = ARGV[4]
local encoded = cjson.encode(session)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
return {1, encoded}
"#;

/// Revokes every session of a user but one.
const REVOKE_OTHERS: &str = r#"
local removed = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], field)
    removed = removed + 1
  end
end
return removed
"#;

/// Applies an account change to every session of a user, and raises the user's stamp. A change
/// older than the stamp already applied (two admins racing) leaves the roles alone; a revocation
/// always applies.
const CHANGE: &str = r#"
local stamp = redis.call('GET', KEYS[2])
local newer = true
if stamp then
  local current = cjson.decode(stamp)
  if tonumber(current['version']) >= tonumber(ARGV[2]) then newer = false end
end
if newer then
  redis.call('SET', KEYS[2], cjson.encode({version = tonumber(ARGV[2]), position = tonumber(ARGV[3])}), 'EX', ARGV[4])
end
if ARGV[1] == 'revoke_all' then
  redis.call('DEL', KEYS[1])
elseif ARGV[1] == 'revoke_others' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if field ~= ARGV[6] then redis.call('HDEL', KEYS[1], field) end
  end
elseif ARGV[1] == 'set_role' and newer then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local session = cjson.decode(all[i + 1])
    session['role'] = ARGV[5]
    redis.call('HSET', KEYS[1], all[i], cjson.encode(session))
  end
end
return 1
"#;

/// Marks a session as having passed a second factor now, if it still exists.
const MARK_MFA: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local session = cjson.decode(value)
session['mfa'] = true
session['authenticated_at'] = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(session))
return 1
"#;

/// Marks a session as having a second factor (TOTP just turned on in it), if it still exists,
/// without touching `authenticated_at`: enrolling is no proof of who is there.
const MARK_ENROLLED: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local session = cjson.decode(value)
session['mfa'] = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(session))
return 1
"#;

/// Sets one session's role if it still exists (a login reconciling with a newer account state).
const SET_ROLE: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local session = cjson.decode(value)
session['role'] = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(session))
return 1
"#;

#[derive(Clone)]
pub struct Sessions {
    redis: Redis,
    lifetimes: Lifetimes,
}

fn key(user_id: Uuid) -> String {
    format!("session:{user_id}")
}

fn stamp_key(user_id: Uuid) -> String {
    format!("session_stamp:{user_id}")
}

fn encode(info: &SessionInfo) -> String {
    serde_json::to_string(info).unwrap_or_default()
}

impl Sessions {
    pub fn new(redis: Redis, lifetimes: Lifetimes) -> Self {
        Self { redis, lifetimes }
    }

    pub fn lifetimes(&self) -> &Lifetimes {
        &self.lifetimes
    }

    pub async fn create(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        info: &SessionInfo,
    ) -> redis::RedisResult<()> {
        let value = encode(info);
        let ttl = self.lifetimes.longest().as_secs().max(1);
        self.redis
            .call(|mut conn| async move {
                redis::Script::new(CREATE)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .arg(value)
                    .arg(ttl)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The session, if it exists and has not expired (an expired one is removed).
    pub async fn get(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> redis::RedisResult<Option<SessionInfo>> {
        let value: Option<String> = self
            .redis
            .call(|mut conn| async move { conn.hget(key(user_id), session_id.to_string()).await })
            .await?;
        self.judge(user_id, session_id, value).await
    }

    /// Where a session is kept: the hash and its field (for a caller that reads it together with
    /// something else, see [`crate::api::limits`]).
    pub fn location(user_id: Uuid, session_id: Uuid) -> (String, String) {
        (key(user_id), session_id.to_string())
    }

    /// What [`Sessions::get`] answers for the stored value of a session read just now (`None`:
    /// no such field).
    pub async fn judge(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        value: Option<String>,
    ) -> redis::RedisResult<Option<SessionInfo>> {
        let Some(info) = value.and_then(|v| serde_json::from_str::<SessionInfo>(&v).ok()) else {
            return Ok(None);
        };
        if info.is_live(Utc::now(), &self.lifetimes) {
            Ok(Some(info))
        } else {
            self.revoke(user_id, session_id).await?;
            Ok(None)
        }
    }

    /// Revokes one session; true when it existed.
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let removed: i64 = self
            .redis
            .call(|mut conn| async move { conn.hdel(key(user_id), session_id.to_string()).await })
            .await?;
        Ok(removed > 0)
    }

    /// Every live session of a user, newest first.
    pub async fn list(&self, user_id: Uuid) -> redis::RedisResult<Vec<(Uuid, SessionInfo)>> {
        let all: std::collections::HashMap<String, String> = self
            .redis
            .call(|mut conn| async move { conn.hgetall(key(user_id)).await })
            .await?;
        let now = Utc::now();
        let mut sessions: Vec<(Uuid, SessionInfo)> = all
            .into_iter()
            .filter_map(|(id, value)| Some((id.parse().ok()?, serde_json::from_str(&value).ok()?)))
            .filter(|(_, info): &(Uuid, SessionInfo)| info.is_live(now, &self.lifetimes))
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.1.created_at));
        Ok(sessions)
    }

    /// Replaces the session's refresh hash if `presented` is the current one, and marks that
    /// session alone active.
    pub async fn rotate_refresh(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        presented: &str,
        next: &str,
    ) -> redis::RedisResult<Rotation> {
        let now = Utc::now();
        let (outcome, session): (i64, String) = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(ROTATE)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .arg(presented)
                    .arg(next)
                    .arg(now.to_rfc3339())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match outcome {
            1 => match serde_json::from_str::<SessionInfo>(&session) {
                Ok(info) if info.role.is_some() => Rotation::Rotated(info),
                _ => Rotation::Unknown,
            },
            -1 => Rotation::ReusedAndRevoked,
            _ => Rotation::Unknown,
        })
    }

    /// Applies a committed account change (at stream `version`, log `position`) to every session
    /// of the user, and records it as the user's stamp.
    pub async fn apply_change(
        &self,
        user_id: Uuid,
        change: SessionChange,
        version: i64,
        position: i64,
    ) -> redis::RedisResult<()> {
        let (action, role, keep) = match change {
            SessionChange::RevokeAll => ("revoke_all", "", String::new()),
            SessionChange::RevokeOthers(keep) => ("revoke_others", "", keep.to_string()),
            SessionChange::SetRole(role) => ("set_role", role.as_str(), String::new()),
            SessionChange::Stamp => ("stamp", "", String::new()),
        };
        // The stamp must outlive any read model lag worth waiting for: a day is plenty.
        let ttl: u64 = 24 * 3600;
        self.redis
            .call(|mut conn| async move {
                redis::Script::new(CHANGE)
                    .key(key(user_id))
                    .key(stamp_key(user_id))
                    .arg(action)
                    .arg(version)
                    .arg(position)
                    .arg(ttl)
                    .arg(role)
                    .arg(keep)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The latest account change applied to the user's sessions, if any is recent.
    pub async fn stamp(&self, user_id: Uuid) -> redis::RedisResult<Option<Stamp>> {
        let value: Option<String> = self
            .redis
            .call(|mut conn| async move { conn.get(stamp_key(user_id)).await })
            .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Sets one session's role; false when the session is gone.
    pub async fn set_role(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        role: Role,
    ) -> redis::RedisResult<bool> {
        let updated: i64 = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(SET_ROLE)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .arg(role.as_str())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(updated == 1)
    }

    /// Records that the session just passed a second factor; false when it is gone.
    pub async fn mark_mfa(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let now = Utc::now().to_rfc3339();
        let updated: i64 = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(MARK_MFA)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .arg(now)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(updated == 1)
    }

    /// Records that TOTP was turned on in this session (it now counts as having a second
    /// factor), leaving its step-up clock alone; false when it is gone.
    pub async fn mark_enrolled(&self, user_id: Uuid, session_id: Uuid) -> redis::RedisResult<bool> {
        let updated: i64 = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(MARK_ENROLLED)
                    .key(key(user_id))
                    .arg(session_id.to_string())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(updated == 1)
    }

    /// Claims `name` for `ttl`: true the first time, false while an earlier claim lasts (a TOTP
    /// code accepted once is refused after).
    pub async fn claim_once(&self, name: String, ttl: Duration) -> redis::RedisResult<bool> {
        let secs = ttl.as_secs().max(1);
        let claimed: Option<String> = self
            .redis
            .call(|mut conn| async move {
                redis::cmd("SET")
                    .arg(name)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(secs)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(claimed.is_some())
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        self.redis
            .call(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    /// Revokes every session of a user but `keep`; returns how many ended.
    pub async fn revoke_others(&self, user_id: Uuid, keep: Uuid) -> redis::RedisResult<u64> {
        self.redis
            .call(|mut conn| async move {
                redis::Script::new(REVOKE_OTHERS)
                    .key(key(user_id))
                    .arg(keep.to_string())
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }

    /// Revokes every session of a user.
    pub async fn revoke_all(&self, user_id: Uuid) -> redis::RedisResult<()> {
        self.redis
            .call(|mut conn| async move { conn.del(key(user_id)).await })
            .await
    }
}
