//! Per-account limits on guessing, in Redis, whatever address the guesses come from (the rate
//! limits of `api::limits` count per client address, and an IPv6 client has many /64s).
//!
//! - **Password checks**: `password_attempts:{account}` is a sliding log (a sorted set of
//!   attempt times, Redis's clock): at most `limit` checks in any `window`. An attempt is
//!   reserved before the password is checked, so concurrent guesses cannot overrun the limit, and
//!   released when the password was right: only wrong guesses stay counted.
//! - **Second-factor codes**: `mfa_failures:{user_id}` counts wrong codes in a row (a right code
//!   deletes it; forgotten after a day without failures); the failure that reaches the threshold
//!   sets `mfa_lock:{user_id}` for the lockout time, during which every code is refused unchecked.
//!   Exactly one failure reports [`Failure::LockedNow`], so the lock is recorded (and mailed)
//!   once.
//!
//! Every call fails closed: a Redis error is returned, and callers refuse the attempt.

use std::time::Duration;

use uuid::Uuid;

use super::redis::Redis;

/// How long a run of wrong codes is remembered without a new one.
const FAILURES_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Reserves one password check in the sliding log, or says when the next one is allowed.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = window
  if oldest[2] then wait = tonumber(oldest[2]) + window - now end
  return {0, wait}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"#;

/// Counts a wrong code; locks at the threshold. Returns {state, n}: 0 counted (n failures so
/// far), 1 locked by this failure (n = lock ms), 2 already locked (n = ms left).
const FAIL: &str = r#"
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return {2, left} end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return {1, tonumber(ARGV[2])}
end
return {0, n}
"#;

/// What an attempt at a password check may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Go ahead; release it (with [`Attempts::release_password`]) if the password was right.
    Granted(String),
    /// Too many recent attempts on this account: retry after this long.
    Refused(Duration),
}

/// What a wrong second-factor code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted: this many wrong codes in a row so far.
    Counted(u32),
    /// This failure reached the threshold: the second factor is locked for this long.
    LockedNow(Duration),
    /// It was already locked (a code checked while another attempt locked it).
    AlreadyLocked(Duration),
}

#[derive(Clone)]
pub struct Attempts {
    redis: Redis,
}

fn password_key(account: &str) -> String {
    format!("password_attempts:{account}")
}

fn failures_key(user_id: Uuid) -> String {
    format!("mfa_failures:{user_id}")
}

fn lock_key(user_id: Uuid) -> String {
    format!("mfa_lock:{user_id}")
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Attempts {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Reserves a password check against `account` (an e-mail hash in hex: the same key whether
    /// or not an account has that address): at most `limit` kept in any `window`.
    pub async fn reserve_password(
        &self,
        account: &str,
        limit: u32,
        window: Duration,
    ) -> redis::RedisResult<Reservation> {
        let member = Uuid::new_v4().simple().to_string();
        let key = password_key(account);
        let window_ms = millis(window);
        let (granted, wait_ms): (i64, i64) = {
            let member = member.clone();
            self.redis
                .call(|mut conn| async move {
                    redis::Script::new(RESERVE)
                        .key(key)
                        .arg(limit)
                        .arg(window_ms)
                        .arg(member)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?
        };
        Ok(if granted == 1 {
            Reservation::Granted(member)
        } else {
            Reservation::Refused(Duration::from_millis(wait_ms.max(1) as u64))
        })
    }

    /// Gives back a reserved attempt: the password was right.
    pub async fn release_password(&self, account: &str, member: String) -> redis::RedisResult<()> {
        let key = password_key(account);
        self.redis
            .call(|mut conn| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// How long the user's second factor stays locked; `None` when it is not.
    pub async fn mfa_locked(&self, user_id: Uuid) -> redis::RedisResult<Option<Duration>> {
        let key = lock_key(user_id);
        let left: i64 = self
            .redis
            .call(
                |mut conn| async move { redis::cmd("PTTL").arg(key).query_async(&mut conn).await },
            )
            .await?;
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    /// Counts a wrong code; the `threshold`-th in a row locks the second factor for `lockout`.
    pub async fn mfa_failed(
        &self,
        user_id: Uuid,
        threshold: u32,
        lockout: Duration,
    ) -> redis::RedisResult<Failure> {
        let lockout_ms = millis(lockout);
        let (state, n): (i64, i64) = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(FAIL)
                    .key(failures_key(user_id))
                    .key(lock_key(user_id))
                    .arg(threshold.max(1))
                    .arg(lockout_ms)
                    .arg(FAILURES_MEMORY.as_secs())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let ms = Duration::from_millis(n.max(1) as u64);
        Ok(match state {
            1 => Failure::LockedNow(ms),
            2 => Failure::AlreadyLocked(ms),
            _ => Failure::Counted(u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    /// A right code: the run of wrong ones is over.
    pub async fn mfa_succeeded(&self, user_id: Uuid) -> redis::RedisResult<()> {
        let key = failures_key(user_id);
        self.redis
            .call(|mut conn| async move {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}
