//! The `Idempotency-Key` claim a request runs under, as the event store sees it.
//!
//! The HTTP middleware ([`crate::api::idempotency`]) runs the handler inside [`scope`]; every
//! append made in that scope writes, in the same statement (so in the same transaction) as its
//! events, the position of its last event on the claim's row (`idempotency_keys.
//! committed_position`). "Did the first attempt commit?" then has one answer, whatever happened
//! to its connection or its process: the row says so.
//!
//! A retry that finds a claim with a committed position and no stored answer runs the handler
//! again with that commit as [`Claim::prior`]: the handler takes the same resource id
//! ([`new_id`]) and the store answers the command with the committed events instead of appending
//! (see [`prior_for`]), so the retry gets the first outcome and the log gets nothing more.
//!
//! That answer must not change after it was read. PostgreSQL notices a vanished client only when
//! it next talks to it: an append whose connection broke on our side (a partition, a time-out
//! that dropped the request, a process that died) may still be running, blocked on the
//! commit-order lock, and commit after we concluded "nothing committed" and freed the claim; the
//! retry would then apply the command a second time. So the append is conditional on the claim
//! in the same statement: it locks the claim's row (`FOR UPDATE`, with our `created_at` and no
//! answer) and inserts nothing when that row is gone or changed. Every write that frees or takes
//! over a claim (release, forget, takeover, sweep) is an `UPDATE`/`DELETE`/`ON CONFLICT` on that
//! row, which waits for the row lock and then judges the row as committed. Under either order the
//! two are serialised:
//! - the append locked the row first: whoever frees it waits for the append's transaction, then
//!   sees `committed_position` set (commit) or not (rollback), and answers accordingly;
//! - the claim was freed or taken over first: the append's lock finds the row deleted or with
//!   another `created_at` (read committed re-reads the newest version of a locked row), so the
//!   orphaned statement inserts nothing and commits an empty append.
//!
//! The other way, terminating the old backend (`pg_terminate_backend` on a pid remembered at
//! claim time) before freeing the claim, was not taken: the append does not run on the claim's
//! connection (its pid is not known when the claim is made), a group commit shares one backend
//! among several requests' appends (terminating it cuts the others), a pid may be reused, and an
//! instance that died cannot say which backend was its. Requests without a key keep the plain
//! `INSERT` (no lock, no join).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::Committed;
use super::Position;

/// A claimed key: the row of `idempotency_keys` an append marks.
#[derive(Debug, Clone)]
pub struct Claim {
    pub user_id: Uuid,
    pub key: String,
    pub claimed_at: DateTime<Utc>,
    /// What an earlier attempt under this key committed (its last event), if it did.
    pub prior: Option<Prior>,
}

/// The last event an earlier attempt appended.
#[derive(Debug, Clone)]
pub struct Prior {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub committed: Committed,
}

impl Prior {
    /// Reads the event at `position` (the claim's mark); `None` if it is gone.
    pub async fn load(pool: &sqlx::PgPool, position: i64) -> Result<Option<Prior>, sqlx::Error> {
        let row: Option<(String, String, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, timestamp FROM events \
              WHERE global_position = $1",
        )
        .bind(position)
        .fetch_optional(pool)
        .await?;
        Ok(
            row.map(|(aggregate_type, aggregate_id, sequence, at)| Prior {
                aggregate_type,
                aggregate_id,
                committed: Committed {
                    version: sequence,
                    position: Some(Position::new(position)),
                    at: Some(at),
                },
            }),
        )
    }
}

/// The claim as an append marks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub user_id: Uuid,
    pub key: String,
    pub claimed_at: DateTime<Utc>,
}

tokio::task_local! {
    static CLAIM: Claim;
}

/// Runs `work` (a handler) under `claim`.
pub async fn scope<F: std::future::Future>(claim: Claim, work: F) -> F::Output {
    CLAIM.scope(claim, work).await
}

/// The mark for appends made now: `None` outside an idempotent request.
pub fn mark() -> Option<Mark> {
    CLAIM
        .try_with(|claim| Mark {
            user_id: claim.user_id,
            key: claim.key.clone(),
            claimed_at: claim.claimed_at,
        })
        .ok()
}

/// The earlier attempt's commit, when it was a command on this aggregate.
pub fn prior_for(aggregate_type: &str, aggregate_id: &str) -> Option<Committed> {
    CLAIM
        .try_with(|claim| {
            claim
                .prior
                .as_ref()
                .filter(|p| p.aggregate_type == aggregate_type && p.aggregate_id == aggregate_id)
                .map(|p| p.committed)
        })
        .ok()
        .flatten()
}

/// The earlier attempt's commit on an aggregate of this type, with the aggregate's id.
pub fn prior_of_type(aggregate_type: &str) -> Option<(String, Committed)> {
    CLAIM
        .try_with(|claim| {
            claim
                .prior
                .as_ref()
                .filter(|p| p.aggregate_type == aggregate_type)
                .map(|p| (p.aggregate_id.clone(), p.committed))
        })
        .ok()
        .flatten()
}

/// The id of a resource a creating command makes: the one the earlier attempt under this key
/// committed, else a new one.
pub fn new_id(aggregate_type: &str) -> Uuid {
    prior_of_type(aggregate_type)
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or_else(Uuid::now_v7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(prior: Option<Prior>) -> Claim {
        Claim {
            user_id: Uuid::nil(),
            key: "k".into(),
            claimed_at: DateTime::<Utc>::UNIX_EPOCH,
            prior,
        }
    }

    #[tokio::test]
    async fn outside_a_claim_there_is_no_mark_and_ids_are_new() {
        assert_eq!(mark(), None);
        assert_eq!(prior_for("Plant", "x"), None);
        assert_ne!(new_id("Plant"), new_id("Plant"));
    }

    #[tokio::test]
    async fn a_prior_commit_gives_its_id_and_outcome_to_its_aggregate_only() {
        let id = Uuid::now_v7();
        let committed = Committed {
            version: 1,
            position: Some(Position::new(7)),
            at: Some(DateTime::<Utc>::UNIX_EPOCH),
        };
        let prior = Prior {
            aggregate_type: "Plant".into(),
            aggregate_id: id.to_string(),
            committed,
        };
        scope(claim(Some(prior)), async {
            assert_eq!(new_id("Plant"), id);
            assert_ne!(new_id("Sitting"), id);
            assert_eq!(prior_for("Plant", &id.to_string()), Some(committed));
            assert_eq!(prior_for("Plant", "other"), None);
            assert_eq!(prior_for("Sitting", &id.to_string()), None);
            assert_eq!(mark().map(|m| m.key), Some("k".to_string()));
        })
        .await;
        scope(claim(None), async {
            assert_ne!(new_id("Plant"), id);
            assert!(mark().is_some());
        })
        .await;
    }
}
