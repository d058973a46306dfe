//! Rebuilding a read model from the whole log, aside, and swapping it in (`arosaje projections
//! rebuild`), plus `projections list` and `projections retry`. Generic over every
//! [`Projection`] that declares its [`Projection::tables`].
//!
//! How a rebuild goes:
//! 1. Under a session advisory lock (one rebuild per projection in the cluster), drop what an
//!    interrupted rebuild left (`rebuild_<name>` and `retired_<name>` schemas): a rerun restarts.
//! 2. Create the shadow schema `rebuild_<name>` and, for each table, a copy of its definition:
//!    `LIKE ... INCLUDING` defaults, generated columns, identity, CHECK constraints, storage and
//!    comments; primary keys, unique and exclusion constraints under their own names; foreign
//!    keys from `pg_get_constraintdef` (fully qualified), those between the projection's own
//!    tables pointing at the shadow copies, the others at the live tables; those to `users` are
//!    added after the replay, once, with what their ON DELETE would have done to the rows of
//!    people erased meanwhile (see `attach_foreign_keys`). Plain B-tree indexes are
//!    built at once (the projection's own lookups need them while it fills: without them every
//!    lookup scans a growing table, quadratic in the log); the others (GIN full-text, GiST
//!    geography), which no projection looks up by, after the replay.
//! 3. Replay the log in batches (one transaction each) with `SET LOCAL search_path` putting the
//!    shadow schema first: the projection's own `apply` writes the copies. The live projector
//!    keeps the live tables current meanwhile. Statements are planned for their parameters
//!    (`plan_cache_mode = force_custom_plan`: a generic plan made while a copy was empty would
//!    scan it once it is not), and the copies are analysed as they grow. Every statement of a
//!    projection finds its rows by key: scans and hash or merge joins are turned off, as the
//!    planner takes a copy that is still filling for smaller than it is (a batch of 2,000 keys
//!    joined to 20,000 rows was a hash join over the whole table per statement, measured). The
//!    replay goes through [`Projection::apply_replay`], which may leave derived values (the
//!    advice queue's counts) to one [`Projection::finish_replay`] at its end. Then the deferred
//!    indexes are built and the copies analysed.
//! 4. Swap, in one transaction: lock the checkpoint row (the live projector waits), lock the live
//!    tables, apply the last events to the shadow, drop the foreign keys of other tables that
//!    point at the live tables, move the live tables to `retired_<name>` and the shadow tables to
//!    their schemas (`SET SCHEMA`: indexes and constraints keep their original names, which later
//!    migrations refer to), add those foreign keys back (now pointing at the new tables) as
//!    `NOT VALID`, set the checkpoint and version, replace the projection's parked events with
//!    those of the rebuild, invalidate the query cache, drop the old tables. The API sees the old
//!    model or the new one. After the commit, the re-added foreign keys are validated, each in
//!    its own transaction under a lock that lets reads and writes go on (re-checking every row
//!    that points at `users` inside the swap held every table locked for as long).
//!
//! Ctrl-C or a crash before the swap commits leaves the live model untouched. A lock the swap
//! cannot get within the lock timeout, or a deadlock, rolls the swap back and it is retried.
//! Not copied: triggers, row-level security and grants (our read models have none); a view on
//! a rebuilt table makes the rebuild refuse rather than drop it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use super::runner::{is_transient, park, EventRow};
use super::{quote_ident, search_path, Mode, Projection};
use crate::events::StoredEvent;
use crate::infra::db;

/// Two-key advisory lock space of rebuilds ("arob"; the runner's side effects use "aros").
const REBUILD_LOCK_CLASS: i32 = 0x6172_6f62;

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Log positions read per batch (one transaction each).
    pub batch_size: i64,
    /// Rebuild aside, report the rows that differ from the live model, and drop the copy.
    pub dry_run: bool,
    /// How long the swap waits for its locks before it rolls back and tries again.
    pub lock_timeout: Duration,
    /// Swap attempts before giving up (the copy is then dropped; the live model stays).
    pub swap_attempts: u32,
    /// How long to wait for another rebuild of the projection (in any instance) to end before
    /// giving up.
    pub lock_wait: Duration,
    /// Build the model only if it is still unbuilt (checkpoint 0) once this rebuild holds the
    /// lock, else do nothing (a cold start, which another instance may have done meanwhile).
    pub unbuilt_only: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 10_000,
            dry_run: false,
            lock_timeout: Duration::from_secs(5),
            swap_attempts: 10,
            lock_wait: Duration::from_secs(10),
            unbuilt_only: false,
        }
    }
}

/// Where a rebuild is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events of the projection's aggregate types applied so far.
    pub done: u64,
    /// Events of those types in the log (grows while writes continue).
    pub total: u64,
}

impl Progress {
    /// Events per second since `started`, and the time left at that rate.
    pub fn rate(&self, elapsed: Duration) -> (f64, Option<Duration>) {
        let rate = self.done as f64 / elapsed.as_secs_f64().max(1e-9);
        let left = (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate));
        (rate, left)
    }
}

/// Progress as log lines, for a rebuild without a terminal (`serve`'s start-up rebuilds, the
/// CLI in a pipe): one `tracing` line at most every `every`, with the rate and the time left.
pub struct ProgressLog {
    projection: &'static str,
    started: Instant,
    every: Duration,
    last: std::sync::Mutex<Option<Instant>>,
}

impl ProgressLog {
    pub fn new(projection: &'static str, every: Duration) -> Self {
        Self {
            projection,
            started: Instant::now(),
            every,
            last: std::sync::Mutex::new(None),
        }
    }

    pub fn observe(&self, progress: Progress) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.map_or(now - self.started >= self.every, |at| {
            now - at >= self.every
        });
        if !due {
            return;
        }
        *last = Some(now);
        let (rate, left) = progress.rate(now - self.started);
        tracing::info!(
            projection = self.projection,
            done = progress.done,
            total = progress.total,
            events_per_second = rate.round(),
            eta_seconds = left.map(|d| d.as_secs()),
            "rebuilding"
        );
    }
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projection: &'static str,
    /// Events applied to the copy.
    pub events: u64,
    /// The log position the new model (or the compared copy) reflects.
    pub position: i64,
    pub elapsed: Duration,
    /// Events the rebuilt model could not apply (now the projection's parked events).
    pub parked: u64,
    /// Dry run: per table, how the copy differs from the live model.
    pub differences: Option<Vec<TableDiff>>,
    /// `unbuilt_only` and the model was built already (by another instance): nothing done.
    pub skipped: bool,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How the rebuilt copy of one table differs from the live table (volatile columns ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiff {
    pub table: String,
    /// Rows of the live table that the rebuild does not have.
    pub missing: i64,
    /// Rows of the rebuild that the live table does not have.
    pub extra: i64,
    /// Rows present in both (same primary key) with other values.
    pub different: i64,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

/// One table of the projection: live and shadow names.
#[derive(Debug, Clone)]
struct Table {
    schema: String,
    name: String,
}

impl Table {
    fn parse(qualified: &str) -> Table {
        let (schema, name) = qualified.split_once('.').unwrap_or(("public", qualified));
        Table {
            schema: schema.to_string(),
            name: name.to_string(),
        }
    }

    fn live(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    fn in_schema(&self, schema: &str) -> String {
        format!("{}.{}", quote_ident(schema), quote_ident(&self.name))
    }
}

fn shadow_schema(projection: &dyn Projection) -> String {
    format!("rebuild_{}", projection.name())
}

fn retired_schema(projection: &dyn Projection) -> String {
    format!("retired_{}", projection.name())
}

fn tables_of(projection: &dyn Projection) -> anyhow::Result<Vec<Table>> {
    if projection.mode() != Mode::ReadModel || projection.tables().is_empty() {
        anyhow::bail!(
            "projection {} has no tables to rebuild (side effects are never replayed)",
            projection.name()
        );
    }
    let tables: Vec<Table> = projection
        .tables()
        .iter()
        .map(|t| Table::parse(t))
        .collect();
    for (i, table) in tables.iter().enumerate() {
        if tables[..i].iter().any(|t| t.name == table.name) {
            anyhow::bail!(
                "projection {}: two tables named {} (the shadow schema holds one of each name)",
                projection.name(),
                table.name
            );
        }
    }
    Ok(tables)
}

/// Rebuilds one read model from the whole log and swaps it in (or, with `dry_run`, compares it
/// with the live model and drops it). `progress` is called after every batch.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    options: &RebuildOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let tables = tables_of(projection)?;
    let name = projection.name();
    // One rebuild of a projection at a time; the lock goes with this connection (a crash or a
    // dropped future closes it).
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    // The session of a rebuild that was just interrupted may take a moment to end.
    let deadline = Instant::now() + options.lock_wait;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(REBUILD_LOCK_CLASS)
            .bind(name)
            .fetch_one(&mut lock)
            .await?;
        if locked {
            break;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("another rebuild of projection {name} is running");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if options.unbuilt_only {
        let position = super::runner::load_checkpoint(pool, name)
            .await?
            .global_position;
        if position > 0 {
            return Ok(RebuildReport {
                projection: name,
                events: 0,
                position,
                elapsed: started.elapsed(),
                parked: 0,
                differences: None,
                skipped: true,
            });
        }
    }
    discard(pool, projection).await?;
    let Shadowed {
        btree,
        deferred,
        external,
    } = create_shadow(pool, projection, &tables)
        .await
        .with_context(|| format!("creating the shadow tables of {name}"))?;
    {
        let mut conn = pool.acquire().await?;
        for index in &btree {
            sqlx::query(index).execute(&mut *conn).await?;
        }
    }
    // The copies are analysed whenever they have grown fourfold since the last time.
    let mut analysed_at: u64 = 1_000;

    // `enable_* = off` penalises plans by 1e10, over `jit_above_cost`: without `jit = off`
    // every statement of the replay would be JIT-compiled (see `runner::read_model_batch`).
    let mut shadow = Shadow {
        projection,
        begin: format!(
            "BEGIN; SET LOCAL synchronous_commit = off; \
             SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_seqscan = off; \
             SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; \
             SET LOCAL jit = off; SET LOCAL search_path = {}",
            search_path(projection, Some(&shadow_schema(projection)))
        ),
        position: 0,
        applied: 0,
        parked: Vec::new(),
        total: 0,
        counted_to: 0,
    };
    // Replay until close to the head of the log, one transaction per batch.
    loop {
        let head = head(pool).await?;
        shadow.count_total(pool, head).await?;
        progress(shadow.progress());
        if head - shadow.position <= options.batch_size {
            break;
        }
        // The next batch is read (and its JSON parsed) while this one is applied.
        let (batches, mut ready) = tokio::sync::mpsc::channel(2);
        let reader = tokio::spawn(read_ahead(
            pool.clone(),
            projection.aggregate_types(),
            shadow.position,
            head,
            options.batch_size.max(1),
            batches,
        ));
        while let Some((to, events)) = ready.recv().await {
            let mut tx = db::begin_with(pool, shadow.begin.clone()).await?;
            shadow
                .apply_events(&mut tx, events, to, Phase::Replay)
                .await?;
            tx.commit().await?;
            progress(shadow.progress());
            if shadow.applied >= analysed_at {
                analysed_at = shadow.applied.saturating_mul(4);
                analyse(pool, projection, &tables).await?;
            }
        }
        reader.await??;
        anyhow::ensure!(shadow.position == head, "the log reader stopped early");
    }
    // What the replay left for the end (derived counts), once, before the swap's last events.
    {
        let mut tx = db::begin_with(
            pool,
            format!(
                "BEGIN; SET LOCAL synchronous_commit = off; SET LOCAL search_path = {}",
                search_path(projection, Some(&shadow_schema(projection)))
            ),
        )
        .await?;
        projection
            .finish_replay(&mut tx)
            .await
            .with_context(|| format!("finishing the replay of {name}"))?;
        tx.commit().await?;
    }
    // Indexes no lookup uses are built once, after the bulk of the rows (faster than row by
    // row, GIN above all).
    let mut conn = pool.acquire().await?;
    for index in &deferred {
        sqlx::query(index).execute(&mut *conn).await?;
    }
    for table in &tables {
        // The live table's storage parameters (LIKE INCLUDING STORAGE does not copy them).
        let (options, partitioned): (Option<Vec<String>>, bool) = sqlx::query_as(
            "SELECT reloptions, relkind = 'p' FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(table.live())
        .fetch_one(&mut *conn)
        .await?;
        let fillfactor = options
            .unwrap_or_default()
            .into_iter()
            .find_map(|o| o.strip_prefix("fillfactor=").map(str::to_string));
        let reset = match fillfactor {
            Some(value) => format!("SET (fillfactor = {})", value.parse::<u8>()?),
            None => "RESET (fillfactor)".to_string(),
        };
        if !partitioned {
            sqlx::query(&format!(
                "ALTER TABLE {} {reset}",
                table.in_schema(&shadow_schema(projection))
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    drop(conn);
    attach_foreign_keys(pool, &external)
        .await
        .with_context(|| format!("adding the foreign keys of {name}"))?;
    analyse(pool, projection, &tables).await?;

    let finished = if options.dry_run {
        compare(pool, &mut shadow, &tables, options).await
    } else {
        swap(pool, &mut shadow, &tables, options)
            .await
            .map(|_| None)
    };
    let differences = match finished {
        Ok(differences) => differences,
        Err(err) => {
            // Best effort: a rerun drops it anyway.
            let _ = discard(pool, projection).await;
            return Err(err);
        }
    };
    if options.dry_run {
        discard(pool, projection).await?;
    }
    progress(shadow.progress());
    drop(lock);
    Ok(RebuildReport {
        projection: name,
        events: shadow.applied,
        position: shadow.position,
        elapsed: started.elapsed(),
        parked: shadow.parked.len() as u64,
        differences,
        skipped: false,
    })
}

/// Drops what a rebuild of `projection` left behind (its shadow and retired schemas). The live
/// tables are never in them before a swap commits, and the swap empties them when it does.
pub async fn discard(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<()> {
    // Quietly: "does not exist, skipping" and "drop cascades to" notices say nothing here.
    let mut tx = db::begin_with(pool, "BEGIN; SET LOCAL client_min_messages = warning").await?;
    for schema in [shadow_schema(projection), retired_schema(projection)] {
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&schema)
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The last committed log position. Positions are handed out in commit order, so every event
/// at or below it is visible now or never will be.
pub(crate) async fn head(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
        .fetch_one(pool)
        .await
}

/// Updates the planner's statistics of the shadow copies.
async fn analyse(pool: &PgPool, projection: &dyn Projection, tables: &[Table]) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    for table in tables {
        sqlx::query(&format!(
            "ANALYZE {}",
            table.in_schema(&shadow_schema(projection))
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What `create_shadow` leaves for later.
struct Shadowed {
    /// Plain B-tree indexes, built before the replay (lookups need them).
    btree: Vec<String>,
    /// Other plain indexes, built after it.
    deferred: Vec<String>,
    /// Foreign keys to `users`, added after the replay (see [`attach_foreign_keys`]).
    external: Vec<ExternalKey>,
}

/// A foreign key of a shadow table to the live `public.users`, added once the copy is full:
/// checked row by row while it fills, it cost more than the inserts themselves (measured: 10,000
/// plants 64 ms without, 288 ms with). What its ON DELETE would have done to rows of people
/// erased meanwhile is done first.
struct ExternalKey {
    /// `DELETE` (CASCADE) or `UPDATE ... SET NULL` of the rows of erased people, if any.
    cleanup: Option<String>,
    add: String,
}

/// Adds the foreign keys to `users` after the replay, in one transaction that first stops
/// deletions from `users` (a lock that lets reads go on), applies their ON DELETE to the rows
/// of people erased during the replay (whose key is gone), then adds and validates each key in
/// one scan. A row pointing at a user who is neither there nor erased fails the rebuild, as its
/// insert would have.
async fn attach_foreign_keys(pool: &PgPool, external: &[ExternalKey]) -> anyhow::Result<()> {
    if external.is_empty() {
        return Ok(());
    }
    let mut tx = db::begin_with(pool, "BEGIN; SET LOCAL search_path = public").await?;
    sqlx::query("LOCK TABLE public.users IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    for key in external {
        if let Some(cleanup) = &key.cleanup {
            sqlx::query(cleanup)
                .execute(&mut *tx)
                .await
                .with_context(|| cleanup.clone())?;
        }
        sqlx::query(&key.add)
            .execute(&mut *tx)
            .await
            .with_context(|| key.add.clone())?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates the shadow schema and tables, with their keys and the foreign keys between them;
/// returns what is added later.
async fn create_shadow(
    pool: &PgPool,
    projection: &dyn Projection,
    tables: &[Table],
) -> anyhow::Result<Shadowed> {
    let shadow = shadow_schema(projection);
    let mut tx = db::begin(pool).await?;
    // Definitions come back fully qualified (`REFERENCES public.users(id)`).
    sqlx::query("SELECT set_config('search_path', '', true)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {}", quote_ident(&shadow)))
        .execute(&mut *tx)
        .await?;
    let mut keys = Vec::new();
    let mut foreign_keys = Vec::new();
    let mut external = Vec::new();
    let mut indexes = Vec::new();
    for table in tables {
        // A partitioned table is copied partitioned the same way; its partitions are created by
        // the projection as it fills it (in the shadow schema: first on its `search_path`).
        let partition_key: Option<String> =
            sqlx::query_scalar("SELECT pg_get_partkeydef(pg_catalog.to_regclass($1))")
                .bind(table.live())
                .fetch_one(&mut *tx)
                .await?;
        let partitioned = partition_key
            .as_ref()
            .map(|key| format!(" PARTITION BY {key}"))
            .unwrap_or_default();
        sqlx::query(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY \
             INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS){partitioned}",
            table.in_schema(&shadow),
            table.live()
        ))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("copying {}", table.live()))?;
        // Room on each page during the replay, so that a row's later updates stay on its page
        // (HOT: no new index entries); reset once the replay is done (see `rebuild`). A
        // partitioned table has no pages of its own.
        if partition_key.is_none() {
            sqlx::query(&format!(
                "ALTER TABLE {} SET (fillfactor = 50)",
                table.in_schema(&shadow)
            ))
            .execute(&mut *tx)
            .await?;
        }
        // For single-column foreign keys: the column, the referenced table and ON DELETE.
        #[allow(clippy::type_complexity)]
        let constraints: Vec<(
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
        )> = sqlx::query_as(
            "SELECT c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), \
                        (SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
                            AND cardinality(c.conkey) = 1), \
                        c.confrelid::pg_catalog.regclass::text, c.confdeltype::text \
                   FROM pg_catalog.pg_constraint c \
                  WHERE c.conrelid = pg_catalog.to_regclass($1) \
                    AND c.contype IN ('p', 'u', 'x', 'f') \
                  ORDER BY c.conname",
        )
        .bind(table.live())
        .fetch_all(&mut *tx)
        .await?;
        for (constraint, kind, mut definition, column, referenced, on_delete) in constraints {
            let add = |definition: &str| {
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
                    table.in_schema(&shadow),
                    quote_ident(&constraint)
                )
            };
            if kind == "f" {
                // Between the projection's own tables: to the shadow copies.
                for other in tables {
                    definition = definition.replace(
                        &format!("REFERENCES {}(", qualified_unquoted(other)),
                        &format!("REFERENCES {}(", other.in_schema(&shadow)),
                    );
                }
                let to_users = referenced.as_deref() == Some("public.users")
                    && definition.contains("REFERENCES public.users(id)");
                match (to_users, &column) {
                    (true, Some(column)) => {
                        let shadow_table = table.in_schema(&shadow);
                        let column = quote_ident(column);
                        let gone = format!(
                            "{column} IS NOT NULL \
                             AND NOT EXISTS (SELECT 1 FROM public.users u WHERE u.id = {column}) \
                             AND NOT EXISTS (SELECT 1 FROM public.user_keys k \
                                              WHERE k.user_id = {column})"
                        );
                        let cleanup = match on_delete.as_str() {
                            "c" => Some(format!("DELETE FROM {shadow_table} WHERE {gone}")),
                            "n" => Some(format!(
                                "UPDATE {shadow_table} SET {column} = NULL WHERE {gone}"
                            )),
                            _ => None,
                        };
                        external.push(ExternalKey {
                            cleanup,
                            add: add(&definition),
                        });
                    }
                    _ => foreign_keys.push(add(&definition)),
                }
            } else {
                keys.push(add(&definition));
            }
        }
        // Indexes that back no constraint, with their own names.
        let plain: Vec<String> = sqlx::query_scalar(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i \
              WHERE i.indrelid = pg_catalog.to_regclass($1) \
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
                                 WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid) \
              ORDER BY i.indexrelid",
        )
        .bind(table.live())
        .fetch_all(&mut *tx)
        .await?;
        let on = format!(" ON {} ", qualified_unquoted(table));
        for definition in plain {
            // A partitioned table's index reads `ON ONLY`; on the copy it is built on every
            // partition.
            let definition = definition.replacen(" ON ONLY ", " ON ", 1);
            if !definition.contains(&on) {
                anyhow::bail!("cannot place index on the shadow table: {definition}");
            }
            indexes.push(definition.replacen(
                &on,
                &format!(" ON {} ", table.in_schema(&shadow)),
                1,
            ));
        }
    }
    // Expressions in indexes and checks may call functions that rely on the usual search_path
    // (earthdistance's `ll_to_earth` looks up `earth` unqualified).
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *tx)
        .await?;
    for key in keys {
        sqlx::query(&key)
            .execute(&mut *tx)
            .await
            .with_context(|| key.clone())?;
    }
    for foreign_key in foreign_keys {
        sqlx::query(&foreign_key)
            .execute(&mut *tx)
            .await
            .with_context(|| foreign_key.clone())?;
    }
    tx.commit().await?;
    let (btree, deferred) = indexes
        .into_iter()
        .partition(|index| index.contains(" USING btree "));
    Ok(Shadowed {
        btree,
        deferred,
        external,
    })
}

/// The partitions of a (partitioned) table, schema-qualified and quoted.
async fn partitions_of(conn: &mut PgConnection, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
           FROM pg_catalog.pg_inherits i \
           JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE i.inhparent = pg_catalog.to_regclass($1) ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// A table's name as `pg_get_*def` prints it with an empty `search_path` (our names need no
/// quotes; names that do are not ours).
fn qualified_unquoted(table: &Table) -> String {
    format!("{}.{}", table.schema, table.name)
}

/// The copy being filled: how far it is and what it could not apply.
struct Shadow<'a> {
    projection: &'a dyn Projection,
    begin: String,
    position: i64,
    applied: u64,
    /// Events the copy could not apply: their positions and errors.
    parked: Vec<(StoredEvent, anyhow::Error)>,
    total: u64,
    counted_to: i64,
}

impl Shadow<'_> {
    fn progress(&self) -> Progress {
        let done = self.applied + self.parked.len() as u64;
        Progress {
            done,
            total: self.total.max(done),
        }
    }

    /// Counts the projection's events up to `head` (incrementally).
    async fn count_total(&mut self, pool: &PgPool, head: i64) -> sqlx::Result<()> {
        if head > self.counted_to {
            // Through the index on (lower(aggregate_type), global_position), as `read_range`.
            let types = self.projection.aggregate_types();
            let lowered: Vec<String> = types.iter().map(|t| t.to_lowercase()).collect();
            let more: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events \
                  WHERE lower(aggregate_type) = ANY($4) AND aggregate_type = ANY($3) \
                    AND global_position > $1 AND global_position <= $2",
            )
            .bind(self.counted_to)
            .bind(head)
            .bind(types)
            .bind(&lowered)
            .fetch_one(pool)
            .await?;
            self.total += more as u64;
            self.counted_to = head;
        }
        Ok(())
    }

    /// Applies the projection's events in (position, to] on `conn` (inside a transaction whose
    /// `search_path` says which tables), then moves the position to `to`.
    async fn apply_range(&mut self, conn: &mut PgConnection, to: i64) -> anyhow::Result<()> {
        let events = read_range(conn, self.projection.aggregate_types(), self.position, to).await?;
        self.apply_events(conn, events, to, Phase::Live).await
    }

    /// Applies `events`, those of (position, to], then moves the position to `to`.
    async fn apply_events(
        &mut self,
        conn: &mut PgConnection,
        events: Vec<StoredEvent>,
        to: i64,
        phase: Phase,
    ) -> anyhow::Result<()> {
        let (applied, failed) = apply_events(conn, self.projection, events, phase).await?;
        self.applied += applied;
        self.parked.extend(failed);
        self.position = to;
        Ok(())
    }
}

/// Reads the events of `types` in (from, head] batch by batch into `batches`, ahead of the
/// transactions that apply them (the log up to `head` no longer changes).
async fn read_ahead(
    pool: PgPool,
    types: &'static [&'static str],
    mut from: i64,
    head: i64,
    batch_size: i64,
    batches: tokio::sync::mpsc::Sender<(i64, Vec<StoredEvent>)>,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    while from < head {
        let to = (from + batch_size).min(head);
        let events = read_range(&mut conn, types, from, to).await?;
        if batches.send((to, events)).await.is_err() {
            // The rebuild stopped.
            break;
        }
        from = to;
    }
    Ok(())
}

/// Applies the projection's events in (from, to] on `conn`, inside a transaction: the batch at
/// once, or, if that fails, one event at a time in savepoints. Returns how many it applied and
/// the events that failed (never transient failures: they abort).
async fn apply_range(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    from: i64,
    to: i64,
) -> anyhow::Result<(u64, Vec<(StoredEvent, anyhow::Error)>)> {
    let events = read_range(conn, projection.aggregate_types(), from, to).await?;
    apply_events(conn, projection, events, Phase::Live).await
}

/// Which of a projection's ways to apply a batch a rebuild uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The bulk of the log: [`Projection::apply_replay`], finished by
    /// [`Projection::finish_replay`].
    Replay,
    /// After `finish_replay` (the swap's last events, a dry run's): [`Projection::apply`].
    Live,
}

async fn apply_one(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: &[StoredEvent],
    phase: Phase,
) -> anyhow::Result<()> {
    match phase {
        Phase::Replay => projection.apply_replay(conn, events).await,
        Phase::Live => projection.apply(conn, events).await,
    }
}

/// Applies `events` on `conn`, inside a transaction: at once, or, if that fails, one at a time
/// in savepoints. Returns how many it applied and the events that failed.
async fn apply_events(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    events: Vec<StoredEvent>,
    phase: Phase,
) -> anyhow::Result<(u64, Vec<(StoredEvent, anyhow::Error)>)> {
    if events.is_empty() {
        return Ok((0, Vec::new()));
    }
    sqlx::query("SAVEPOINT rebuild_batch")
        .execute(&mut *conn)
        .await?;
    match apply_one(conn, projection, &events, phase).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT rebuild_batch")
                .execute(&mut *conn)
                .await?;
            return Ok((events.len() as u64, Vec::new()));
        }
        Err(err) if is_transient(&err) => return Err(err),
        Err(_) => {
            sqlx::query("ROLLBACK TO SAVEPOINT rebuild_batch")
                .execute(&mut *conn)
                .await?;
        }
    }
    let mut applied = 0;
    let mut failed = Vec::new();
    for event in events {
        sqlx::query("SAVEPOINT rebuild_event")
            .execute(&mut *conn)
            .await?;
        match apply_one(conn, projection, std::slice::from_ref(&event), phase).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT rebuild_event")
                    .execute(&mut *conn)
                    .await?;
                applied += 1;
            }
            Err(err) if is_transient(&err) => return Err(err),
            Err(err) => {
                sqlx::query("ROLLBACK TO SAVEPOINT rebuild_event")
                    .execute(&mut *conn)
                    .await?;
                failed.push((event, err));
            }
        }
    }
    Ok((applied, failed))
}

/// The events of `types` in (from, to], in log order. Read through the audit index on
/// `(lower(aggregate_type), global_position)`: a model whose events are a tenth of the log reads
/// a tenth of its rows, not every row of the range.
pub async fn read_range(
    conn: &mut PgConnection,
    types: &[&str],
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    let lowered: Vec<String> = types.iter().map(|t| t.to_lowercase()).collect();
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT global_position, aggregate_type, aggregate_id, sequence, event_type, \
                event_version, payload, metadata, timestamp \
           FROM events \
          WHERE lower(aggregate_type) = ANY($4) AND aggregate_type = ANY($3) \
            AND global_position > $1 AND global_position <= $2 \
          ORDER BY global_position",
    )
    .bind(from)
    .bind(to)
    .bind(types)
    .bind(&lowered)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(EventRow::into_event).collect())
}

/// Whether a failed swap is worth another try: a lock not granted in time, a deadlock.
fn retryable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("55P03" | "40P01" | "40001"))
        )
    })
}

/// Catches the copy up and swaps it in, in one transaction (retried on lock time-outs).
async fn swap(
    pool: &PgPool,
    shadow: &mut Shadow<'_>,
    tables: &[Table],
    options: &RebuildOptions,
) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        // A failed attempt rolls back what it applied: start again from here.
        let (position, applied, parked) = (shadow.position, shadow.applied, shadow.parked.len());
        match swap_once(pool, shadow, tables, options).await {
            Ok(()) => return Ok(()),
            Err(err) if retryable(&err) && attempt < options.swap_attempts.max(1) => {
                tracing::warn!(projection = shadow.projection.name(), attempt, error = %format!("{err:#}"), "swap not done; retrying");
                shadow.position = position;
                shadow.applied = applied;
                shadow.parked.truncate(parked);
                tokio::time::sleep(Duration::from_millis(200) * attempt).await;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn swap_once(
    pool: &PgPool,
    shadow: &mut Shadow<'_>,
    tables: &[Table],
    options: &RebuildOptions,
) -> anyhow::Result<()> {
    let projection = shadow.projection;
    let name = projection.name();
    let shadow_name = shadow_schema(projection);
    let retired = retired_schema(projection);
    let mut tx = db::begin_with(pool, shadow.begin.clone()).await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        options.lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await?;
    // The live projector finishes its batch and then waits for us.
    sqlx::query(
        "SELECT last_position FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let live: Vec<String> = tables.iter().map(Table::live).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        live.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    // The last events: no event of ours commits before this transaction ends... but other
    // writers append to the log; read to the head as it is now (the live projector takes over
    // from there).
    let head: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM public.events")
            .fetch_one(&mut *tx)
            .await?;
    while shadow.position < head {
        let to = (shadow.position + shadow_batch()).min(head);
        shadow.apply_range(&mut tx, to).await?;
    }
    projection.reconcile(&mut tx).await?;

    sqlx::query("SELECT set_config('search_path', '', true)")
        .execute(&mut *tx)
        .await?;
    let oids: Vec<sqlx::postgres::types::Oid> = {
        let mut oids = Vec::new();
        for table in &live {
            oids.push(
                sqlx::query_scalar("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid")
                    .bind(table)
                    .fetch_one(&mut *tx)
                    .await?,
            );
        }
        oids
    };
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT v.oid::pg_catalog.regclass::text \
           FROM pg_catalog.pg_depend d \
           JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
           JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
          WHERE d.refobjid = ANY($1) AND v.oid <> ALL($1)",
    )
    .bind(&oids)
    .fetch_all(&mut *tx)
    .await?;
    if !views.is_empty() {
        anyhow::bail!(
            "views depend on the tables of {name} ({}): a swap would leave them on the old tables",
            views.join(", ")
        );
    }
    // Foreign keys of other tables (other read models, other shadows) to the tables we replace.
    let incoming: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conrelid::pg_catalog.regclass::text, conname::text, pg_get_constraintdef(oid) \
           FROM pg_catalog.pg_constraint \
          WHERE contype = 'f' AND confrelid = ANY($1) AND conrelid <> ALL($1) \
          ORDER BY 1, 2",
    )
    .bind(&oids)
    .fetch_all(&mut *tx)
    .await?;
    // Back to the usual path: validating a foreign key may evaluate index expressions.
    sqlx::query("SELECT set_config('search_path', 'public', true)")
        .execute(&mut *tx)
        .await?;
    for (table, constraint, _) in &incoming {
        sqlx::query(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT {}",
            quote_ident(constraint)
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!("CREATE SCHEMA {}", quote_ident(&retired)))
        .execute(&mut *tx)
        .await?;
    // A partitioned table's partitions move with it (`SET SCHEMA` moves the parent alone).
    for table in tables {
        let partitions = partitions_of(&mut tx, &table.live()).await?;
        sqlx::query(&format!(
            "ALTER TABLE {} SET SCHEMA {}",
            table.live(),
            quote_ident(&retired)
        ))
        .execute(&mut *tx)
        .await?;
        for partition in partitions {
            sqlx::query(&format!(
                "ALTER TABLE {partition} SET SCHEMA {}",
                quote_ident(&retired)
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    for table in tables {
        let partitions = partitions_of(&mut tx, &table.in_schema(&shadow_name)).await?;
        sqlx::query(&format!(
            "ALTER TABLE {} SET SCHEMA {}",
            table.in_schema(&shadow_name),
            quote_ident(&table.schema)
        ))
        .execute(&mut *tx)
        .await?;
        for partition in partitions {
            sqlx::query(&format!(
                "ALTER TABLE {partition} SET SCHEMA {}",
                quote_ident(&table.schema)
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    // NOT VALID: no scan of the referencing tables while everything is locked; validated
    // after the commit (see `validate_foreign_keys`). New rows are checked from now on.
    for (table, constraint, definition) in &incoming {
        sqlx::query(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {} {definition} NOT VALID",
            quote_ident(constraint)
        ))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("re-pointing {constraint} of {table}"))?;
    }
    sqlx::query(
        "INSERT INTO public.projection_checkpoints (name, version, last_position) \
         VALUES ($1, $3, $2) \
         ON CONFLICT (name) DO UPDATE \
            SET last_position = $2, version = $3, updated_at = now()",
    )
    .bind(name)
    .bind(shadow.position)
    .bind(projection.version())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM public.parked_events WHERE projection = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    for (event, err) in &shadow.parked {
        park(&mut tx, name, event, err, 1).await?;
    }
    // Cached answers were computed from the old tables.
    sqlx::query("UPDATE public.read_model_versions SET version = version + 1")
        .execute(&mut *tx)
        .await?;
    // Without CASCADE: anything still depending on the old tables makes the swap fail instead.
    let retired_tables: Vec<String> = tables.iter().map(|t| t.in_schema(&retired)).collect();
    sqlx::query(&format!("DROP TABLE {}", retired_tables.join(", ")))
        .execute(&mut *tx)
        .await?;
    for schema in [&retired, &shadow_name] {
        sqlx::query(&format!("DROP SCHEMA {}", quote_ident(schema)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        projection = name,
        position = shadow.position,
        "rebuilt read model swapped in"
    );
    validate_foreign_keys(pool, &incoming).await
}

/// Validates the foreign keys a swap re-added as `NOT VALID`, one transaction each: `VALIDATE
/// CONSTRAINT` takes a lock that lets reads and writes of both tables go on while it scans.
async fn validate_foreign_keys(
    pool: &PgPool,
    incoming: &[(String, String, String)],
) -> anyhow::Result<()> {
    for (table, constraint, _) in incoming {
        sqlx::query(&format!(
            "ALTER TABLE {table} VALIDATE CONSTRAINT {}",
            quote_ident(constraint)
        ))
        .execute(pool)
        .await
        .with_context(|| format!("validating {constraint} of {table}"))?;
    }
    Ok(())
}

/// Log positions per batch inside the swap and the dry-run comparison.
fn shadow_batch() -> i64 {
    10_000
}

/// Dry run: brings the copy and the live model to the same position (in one transaction that
/// holds the live projector back and is rolled back) and counts the rows that differ.
async fn compare(
    pool: &PgPool,
    shadow: &mut Shadow<'_>,
    tables: &[Table],
    options: &RebuildOptions,
) -> anyhow::Result<Option<Vec<TableDiff>>> {
    let projection = shadow.projection;
    let shadow_name = shadow_schema(projection);
    let mut tx = db::begin_with(pool, shadow.begin.clone()).await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        options.lock_timeout.as_millis().max(1) * 10
    ))
    .execute(&mut *tx)
    .await?;
    let live_position: Option<i64> = sqlx::query_scalar(
        "SELECT last_position FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    let mut live_position = live_position.unwrap_or(0);
    let head: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM public.events")
            .fetch_one(&mut *tx)
            .await?;
    while shadow.position < head {
        let to = (shadow.position + shadow_batch()).min(head);
        shadow.apply_range(&mut tx, to).await?;
    }
    // The live model too, as its projector would (all of it is rolled back).
    sqlx::query(&format!(
        "SET LOCAL search_path = {}",
        search_path(projection, None)
    ))
    .execute(&mut *tx)
    .await?;
    while live_position < head {
        let to = (live_position + shadow_batch()).min(head);
        apply_range(&mut tx, projection, live_position, to).await?;
        live_position = to;
    }
    let mut differences = Vec::new();
    for table in tables {
        differences.push(
            diff(
                &mut tx,
                &table.live(),
                &table.in_schema(&shadow_name),
                projection.volatile_columns(),
            )
            .await
            .with_context(|| format!("comparing {}", table.live()))?,
        );
    }
    tx.rollback().await?;
    Ok(Some(differences))
}

/// Counts the rows of `live` and `copy` that differ, over every column but `ignored`.
async fn diff(
    conn: &mut PgConnection,
    live: &str,
    copy: &str,
    ignored: &[&str],
) -> anyhow::Result<TableDiff> {
    let columns: Vec<(String, bool)> = sqlx::query_as(
        "SELECT a.attname::text, COALESCE(i.indisprimary, false) \
           FROM pg_catalog.pg_attribute a \
           LEFT JOIN pg_catalog.pg_index i \
                  ON i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY(i.indkey) \
          WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
          ORDER BY a.attnum",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await?;
    let compared: Vec<String> = columns
        .iter()
        .filter(|(c, _)| !ignored.contains(&c.as_str()))
        .map(|(c, _)| quote_ident(c))
        .collect();
    let key: Vec<String> = columns
        .iter()
        .filter(|(_, pk)| *pk)
        .map(|(c, _)| quote_ident(c))
        .collect();
    let list = compared.join(", ");
    let same_key = |a: &str, b: &str| {
        if key.is_empty() {
            "false".to_string()
        } else {
            key.iter()
                .map(|k| format!("{a}.{k} = {b}.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        }
    };
    let query = format!(
        "WITH l AS (SELECT {list} FROM {live} EXCEPT ALL SELECT {list} FROM {copy}), \
              s AS (SELECT {list} FROM {copy} EXCEPT ALL SELECT {list} FROM {live}) \
         SELECT (SELECT count(*) FROM l WHERE NOT EXISTS (SELECT 1 FROM s WHERE {lk})), \
                (SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM l WHERE {sk})), \
                (SELECT count(*) FROM s WHERE EXISTS (SELECT 1 FROM l WHERE {sk}))",
        lk = same_key("s", "l"),
        sk = same_key("l", "s"),
    );
    let (missing, extra, different): (i64, i64, i64) =
        sqlx::query_as(&query).fetch_one(&mut *conn).await?;
    Ok(TableDiff {
        table: live.replace('"', ""),
        missing,
        extra,
        different,
    })
}

/// The state of a projection, for `projections list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Following the log with the code's version.
    Live,
    /// A rebuild holds its lock now.
    Rebuilding,
    /// The code's version is newer than the model's: `projections rebuild` (or `serve`) redoes it.
    NeedsRebuild,
    /// The model is newer than this binary (an older binary after a newer one).
    Newer,
    /// A side-effect projector (mail, fan-out): follows the log, never rebuilt.
    SideEffects,
    /// Known to the database only (no such projection in this binary).
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Rebuilding => "rebuilding",
            State::NeedsRebuild => "needs rebuild",
            State::Newer => "newer than code",
            State::SideEffects => "side effects",
            State::Unknown => "unknown",
        }
    }
}

/// One line of `projections list`.
#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    pub name: String,
    pub code_version: Option<i32>,
    pub checkpoint_version: Option<i32>,
    pub position: i64,
    /// Events of its aggregate types past its checkpoint.
    pub lag_events: i64,
    /// Age of the oldest of those events.
    pub lag_seconds: f64,
    pub parked: i64,
    pub state: State,
}

/// Every projection of the code and of the checkpoint table, with its lag and state.
pub async fn list(
    pool: &PgPool,
    projections: &[Arc<dyn Projection>],
) -> anyhow::Result<Vec<ProjectionStatus>> {
    let rows: Vec<(String, i32, i64, i64, bool)> = sqlx::query_as(
        "SELECT c.name, c.version, c.last_position, \
                (SELECT count(*) FROM parked_events p WHERE p.projection = c.name), \
                EXISTS (SELECT 1 FROM pg_locks l \
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                           AND l.classid = $1::int4::oid AND l.objid = hashtext(c.name)::oid \
                           AND l.database = (SELECT oid FROM pg_database \
                                              WHERE datname = current_database())) \
           FROM projection_checkpoints c",
    )
    .bind(REBUILD_LOCK_CLASS)
    .fetch_all(pool)
    .await?;
    let mut stored: HashMap<String, (i32, i64, i64, bool)> = rows
        .into_iter()
        .map(|(n, v, p, parked, locked)| (n, (v, p, parked, locked)))
        .collect();
    let now = Utc::now();
    let mut out = Vec::new();
    let lag = |name: String, code: Option<&dyn Projection>, row: Option<(i32, i64, i64, bool)>| {
        let (checkpoint_version, position, parked, locked) = match row {
            Some((v, p, parked, locked)) => (Some(v), p, parked, locked),
            None => (None, 0, 0, false),
        };
        let state = match (code.map(|p| p.version()), checkpoint_version) {
            _ if locked => State::Rebuilding,
            (None, _)
                if crate::PROJECTION_NAMES.contains(&name.as_str())
                    || name == super::series::NAME =>
            {
                State::SideEffects
            }
            (None, _) => State::Unknown,
            (Some(code), Some(stored)) if code > stored => State::NeedsRebuild,
            (Some(code), Some(stored)) if code < stored => State::Newer,
            _ => State::Live,
        };
        (
            name,
            code.map(|p| p.version()),
            checkpoint_version,
            position,
            parked,
            state,
        )
    };
    let mut pending = Vec::new();
    for projection in projections {
        let row = stored.remove(projection.name());
        pending.push((
            lag(
                projection.name().to_string(),
                Some(projection.as_ref()),
                row,
            ),
            Some(projection.aggregate_types()),
        ));
    }
    let mut others: Vec<_> = stored.into_iter().collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, row) in others {
        pending.push((lag(name, None, Some(row)), None));
    }
    for ((name, code_version, checkpoint_version, position, parked, state), types) in pending {
        let (lag_events, oldest): (i64, Option<DateTime<Utc>>) = match types {
            Some(types) => {
                sqlx::query_as(
                    "SELECT count(*), min(timestamp) FROM events \
                      WHERE global_position > $1 AND aggregate_type = ANY($2)",
                )
                .bind(position)
                .bind(types)
                .fetch_one(pool)
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT count(*), min(timestamp) FROM events WHERE global_position > $1",
                )
                .bind(position)
                .fetch_one(pool)
                .await?
            }
        };
        let lag_seconds = oldest
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        out.push(ProjectionStatus {
            name,
            code_version,
            checkpoint_version,
            position,
            lag_events,
            lag_seconds,
            parked,
            state,
        });
    }
    Ok(out)
}

/// What `projections retry` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryReport {
    /// Parked events that now applied (and left the dead-letter table).
    pub applied: u64,
    /// Parked events that still fail (they stay, with the new error).
    pub still_parked: u64,
}

/// Re-applies a projection's parked events to its live tables, oldest first, each in its own
/// transaction that holds the live projector back. An event that now applies leaves
/// `parked_events`; one that still fails stays there with its new error and one more attempt.
///
/// The event is applied as it would have been then, after the events that followed it: the
/// projections' version guards make a stale update a no-op, so where order matters a rebuild is
/// the exact fix.
pub async fn retry(pool: &PgPool, projection: &dyn Projection) -> anyhow::Result<RetryReport> {
    let name = projection.name();
    let positions: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM parked_events WHERE projection = $1 ORDER BY global_position",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    let begin = format!(
        "BEGIN; SET LOCAL search_path = {}",
        search_path(projection, None)
    );
    let mut report = RetryReport::default();
    for position in positions {
        let mut tx = db::begin_with(pool, begin.clone()).await?;
        sqlx::query("SELECT 1 FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let types: Vec<String> =
            sqlx::query_scalar("SELECT aggregate_type FROM events WHERE global_position = $1")
                .bind(position)
                .fetch_all(&mut *tx)
                .await?;
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let events = read_range(&mut tx, &types, position - 1, position).await?;
        sqlx::query("SAVEPOINT retry_event")
            .execute(&mut *tx)
            .await?;
        let outcome = match events.first() {
            Some(_) => projection.apply(&mut tx, &events).await,
            None => Err(anyhow::anyhow!("event {position} is not in the log")),
        };
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "DELETE FROM parked_events WHERE projection = $1 AND global_position = $2",
                )
                .bind(name)
                .bind(position)
                .execute(&mut *tx)
                .await?;
                report.applied += 1;
            }
            Err(err) if is_transient(&err) => return Err(err),
            Err(err) => {
                sqlx::query("ROLLBACK TO SAVEPOINT retry_event")
                    .execute(&mut *tx)
                    .await?;
                let error: String = format!("{err:#}").chars().take(2000).collect();
                sqlx::query(
                    "UPDATE parked_events SET error = $3, attempts = attempts + 1, \
                            parked_at = now() \
                      WHERE projection = $1 AND global_position = $2",
                )
                .bind(name)
                .bind(position)
                .bind(error)
                .execute(&mut *tx)
                .await?;
                report.still_parked += 1;
            }
        }
        tx.commit().await?;
    }
    if report.applied > 0 {
        sqlx::query("UPDATE read_model_versions SET version = version + 1")
            .execute(pool)
            .await?;
    }
    Ok(report)
}

/// At `serve` start: rebuilds, one after the other and in the background, every read model
/// whose version in the code is newer than its checkpoint's, while the old model keeps serving
/// (see the module documentation). Instances race for each rebuild's lock; the losers skip it.
pub async fn rebuild_outdated(pool: PgPool, projections: Vec<Arc<dyn Projection>>) {
    for projection in projections {
        if projection.mode() != Mode::ReadModel || projection.tables().is_empty() {
            continue;
        }
        let stored: Option<i32> =
            match sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE name = $1")
                .bind(projection.name())
                .fetch_optional(&pool)
                .await
            {
                Ok(stored) => stored,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read projection versions");
                    return;
                }
            };
        let Some(stored) = stored else { continue };
        let name = projection.name();
        if stored > projection.version() {
            tracing::warn!(
                projection = name,
                model = stored,
                code = projection.version(),
                "the read model was built by a newer version of this service"
            );
            continue;
        }
        if stored == projection.version() {
            continue;
        }
        tracing::info!(
            projection = name,
            from = stored,
            to = projection.version(),
            "rebuilding an outdated read model in the background"
        );
        if let Err(err) =
            rebuild_logged(&pool, projection.as_ref(), &RebuildOptions::default()).await
        {
            tracing::error!(
                projection = name,
                error = %format!("{err:#}"),
                "rebuild failed; the old model keeps serving (run `arosaje projections rebuild {name}`)"
            );
        }
    }
}

/// Builds read models that were never built (a cold start: see
/// [`super::runner::Projections::cold_models`]) by rebuilding them: those that other read
/// models' rows refer to (foreign keys into their tables: `users`) first, one by one, then the
/// others at once, each on its own connections. Their projectors must not run meanwhile (they
/// would fill the live tables a second time, and a swap waits for their batches). Instances
/// starting cold together build each model once: the rebuild lock is waited for, and a model
/// found built once it is taken is skipped (`unbuilt_only`). A second rebuild of `users` while
/// other models replay would deadlock with their swaps (seen in the two-instance test before
/// this).
pub async fn build_cold(
    pool: &PgPool,
    models: &[Arc<dyn Projection>],
    options: &RebuildOptions,
) -> anyhow::Result<()> {
    let mut parents = Vec::new();
    let mut others = Vec::new();
    for model in models {
        let tables: Vec<&str> = model.tables().to_vec();
        let referred: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
                             WHERE c.contype = 'f' \
                               AND c.confrelid = ANY(SELECT to_regclass(t)::oid FROM unnest($1::text[]) t) \
                               AND c.conrelid <> ALL(SELECT to_regclass(t)::oid FROM unnest($1::text[]) t))",
        )
        .bind(&tables)
        .fetch_one(pool)
        .await?;
        if referred {
            parents.push(model.clone());
        } else {
            others.push(model.clone());
        }
    }
    for model in parents {
        build_one(pool.clone(), model, options.clone()).await?;
    }
    let mut builds = tokio::task::JoinSet::new();
    for model in others {
        builds.spawn(build_one(pool.clone(), model, options.clone()));
    }
    let mut failed = None;
    while let Some(done) = builds.join_next().await {
        if let Err(err) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            failed.get_or_insert(err);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// One cold start rebuild, logged.
async fn build_one(
    pool: PgPool,
    model: Arc<dyn Projection>,
    options: RebuildOptions,
) -> anyhow::Result<()> {
    let name = model.name();
    tracing::info!(
        projection = name,
        "cold start: building the read model by a rebuild"
    );
    let options = RebuildOptions {
        // As long as another instance's build of it takes.
        lock_wait: Duration::from_secs(3600),
        unbuilt_only: true,
        ..options
    };
    let report = rebuild_logged(&pool, model.as_ref(), &options)
        .await
        .with_context(|| format!("building {name}"))?;
    if report.skipped {
        tracing::info!(projection = name, "cold start: built by another instance");
    }
    Ok(())
}

/// A rebuild started by `serve` itself (an outdated or a cold model): progress as a log line
/// every 10 s, and one line when it is done.
async fn rebuild_logged(
    pool: &PgPool,
    projection: &dyn Projection,
    options: &RebuildOptions,
) -> anyhow::Result<RebuildReport> {
    let name = projection.name();
    let log = ProgressLog::new(name, Duration::from_secs(10));
    let report = rebuild(pool, projection, options, &|progress| log.observe(progress)).await?;
    if !report.skipped {
        tracing::info!(
            projection = name,
            events = report.events,
            seconds = report.elapsed.as_secs_f64(),
            events_per_second = report.events_per_second().round(),
            "read model rebuilt"
        );
    }
    Ok(report)
}
