//! Rate limiting in Redis with GCRA (the generic cell rate algorithm): one key per
//! `rate:{ip}:{endpoint}` holding a "theoretical arrival time". Unlike fixed one-minute buckets it
//! lets no double burst through at a bucket boundary, and unlike a sliding log it stores one number
//! per key. Time is Redis's own (`TIME`), so instances with drifting clocks agree.

use std::time::Duration;

use super::redis::Redis;

/// `limit` requests per `window`, spread evenly, with a burst of up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Until a rejected request may be retried.
    pub retry_after: Duration,
    /// Until the quota is whole again.
    pub reset_after: Duration,
}

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then
  return {0, allow_at - now, 0, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, 0, math.floor((window - (new_tat - now)) / interval), new_tat - now}
"#;

#[derive(Clone)]
pub struct RateLimiter {
    redis: Redis,
}

impl RateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Counts one request against `key`.
    pub async fn check(&self, key: &str, quota: Quota) -> redis::RedisResult<Decision> {
        let window_ms = quota.window.as_millis().max(1) as u64;
        let interval_ms = (window_ms / u64::from(quota.limit.max(1))).max(1);
        let key = key.to_string();
        let verdict: (i64, i64, i64, i64) = self
            .redis
            .call(|mut conn| async move {
                redis::Script::new(GCRA)
                    .key(key)
                    .arg(interval_ms)
                    .arg(window_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(decision(verdict, quota))
    }

    /// As [`RateLimiter::check`], and reads field `field` of hash `hash` in the same round trip
    /// (a pipeline: the request's session, so an authenticated request costs one round trip).
    pub async fn check_and_hget(
        &self,
        key: &str,
        quota: Quota,
        hash: String,
        field: String,
    ) -> redis::RedisResult<(Decision, Option<String>)> {
        let window_ms = quota.window.as_millis().max(1) as u64;
        let interval_ms = (window_ms / u64::from(quota.limit.max(1))).max(1);
        let key = key.to_string();
        let (verdict, value): ((i64, i64, i64, i64), Option<String>) = self
            .redis
            .call(|mut conn| async move {
                // EVAL with the script's text: a pipeline cannot fall back from EVALSHA, and
                // Redis caches the compiled script by its digest either way.
                redis::pipe()
                    .cmd("EVAL")
                    .arg(GCRA)
                    .arg(1)
                    .arg(key)
                    .arg(interval_ms)
                    .arg(window_ms)
                    .cmd("HGET")
                    .arg(hash)
                    .arg(field)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok((decision(verdict, quota), value))
    }
}

fn decision(
    (allowed, retry_ms, remaining, reset_ms): (i64, i64, i64, i64),
    quota: Quota,
) -> Decision {
    Decision {
        allowed: allowed == 1,
        limit: quota.limit,
        remaining: remaining.max(0) as u32,
        retry_after: Duration::from_millis(retry_ms.max(0) as u64),
        reset_after: Duration::from_millis(reset_ms.max(0) as u64),
    }
}
