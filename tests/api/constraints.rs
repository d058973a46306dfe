//! Database constraint violations at the edge: every unique and exclusion constraint of the
//! migrated schema has a meaning in `events::constraints`, and a violation answers its own 409
//! wherever it surfaces (a plain database error, wrapped in an internal error, or in a command),
//! never a 500.

use std::collections::BTreeSet;

use arosaje::api::error::ApiError;
use arosaje::commands::sitting::SittingError;
use arosaje::events::constraints::CONSTRAINTS;
use arosaje::events::store::CommandError;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// The status and error code an error answers with.
async fn answer(err: ApiError) -> (StatusCode, String) {
    let response = err.into_response();
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The error of a statement that must fail.
async fn failing(pool: &PgPool, sql: &str) -> sqlx::Error {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(err) => err,
    }
}

#[sqlx::test]
async fn every_unique_and_exclusion_constraint_says_what_its_violation_means(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    // Unique and exclusion constraints, and unique indexes without a constraint, of our schemas
    // (partitions answer under their own names and are left out).
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT ic.relname::text \
           FROM pg_index i \
           JOIN pg_class ic ON ic.oid = i.indexrelid \
           JOIN pg_class c ON c.oid = i.indrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
      LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x') \
          WHERE (i.indisunique OR con.contype = 'x') \
            AND n.nspname IN ('public', 'messaging', 'monitoring') \
            AND NOT c.relispartition",
    )
    .fetch_all(&t.pool)
    .await
    .expect("catalog");
    let found: BTreeSet<String> = found.into_iter().collect();
    let listed: BTreeSet<String> = CONSTRAINTS.iter().map(|c| c.name.to_string()).collect();
    assert!(
        found.contains("sitter_bookings_sitter_id_days_excl"),
        "{found:?}"
    );
    assert_eq!(
        found.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "constraints of the schema with no meaning in events::constraints"
    );
    assert_eq!(
        listed.difference(&found).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "constraints in events::constraints that the schema does not have"
    );
}

#[sqlx::test]
async fn a_violation_answers_its_own_409_wherever_it_surfaces(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let pool = &t.pool;

    // A claimed address, claimed again.
    let claim = "INSERT INTO email_claims (email_hash, user_id) \
                 VALUES ('\\x0102'::bytea, '00000000-0000-0000-0000-000000000001')";
    sqlx::query(claim).execute(pool).await.expect("first claim");
    assert_eq!(
        answer(ApiError::from(failing(pool, claim).await)).await,
        (StatusCode::CONFLICT, "email_taken".into())
    );
    // Wrapped, with context, in an internal error (a key store's, a command's).
    let wrapped = anyhow::Error::from(failing(pool, claim).await).context("registering");
    assert_eq!(
        answer(ApiError::Internal(wrapped)).await,
        (StatusCode::CONFLICT, "email_taken".into())
    );
    let command: CommandError<SittingError> = failing(pool, claim).await.into();
    assert!(matches!(command, CommandError::Internal(_)), "{command:?}");
    assert_eq!(
        answer(command.into()).await,
        (StatusCode::CONFLICT, "email_taken".into())
    );

    // The events' primary key: a concurrent write, retried by commands, then 409.
    let event = "INSERT INTO events \
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('Test', 'one', 1, 'Tested', '1', '{}', '{}')";
    sqlx::query(event).execute(pool).await.expect("first event");
    let command: CommandError<SittingError> = failing(pool, event).await.into();
    assert!(matches!(command, CommandError::Conflict), "{command:?}");
    assert_eq!(
        answer(ApiError::from(failing(pool, event).await)).await,
        (StatusCode::CONFLICT, "concurrent_modification".into())
    );

    // The sitters' calendar: overlapping days for one sitter.
    let sitter = Uuid::now_v7();
    let booking = |sitting: Uuid| {
        format!(
            "INSERT INTO sitter_bookings (sitting_id, sitter_id, days) \
             VALUES ('{sitting}', '{sitter}', daterange('2030-01-01', '2030-01-05', '[]'))"
        )
    };
    sqlx::query(&booking(Uuid::now_v7()))
        .execute(pool)
        .await
        .expect("first booking");
    assert_eq!(
        answer(ApiError::from(
            failing(pool, &booking(Uuid::now_v7())).await
        ))
        .await,
        (StatusCode::CONFLICT, "sitter_unavailable".into())
    );

    // A constraint added without a meaning is still a 409, never a 500.
    sqlx::query("CREATE TABLE unlisted (id int PRIMARY KEY)")
        .execute(pool)
        .await
        .expect("table");
    sqlx::query("INSERT INTO unlisted VALUES (1)")
        .execute(pool)
        .await
        .expect("row");
    assert_eq!(
        answer(ApiError::from(
            failing(pool, "INSERT INTO unlisted VALUES (1)").await
        ))
        .await,
        (StatusCode::CONFLICT, "constraint_conflict".into())
    );
    // Other database errors stay internal.
    assert_eq!(
        answer(ApiError::from(failing(pool, "SELECT 1/0").await)).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "internal_error".into())
    );
}
