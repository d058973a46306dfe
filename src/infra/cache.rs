//! The query cache (DESIGN.md §4): answers of hot public reads in Redis under `cache:{key}` for
//! 5 minutes. A key names the version of the read models the answer came from
//! (`read_model_versions`, bumped by projectors in the transaction that changes them), so a
//! change invalidates every answer built before it, and an answer stored under a version always
//! shows at least that version: a user who reads after their own write (which waited for the
//! projection) never gets an answer from before it. Redis down or slow: a miss, never an error.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::redis::Redis;

/// How long an answer is kept.
pub const TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct QueryCache {
    redis: Redis,
    /// The database's own id (`deployment`): answers of two databases sharing one Redis (two
    /// deployments, parallel tests) never meet.
    namespace: String,
}

impl QueryCache {
    pub fn new(redis: Redis, namespace: String) -> Self {
        QueryCache { redis, namespace }
    }

    /// The key of an answer of `kind`, for these read-model versions and request parameters.
    pub fn key(&self, kind: &str, versions: &[i64], parameters: &str) -> String {
        let versions: Vec<String> = versions.iter().map(i64::to_string).collect();
        let digest = Sha256::digest(parameters.as_bytes());
        let hash: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "cache:{kind}:{}:v{}:{hash}",
            self.namespace,
            versions.join(".")
        )
    }

    /// A stored answer; `None` on a miss, on an answer that no longer parses, or when Redis
    /// fails (counted as `error`).
    pub async fn get<T: DeserializeOwned>(&self, kind: &'static str, key: &str) -> Option<T> {
        let key = key.to_string();
        let found = self
            .redis
            .call(|mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        let (result, value) = match found {
            Ok(Some(text)) => match serde_json::from_str(&text) {
                Ok(value) => ("hit", Some(value)),
                Err(_) => ("miss", None),
            },
            Ok(None) => ("miss", None),
            Err(err) => {
                tracing::debug!(error = %err, "query cache unavailable");
                ("error", None)
            }
        };
        metrics::counter!("cache_requests_total", "cache" => kind, "result" => result).increment(1);
        value
    }

    /// Stores an answer for [`TTL`]; a failure is logged and forgotten.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let key = key.to_string();
        let stored = self
            .redis
            .call(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(text)
                    .arg("EX")
                    .arg(TTL.as_secs())
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        if let Err(err) = stored {
            tracing::debug!(error = %err, "query cache not written");
        }
    }
}

/// This database's id in shared infrastructure (the `deployment` row).
pub async fn namespace(pool: &PgPool) -> Result<String, sqlx::Error> {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM deployment")
        .fetch_one(pool)
        .await?;
    Ok(id.simple().to_string())
}

/// The versions of these read models (0 for one never changed), in the order asked.
pub async fn versions(pool: &PgPool, names: &[&str]) -> Result<Vec<i64>, sqlx::Error> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let found: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, version FROM read_model_versions WHERE name = ANY($1)")
            .bind(&names)
            .fetch_all(pool)
            .await?;
    Ok(names
        .iter()
        .map(|name| {
            found
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        })
        .collect())
}

/// Bumps a read model's version; projectors call it in the transaction of a batch that changed
/// the model.
pub async fn bump(conn: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO read_model_versions (name, version) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET version = read_model_versions.version + 1",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}
