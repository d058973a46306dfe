//! Every unique and exclusion constraint of the schema, and what its violation (`23505`,
//! `23P01`) means to the caller: one table, so a constraint a command meets is never a 500.
//!
//! Commands retry the ones that say "another writer got there first" ([`OnViolation::Retry`]:
//! the command bus reloads the aggregate and decides again, then answers 409
//! `concurrent_modification` when its retries run out); every other one answers 409 with its own
//! code (`api::error`). A test (`tests/api/constraints.rs`) checks that this table names every
//! unique and exclusion constraint of the migrated schema, and nothing else.

/// What a violation of one constraint means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnViolation {
    /// A concurrent command changed the same thing first: reload and decide again.
    Retry,
    /// A state conflict: 409 with this code and message.
    Conflict {
        code: &'static str,
        message: &'static str,
    },
}

/// One unique or exclusion constraint (or unique index), by the name PostgreSQL reports.
#[derive(Debug, Clone, Copy)]
pub struct Constraint {
    pub name: &'static str,
    pub table: &'static str,
    /// Who can meet it, and how it is handled before the edge.
    pub reached_by: &'static str,
    pub on_violation: OnViolation,
}

/// The events' optimistic concurrency: (aggregate_type, aggregate_id, sequence).
pub const EVENTS_PKEY: &str = "events_pkey";
/// The sitters' calendar: one booking per sitting.
pub const SITTER_BOOKINGS_PKEY: &str = "sitter_bookings_pkey";
/// The sitters' calendar: no overlapping days for one sitter.
pub const SITTER_BOOKINGS_OVERLAP: &str = "sitter_bookings_sitter_id_days_excl";

const fn conflict(code: &'static str, message: &'static str) -> OnViolation {
    OnViolation::Conflict { code, message }
}

const READ_MODEL: &str = "projectors only (inserts are ON CONFLICT DO NOTHING / DO UPDATE)";
const ALREADY_EXISTS: OnViolation = conflict("already_exists", "this already exists");

/// Every unique and exclusion constraint of the schema.
pub const CONSTRAINTS: &[Constraint] = &[
    // Command paths.
    Constraint {
        name: EVENTS_PKEY,
        table: "events",
        reached_by: "every append: another command appended this aggregate's next event first; \
                     retried (COMMAND_RETRIES), then 409",
        on_violation: OnViolation::Retry,
    },
    Constraint {
        name: "events_global_position",
        table: "events",
        reached_by: "every append; an identity column, never given by a writer",
        on_violation: OnViolation::Retry,
    },
    Constraint {
        name: SITTER_BOOKINGS_PKEY,
        table: "sitter_bookings",
        reached_by: "accepting a sitter (SitterCalendar): the same sitting was accepted at the \
                     same moment; retried, the reload answers `sitting_not_open`",
        on_violation: OnViolation::Retry,
    },
    Constraint {
        name: SITTER_BOOKINGS_OVERLAP,
        table: "sitter_bookings",
        reached_by: "accepting a sitter (SitterCalendar): booked on overlapping days by another \
                     sitting (`SittingError::SitterUnavailable`); by this same sitting, accepted \
                     at the same moment: retried",
        on_violation: conflict(
            "sitter_unavailable",
            "the sitter is already booked on overlapping days",
        ),
    },
    Constraint {
        name: "email_claims_pkey",
        table: "email_claims",
        reached_by: "registration (claimed ON CONFLICT DO NOTHING: `email_taken`)",
        on_violation: conflict("email_taken", "this e-mail address is already registered"),
    },
    Constraint {
        name: "idempotency_keys_pkey",
        table: "idempotency_keys",
        reached_by: "creating POSTs with Idempotency-Key (claimed ON CONFLICT DO UPDATE: \
                     `request_in_progress` or the stored answer)",
        on_violation: conflict(
            "request_in_progress",
            "a request with this idempotency key is running; retry shortly",
        ),
    },
    Constraint {
        name: "user_keys_pkey",
        table: "user_keys",
        reached_by: "registration: a fresh key under a fresh user id",
        on_violation: conflict("user_key_exists", "this account already has a data key"),
    },
    Constraint {
        name: "message_keys_pkey",
        table: "message_keys",
        reached_by: "sending a message: a fresh key under a fresh message id",
        on_violation: conflict("message_key_exists", "this message already has a data key"),
    },
    Constraint {
        name: "access_keys_pkey",
        table: "access_keys",
        reached_by: "recording an access (created ON CONFLICT DO NOTHING)",
        on_violation: conflict("access_key_exists", "this month already has a data key"),
    },
    Constraint {
        name: "photo_uploads_pkey",
        table: "photo_uploads",
        reached_by: "uploading a photo (a fresh photo id), erasure (ON CONFLICT DO NOTHING)",
        on_violation: conflict(
            "photo_upload_exists",
            "this photo upload is already recorded",
        ),
    },
    Constraint {
        name: "snapshots_pkey",
        table: "snapshots",
        reached_by: "postgres-es snapshots (unused: every aggregate loads from its events)",
        on_violation: OnViolation::Retry,
    },
    // Jobs and projectors.
    Constraint {
        name: "deployment_pkey",
        table: "deployment",
        reached_by: "migrations only (its one row is written once)",
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "deployment_singleton_key",
        table: "deployment",
        reached_by: "migrations only (its one row is written once)",
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "_sqlx_migrations_pkey",
        table: "_sqlx_migrations",
        reached_by: "migrations only (`arosaje migrate`, `serve` at start)",
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "audit_checkpoints_pkey",
        table: "audit_checkpoints",
        reached_by: "the checkpoint job, under a transaction advisory lock",
        on_violation: conflict("checkpoint_exists", "this checkpoint is already signed"),
    },
    Constraint {
        name: "projection_checkpoints_pkey",
        table: "projection_checkpoints",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "parked_events_pkey",
        table: "parked_events",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "sent_mails_pkey",
        table: "sent_mails",
        reached_by: "the mailer (ON CONFLICT DO NOTHING)",
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "read_model_versions_pkey",
        table: "read_model_versions",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    // Read models.
    Constraint {
        name: "users_pkey",
        table: "users",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "users_email_hash_key",
        table: "users",
        reached_by: READ_MODEL,
        on_violation: conflict("email_taken", "this e-mail address is already registered"),
    },
    Constraint {
        name: "plants_pkey",
        table: "plants",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "plant_photos_pkey",
        table: "plant_photos",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "sittings_pkey",
        table: "sittings",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "sitting_plants_pkey",
        table: "sitting_plants",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "sitting_applications_pkey",
        table: "sitting_applications",
        reached_by: READ_MODEL,
        on_violation: conflict(
            "already_applied",
            "you have already applied to this sitting",
        ),
    },
    Constraint {
        name: "care_reports_pkey",
        table: "care_reports",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "reviews_pkey",
        table: "reviews",
        reached_by: READ_MODEL,
        on_violation: conflict("already_reviewed", "you have already reviewed this sitting"),
    },
    Constraint {
        name: "advice_pkey",
        table: "advice",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "advice_versions_pkey",
        table: "advice_versions",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "advice_reviews_pkey",
        table: "advice_reviews",
        reached_by: READ_MODEL,
        on_violation: conflict(
            "already_reviewed",
            "you already gave your verdict on this advice",
        ),
    },
    Constraint {
        name: "advice_queue_pkey",
        table: "advice_queue",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "conversations_pkey",
        table: "messaging.conversations",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "participants_pkey",
        table: "messaging.participants",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "messages_pkey",
        table: "messaging.messages",
        reached_by: READ_MODEL,
        on_violation: ALREADY_EXISTS,
    },
    Constraint {
        name: "access_log_pkey",
        table: "monitoring.access_log",
        reached_by: "the access projector (its monthly partitions report their own index name: \
                     unknown here, answered as any unknown constraint)",
        on_violation: ALREADY_EXISTS,
    },
];

/// PostgreSQL's `unique_violation`.
pub const UNIQUE_VIOLATION: &str = "23505";
/// PostgreSQL's `exclusion_violation`.
pub const EXCLUSION_VIOLATION: &str = "23P01";

/// A constraint missing from [`CONSTRAINTS`] (added without saying what it means).
const UNKNOWN: OnViolation = conflict(
    "constraint_conflict",
    "this conflicts with the current state; reload and try again",
);

/// The constraint of a unique or exclusion violation, by name, when `err` is one.
pub fn violated(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some(UNIQUE_VIOLATION | EXCLUSION_VIOLATION)
            ) =>
        {
            Some(db.constraint().unwrap_or(""))
        }
        _ => None,
    }
}

/// What `err` means when it is a unique or exclusion violation; `None` for any other error.
pub fn on_violation(err: &sqlx::Error) -> Option<OnViolation> {
    let name = violated(err)?;
    Some(match CONSTRAINTS.iter().find(|c| c.name == name) {
        Some(constraint) => constraint.on_violation,
        None => {
            tracing::warn!(
                constraint = name,
                "violation of a constraint with no meaning given"
            );
            UNKNOWN
        }
    })
}

/// Whether `err` says another writer got there first (retry the command).
pub fn is_concurrent_write(err: &sqlx::Error) -> bool {
    on_violation(err) == Some(OnViolation::Retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_constraint_is_listed_once() {
        let mut names: Vec<&str> = CONSTRAINTS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
