//! Wake-ups after appends: local projectors at once, other instances through one coalesced
//! `NOTIFY arosaje_events`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

/// Who is told that events were appended: projectors of this process at once (`local`), and other
/// instances through one coalesced `NOTIFY arosaje_events` (`outbound`, sent by
/// [`run_notifier`]). A trigger that notified inside every append transaction would serialise all
/// appends, fsync included, on PostgreSQL's notification queue lock.
pub struct Wakeups {
    /// Each local projector's wake-up, with the aggregate types it reads.
    local: std::sync::RwLock<Vec<(&'static [&'static str], Arc<Notify>)>>,
    outbound: Notify,
    /// This process's name in its notifications' payload: its own listener hears them too, and
    /// skips them (the appends already woke the projectors that read them).
    instance: String,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            local: std::sync::RwLock::default(),
            outbound: Notify::new(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

impl Wakeups {
    /// Whether a notification's payload says it came from this process.
    pub fn is_own(&self, payload: &str) -> bool {
        payload == self.instance
    }

    /// The wake-up of a projector that reads `aggregate_types`.
    pub fn subscribe(&self, aggregate_types: &'static [&'static str]) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        if let Ok(mut local) = self.local.write() {
            local.push((aggregate_types, notify.clone()));
        }
        notify
    }

    /// Events of `aggregate_type` were committed here: wake the projectors that read them, and
    /// have other instances told.
    pub fn appended(&self, aggregate_type: &str) {
        if let Ok(local) = self.local.read() {
            for (types, notify) in local.iter() {
                if types.contains(&aggregate_type) {
                    notify.notify_waiters();
                }
            }
        }
        self.outbound.notify_one();
    }

    /// Wakes every local projector (a notification from another instance, a reconnect).
    pub fn wake_all(&self) {
        if let Ok(local) = self.local.read() {
            for (_, notify) in local.iter() {
                notify.notify_waiters();
            }
        }
    }
}

/// Sends `NOTIFY arosaje_events` after local appends, with this process's instance id as payload;
/// appends that happen while one is in flight share the next one.
pub async fn run_notifier(pool: PgPool, wakeups: Arc<Wakeups>) {
    // Under load it notifies about once per group commit: on a connection of its own.
    let mut held = crate::infra::db::Held::default();
    loop {
        wakeups.outbound.notified().await;
        let sent = async {
            let conn = held.get(&pool).await?;
            sqlx::query("SELECT pg_notify('arosaje_events', $1)")
                .bind(&wakeups.instance)
                .execute(conn)
                .await
        }
        .await;
        if let Err(err) = sent {
            held.discard();
            tracing::warn!(error = %err, "cannot notify other instances; they will poll");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
