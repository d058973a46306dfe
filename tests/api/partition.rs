//! Network partitions under idempotent writes: the app's connection to PostgreSQL breaks on the
//! app's side only, so the backend lives on, still blocked in its append, and commits it later,
//! after the app already answered 503 `outcome_unknown` and freed the `Idempotency-Key` claim.
//! PostgreSQL notices a vanished client only when it next talks to it. Whatever the order, a key
//! makes at most one plant: the orphaned append inserts nothing once its claim is gone, and a
//! claim it still holds is not freed before it ends (then the retry answers what it committed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::faults::{assert_unavailable, create, fern, plant_counts, APPEND_LOCK};
use crate::helpers::{config, eventually, pool, unique_email, TestApp};

/// A TCP proxy between the app's pool and PostgreSQL that cuts a connection on the app's side
/// only, as a partition would: the app sees its connection close, the server does not.
struct Partition {
    port: u16,
    /// Cut switches by the server-side socket's local port (the backend's `client_port`).
    cuts: Arc<Mutex<HashMap<u16, oneshot::Sender<()>>>>,
}

impl Partition {
    async fn start(server: &PgConnectOptions) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = format!("{}:{}", server.get_host(), server.get_port());
        let cuts: Arc<Mutex<HashMap<u16, oneshot::Sender<()>>>> = Arc::default();
        let switches = cuts.clone();
        tokio::spawn(async move {
            while let Ok((app_side, _)) = listener.accept().await {
                let Ok(server_side) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cut, cut_here) = oneshot::channel();
                let backend_port = server_side.local_addr().unwrap().port();
                switches.lock().unwrap().insert(backend_port, cut);
                tokio::spawn(relay(app_side, server_side, cut_here));
            }
        });
        Partition { port, cuts }
    }

    /// The app's connection options, through the proxy.
    fn connect(&self, server: &PgConnectOptions) -> PgConnectOptions {
        server.clone().host("127.0.0.1").port(self.port)
    }

    /// Cuts the app's side of the connection whose backend has `client_port`.
    fn cut(&self, client_port: i32) {
        let port = u16::try_from(client_port).unwrap();
        let cut = self.cuts.lock().unwrap().remove(&port);
        cut.expect("a connection through the proxy")
            .send(())
            .unwrap();
    }
}

async fn relay(mut app_side: TcpStream, mut server_side: TcpStream, cut: oneshot::Receiver<()>) {
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut app_side, &mut server_side) => {}
        Ok(()) = cut => {
            drop(app_side);
            // The backend keeps its connection: whatever it still sends goes nowhere.
            let _ = tokio::io::copy(&mut server_side, &mut tokio::io::sink()).await;
        }
    }
}

/// The app behind a [`Partition`], and a pool of the test's own straight to the database.
async fn partitioned(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    group_commit_writers: usize,
) -> (TestApp, Partition, PgPool) {
    let partition = Partition::start(&connect).await;
    let direct = pool(options.clone(), connect.clone()).await;
    let mut config = config();
    config.group_commit_writers = group_commit_writers;
    let t = TestApp::with_config(options, partition.connect(&connect), config, true).await;
    (t, partition, direct)
}

/// Waits until `count` backends of this database wait on a lock of `wait_event` kind while
/// running a statement that contains `statement`; their (pid, client_port).
async fn waiting(db: &PgPool, wait_event: &str, statement: &str, count: usize) -> Vec<(i32, i32)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: Vec<(i32, i32)> = sqlx::query_as(
            "SELECT pid, client_port FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid() \
                AND wait_event_type = 'Lock' AND wait_event = $1 \
                AND position($2 in query) > 0 \
              ORDER BY backend_start",
        )
        .bind(wait_event)
        .bind(statement)
        .fetch_all(db)
        .await
        .unwrap();
        if waiting.len() >= count {
            return waiting;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} backend(s) waiting on a {wait_event} lock running {statement}: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the backend `pid` is done with its statement (idle on its connection, or gone).
async fn finished(db: &PgPool, pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND state <> 'idle')",
        )
        .bind(pid)
        .fetch_one(db)
        .await
        .unwrap();
        if !busy {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} still busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes the commit-order lock in a transaction of the test's own, so appends wait behind it.
async fn hold_append_lock(db: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = arosaje::infra::db::begin(db).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// The append waits on the commit-order lock when its connection is cut on the app's side: the
/// app answers 503 `outcome_unknown` and frees the claim. The orphaned backend then gets the lock
/// and runs its append (before the retry, or racing it): it must insert nothing, and the retry
/// applies the request once.
async fn an_orphaned_append_does_not_double_its_retry(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    group_commit_writers: usize,
    retry_races_the_orphan: bool,
) {
    let (t, partition, db) = partitioned(options, connect, group_commit_writers).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    let body = fern();
    let holder = hold_append_lock(&db).await;
    let (cut, orphan) = tokio::join!(create(&t, &token, "split", &body), async {
        let (pid, client_port) = waiting(&db, "advisory", "INSERT INTO events", 1).await[0];
        partition.cut(client_port);
        pid
    });
    assert_unavailable(&cut, "outcome_unknown");

    let retry = if retry_races_the_orphan {
        // The retry's append queues behind the orphan's; then both get the lock in turn.
        let (retry, ()) = tokio::join!(create(&t, &token, "split", &body), async {
            waiting(&db, "advisory", "INSERT INTO events", 2).await;
            holder.rollback().await.unwrap();
        });
        finished(&db, orphan).await;
        retry
    } else {
        holder.rollback().await.unwrap();
        finished(&db, orphan).await;
        create(&t, &token, "split", &fern()).await
    };
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(plant_counts(&db).await, (1, 1), "one plant, one event");
    let again = create(&t, &token, "split", &fern()).await;
    assert_eq!(again.headers["idempotent-replayed"], "true", "{again:?}");
    assert_eq!(again.body, retry.body);
}

#[sqlx::test]
async fn an_orphaned_ungrouped_append_after_the_release_inserts_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphaned_append_does_not_double_its_retry(options, connect, 0, false).await;
}

#[sqlx::test]
async fn an_orphaned_grouped_append_after_the_release_inserts_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphaned_append_does_not_double_its_retry(options, connect, 2, false).await;
}

#[sqlx::test]
async fn an_orphaned_ungrouped_append_racing_its_retry_inserts_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphaned_append_does_not_double_its_retry(options, connect, 0, true).await;
}

#[sqlx::test]
async fn an_orphaned_grouped_append_racing_its_retry_inserts_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphaned_append_does_not_double_its_retry(options, connect, 2, true).await;
}

/// A lock of the test's own that a `PlantCreated` insert waits on, row by row: inside the append
/// statement, after it took the commit-order lock and its claim.
const GATE: i64 = 7_331_001;

/// The append is cut while it waits inside its statement, past the point where it took its
/// claim: the app must not free the claim before the orphaned backend ends. Here it commits, so
/// the 503 `outcome_unknown` comes once it did, and the retry answers that plant.
async fn an_orphan_holding_its_claim_is_waited_for(
    options: PgPoolOptions,
    connect: PgConnectOptions,
    group_commit_writers: usize,
) {
    let (t, partition, db) = partitioned(options, connect, group_commit_writers).await;
    let (_, token) = t.user(&unique_email("owner")).await;
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_xact_lock({GATE}); RETURN NEW; END $$; \
         CREATE TRIGGER test_gate BEFORE INSERT ON events FOR EACH ROW \
           WHEN (NEW.event_type = 'PlantCreated') EXECUTE FUNCTION test_gate();"
    ))
    .execute(&db)
    .await
    .unwrap();
    let mut holder = arosaje::infra::db::begin(&db).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GATE)
        .execute(&mut *holder)
        .await
        .unwrap();
    let answered = AtomicBool::new(false);
    let (cut, ()) = tokio::join!(
        async {
            let reply = create(&t, &token, "held", &fern()).await;
            answered.store(true, Ordering::SeqCst);
            reply
        },
        async {
            let (_, client_port) = waiting(&db, "advisory", "INSERT INTO events", 1).await[0];
            partition.cut(client_port);
            // The claim is freed only once the orphan's transaction ends: until then the app's
            // release waits on the claim's row (and the answer with it).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let release_waits: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity \
                      WHERE datname = current_database() AND pid <> pg_backend_pid() \
                        AND wait_event_type = 'Lock' \
                        AND position('idempotency_keys' in query) > 0 \
                        AND position('INSERT INTO events' in query) = 0)",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                if release_waits || answered.load(Ordering::SeqCst) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nothing waits on the claim"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            holder.rollback().await.unwrap();
        }
    );
    assert_unavailable(&cut, "outcome_unknown");
    let committed: Vec<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events WHERE event_type = 'PlantCreated'")
            .fetch_all(&db)
            .await
            .unwrap();
    let retry = create(&t, &token, "held", &fern()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{retry:?}");
    assert_eq!(plant_counts(&db).await, (1, 1), "one plant, one event");
    assert_eq!(
        committed.first().map(String::as_str),
        retry.body["id"].as_str(),
        "the retry answers the plant the orphan committed"
    );
}

#[sqlx::test]
async fn an_ungrouped_orphan_holding_its_claim_is_waited_for(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphan_holding_its_claim_is_waited_for(options, connect, 0).await;
}

#[sqlx::test]
async fn a_grouped_orphan_holding_its_claim_is_waited_for(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    an_orphan_holding_its_claim_is_waited_for(options, connect, 2).await;
}

/// An instance cut off inside a transaction that holds the commit-order lock (between an
/// append's `INSERT` and its `COMMIT`) leaves a backend idle in that transaction, and every
/// append waits behind it. Nothing closes its socket, so TCP alone would take hours: the
/// server's idle-in-transaction timeout, which the app sets on its sessions, ends it, and
/// appends resume.
#[sqlx::test]
async fn a_transaction_cut_off_holding_the_commit_order_lock_is_ended_by_the_server(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let partition = Partition::start(&connect).await;
    let db = pool(options.clone(), connect.clone()).await;
    let mut config = config();
    config.store.database_idle_in_transaction_secs = 2;
    let t = TestApp::with_config(options, partition.connect(&connect), config, true).await;
    let (_, token) = t.user(&unique_email("owner")).await;

    // A transaction of the app's pool takes the lock an append's INSERT takes, then is cut off.
    let mut stranded = arosaje::infra::db::begin(&t.pool).await.unwrap();
    let (pid, client_port): (i32, i32) = sqlx::query_as(
        "SELECT pg_backend_pid(), inet_client_port() FROM (SELECT pg_advisory_xact_lock($1)) AS held",
    )
    .bind(APPEND_LOCK)
    .fetch_one(&mut *stranded)
    .await
    .unwrap();
    partition.cut(client_port);

    let created = tokio::time::timeout(
        Duration::from_secs(30),
        create(&t, &token, "after-the-cut", &fern()),
    )
    .await
    .expect("appends stay stalled behind the cut-off transaction");
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(plant_counts(&db).await, (1, 1));
    eventually(
        "the server to end the cut-off session",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)",
            )
            .bind(pid)
            .fetch_one(&db)
            .await
            .unwrap()
        },
    )
    .await;
    drop(stranded);
}

/// The limits `connect_database` puts on its sessions reach every connection made from the
/// pool's options: pooled ones, and the dedicated ones that hold session locks (side-effect
/// projectors' leases, rebuilds).
#[sqlx::test]
async fn every_connection_of_the_app_carries_the_server_side_limits(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let mut store = config().store;
    store.database_url = arosaje::config::ConnectionUrl::new(connect.to_url_lossy().to_string());
    store.database_idle_in_transaction_secs = 45;
    store.database_tcp_keepalive_secs = 20;
    let pool = arosaje::connect_database(&store).await.unwrap();
    let mut dedicated = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    let read = "SELECT array_agg(setting ORDER BY name) FROM pg_settings WHERE name IN \
        ('idle_in_transaction_session_timeout', 'tcp_keepalives_count', 'tcp_keepalives_idle', \
         'tcp_keepalives_interval', 'tcp_user_timeout')";
    let expected = ["45000", "3", "20", "10", "50000"];
    let pooled: Vec<String> = sqlx::query_scalar(read).fetch_one(&pool).await.unwrap();
    assert_eq!(pooled, expected);
    let own: Vec<String> = sqlx::query_scalar(read)
        .fetch_one(&mut dedicated)
        .await
        .unwrap();
    assert_eq!(own, expected);
}
