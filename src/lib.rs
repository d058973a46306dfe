//! A'rosa-je: an event-sourced backend for plant sitting, botanist advice and messaging.
//!
//! Data flows one way: HTTP -> command -> aggregate -> events appended -> projector -> read model
//! -> query. See `DESIGN.md` in the shared folder for the decisions behind it.

pub mod access;
pub mod api;
pub mod audit;
pub mod commands;
pub mod config;
pub mod events;
pub mod expiry;
pub mod identity;
pub mod infra;
pub mod messaging;
pub mod photos;
pub mod projections;
pub mod reminders;
pub mod seed;

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::api::token::JwtKeys;
use crate::config::Config;
use crate::events::crypto::{EmailIndex, KeyStore};
use crate::events::store::{EventStore, Wakeups};
use crate::infra::sessions::Sessions;
use crate::infra::tokens::ActionTokens;
use crate::projections::{Projection, Projections, ProjectorSettings};

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Application state, built once in [`App::build`]; cheap to clone.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub config: Config,
    pub pool: PgPool,
    pub store: EventStore,
    pub wakeups: Arc<Wakeups>,
    pub projections: Projections,
    pub keys: Arc<KeyStore>,
    pub email_index: EmailIndex,
    pub sessions: Sessions,
    pub rate_limiter: infra::rate_limit::RateLimiter,
    /// Per-account limits on password checks and second-factor codes.
    pub attempts: infra::attempts::Attempts,
    pub jwt: JwtKeys,
    pub tokens: Arc<ActionTokens>,
    pub metrics: PrometheusHandle,
    /// Per-message data keys.
    pub message_keys: Arc<events::crypto::MessageKeys>,
    /// Per-month keys of access records (`access`).
    pub month_keys: Arc<events::crypto::MonthKeys>,
    /// Answers of hot public reads, in Redis.
    pub cache: infra::cache::QueryCache,
    /// Where plant photos are kept.
    pub photos: infra::storage::PhotoStore,
    /// Redis, for WebSocket tickets and frames published by hand (typing).
    pub redis: infra::redis::Redis,
    /// The WebSocket clients of this instance.
    pub hub: Arc<infra::hub::Hub>,
    /// Photo decodes running at once (each holds an image in memory).
    pub photo_slots: Arc<tokio::sync::Semaphore>,
    /// Business series for InfluxDB (disabled without `INFLUX_URL`).
    pub series: infra::influx::Series,
}

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Opens the PostgreSQL pool described by the configuration.
pub async fn connect_database(config: &config::StoreConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database_url
        .as_str()
        .parse()
        .with_context(|| "DATABASE_URL is not a PostgreSQL connection string")?;
    infra::db::pool_options(config)
        .connect_with(infra::db::session_settings(options, config))
        .await
        .with_context(|| "cannot connect to PostgreSQL (DATABASE_URL)")
}

/// Buckets of `http_request_duration_seconds`, in seconds: 500 ms (the latency alert's
/// threshold) is a bucket boundary, so the alert's p99 is interpolated between true bounds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How the exporter is set up: request latency as histogram buckets (`_bucket{le=...}`), which
/// Prometheus can add up across instances; other histograms stay summaries (quantiles).
fn metrics_builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    match builder.set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full("http_request_duration_seconds".into()),
        LATENCY_BUCKETS,
    ) {
        Ok(builder) => builder,
        // Only refused for an empty list of buckets, which ours is not.
        Err(_) => PrometheusBuilder::new(),
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every `App` of the process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match metrics_builder().install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (embedding application): keep ours local.
            Err(_) => metrics_builder().build_recorder().handle(),
        })
        .clone()
}

impl App {
    /// Connects to PostgreSQL and Redis, migrates, and wires everything.
    pub async fn build(mut config: Config) -> anyhow::Result<App> {
        config.validate()?;
        let pool = connect_database(&config.store).await?;
        MIGRATOR.run(&pool).await.context("running migrations")?;
        App::with_pool(config, pool).await
    }

    /// Wires the application on an existing (migrated) pool. Refuses an invalid configuration.
    pub async fn with_pool(mut config: Config, pool: PgPool) -> anyhow::Result<App> {
        config.validate()?;
        let redis = infra::redis::Redis::connect(
            config.redis_url.as_str(),
            Duration::from_millis(config.redis_timeout_ms),
        )
        .await
        .context("cannot connect to Redis (REDIS_URL)")?;
        let wakeups = Arc::new(Wakeups::default());
        let keys = Arc::new(KeyStore::new(pool.clone()));
        let message_keys = Arc::new(events::crypto::MessageKeys::new(pool.clone()));
        let month_keys = Arc::new(events::crypto::MonthKeys::new(pool.clone()));
        let email_index = EmailIndex::new(config.email_pepper());
        let tokens = Arc::new(ActionTokens::new(config.jwt_secret()));
        let mailer = infra::mail::from_config(
            config.smtp_url.as_ref().map(config::ConnectionUrl::as_str),
            &config.mail_from,
            config.dev,
        )
        .context("SMTP_URL or MAIL_FROM")?;
        let outbox = projections::mailer::MailerProjection {
            keys: keys.clone(),
            mailer,
            tokens: tokens.clone(),
            public_url: config.public_url.clone(),
            max_age: chrono::Duration::hours(24),
        };
        let mut models = read_models(
            keys.clone(),
            message_keys.clone(),
            month_keys.clone(),
            email_index.clone(),
        );
        models.push(Arc::new(outbox));
        models.push(Arc::new(projections::fanout::FanoutProjection {
            redis: redis.clone(),
            keys: message_keys.clone(),
            max_age: chrono::Duration::minutes(5),
        }));
        let series = infra::influx::Series::from_config(&config.influx)
            .context("INFLUX_URL or its settings")?;
        if series.enabled() {
            models.push(Arc::new(projections::series::SeriesProjection {
                series: series.clone(),
                max_age: chrono::Duration::hours(1),
            }));
        }
        let projections = Projections::new(
            pool.clone(),
            ProjectorSettings {
                batch_size: config.projection_batch_size,
                poll_interval: config.projection_poll(),
                max_attempts: config.projection_max_attempts,
                cold_start_log: config.cold_start_rebuild_events,
            },
            models,
            wakeups.clone(),
        )
        .with_series(series.clone());
        projections
            .init()
            .await
            .context("initialising projections")?;
        let mut store = EventStore::new(pool.clone(), config.command_retries, wakeups.clone());
        if config.group_commit_writers > 0 {
            store = store.with_group_commit(config.group_commit_writers, config.group_commit_max);
        }
        let photos = infra::storage::PhotoStore::from_config(
            config.storage_url.as_deref(),
            &config.storage_dir,
        )?;
        let inner = AppInner {
            series,
            photos,
            photo_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            store,
            wakeups,
            rate_limiter: infra::rate_limit::RateLimiter::new(redis.clone()),
            attempts: infra::attempts::Attempts::new(redis.clone()),
            cache: infra::cache::QueryCache::new(
                redis.clone(),
                infra::cache::namespace(&pool)
                    .await
                    .context("reading the deployment id (migrations applied?)")?,
            ),
            redis: redis.clone(),
            hub: Arc::new(infra::hub::Hub::default()),
            message_keys,
            month_keys,
            sessions: Sessions::new(redis, config.session_lifetimes()),
            jwt: JwtKeys::new(config.jwt_secret(), config.access_token_ttl_secs),
            tokens,
            keys,
            email_index,
            projections,
            pool,
            metrics: metrics_handle(),
            config,
        };
        Ok(App(Arc::new(inner)))
    }

    /// Starts the background work of this process: the notifier that tells other instances of
    /// appends, the start reminder job (on every instance: the aggregate issues each reminder
    /// once), the sitting expiry job (one instance at a time) and, with `run_projectors`, the
    /// projectors. They stop when the guard is dropped.
    pub fn start(&self, run_projectors: bool) -> BackgroundTasks {
        let mut tasks = vec![tokio::spawn(events::wakeups::run_notifier(
            self.pool.clone(),
            self.wakeups.clone(),
        ))];
        tasks.push(tokio::spawn(reminders::run_scheduler(
            self.clone(),
            self.config.start_reminder_interval(),
        )));
        tasks.push(tokio::spawn(expiry::run_scheduler(
            self.clone(),
            self.config.sitting_expiry_interval(),
        )));
        if run_projectors {
            tasks.extend(self.projections.spawn());
            // A read model whose code is newer than its data is rebuilt aside and swapped in
            // while the old one keeps serving (projections::rebuild): no operator step, no
            // downtime. `arosaje projections list` shows it as "rebuilding".
            tasks.push(tokio::spawn(projections::rebuild::rebuild_outdated(
                self.pool.clone(),
                self.projections.projections(),
            )));
        }
        tasks.push(tokio::spawn(photos::run_sweeper(self.clone())));
        tasks.push(tokio::spawn(messaging::run_retention(self.clone())));
        tasks.push(tokio::spawn(audit::run_checkpoints(
            self.pool.clone(),
            audit::checkpoint_key(&self.config),
        )));
        tasks.push(tokio::spawn(identity::erasure::run_key_invalidation(
            self.config.redis_url.as_str().to_string(),
            self.keys.clone(),
        )));
        tasks.push(tokio::spawn(infra::hub::run_subscriber(
            self.config.redis_url.as_str().to_string(),
            self.hub.clone(),
        )));
        BackgroundTasks(tasks)
    }

    /// Notifier, reminder job and projectors (what `serve` runs by default).
    pub fn start_projectors(&self) -> BackgroundTasks {
        self.start(true)
    }
}

/// Names of every projector `serve` runs (read models, then the mail outbox and the live
/// fan-out); with `INFLUX_URL`, `influx` ([`projections::series`]) runs after them.
pub const PROJECTION_NAMES: &[&str] = &[
    "users",
    "plants",
    "sittings",
    "advice",
    "messaging",
    "access",
    "mailer",
    "fanout",
];

/// Every read model of the service, in rebuild order (users before what refers to them).
pub fn read_models(
    keys: Arc<KeyStore>,
    message_keys: Arc<events::crypto::MessageKeys>,
    month_keys: Arc<events::crypto::MonthKeys>,
    email_index: EmailIndex,
) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(projections::users::UsersProjection::new(
            keys.clone(),
            email_index,
        )),
        Arc::new(projections::plants::PlantsProjection::new(keys.clone())),
        Arc::new(projections::sittings::SittingsProjection::new(keys.clone())),
        Arc::new(projections::advice::AdviceProjection::new(keys)),
        Arc::new(projections::messaging::MessagingProjection::new(
            message_keys,
        )),
        Arc::new(projections::access::AccessProjection::new(month_keys)),
    ]
}

/// Background tasks that are aborted when this guard is dropped.
pub struct BackgroundTasks(Vec<JoinHandle<()>>);

impl BackgroundTasks {
    pub fn abort(&self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

impl From<Vec<JoinHandle<()>>> for BackgroundTasks {
    fn from(handles: Vec<JoinHandle<()>>) -> Self {
        BackgroundTasks(handles)
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        self.abort();
    }
}
