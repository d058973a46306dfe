//! Settings, read once from the environment. Every value has a documented default that works on a
//! developer machine where PostgreSQL and Redis listen locally, except the secrets: those have no
//! default outside the explicit development mode (`--dev` / `AROSAJE_DEV=1`), and
//! [`Config::validate`] refuses to start with a missing, short or publicly known one.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// A secret string: never printed by `Debug` or `Display`, and wiped from memory when dropped.
#[derive(Clone)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for ConnectionUrl {
    fn drop(&mut self) {
        // It may carry a password.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// A connection string whose password `Debug` never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host/... -> scheme://user:***@host/...
        let url = &self.0;
        let redacted = match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &url[scheme_end + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
                    }
                    None => url.clone(),
                }
            }
            _ => url.clone(),
        };
        write!(f, "{redacted:?}")
    }
}

impl std::str::FromStr for ConnectionUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// The secrets of development mode. Public (they are in this file), so `validate` refuses them
/// anywhere else, as it refuses the other publicly known values below.
pub const DEV_JWT_SECRET: &str = "dev-only-jwt-secret-public-never-use-in-production";
pub const DEV_EMAIL_PEPPER: &str = "dev-only-email-pepper-public-never-use-in-production";
const KNOWN_SECRETS: &[&str] = &[
    DEV_JWT_SECRET,
    DEV_EMAIL_PEPPER,
    // Earlier defaults of this code base and of its docker-compose.yml.
    "dev-only-jwt-secret-change-me",
    "dev-only-email-pepper-change-me",
    "change-me-local-compose-jwt-secret",
    "change-me-local-compose-email-pepper",
];
/// Shortest accepted `JWT_SECRET` (HS256 keys should be at least as long as the hash).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Shortest accepted `EMAIL_PEPPER`.
pub const MIN_EMAIL_PEPPER_BYTES: usize = 16;

/// Whether ADMIN and AUDITOR accounts must use a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MfaPolicy {
    /// Without TOTP they may only enrol (403 `mfa_enrollment_required` elsewhere).
    Required,
    Optional,
}

/// Database and Redis endpoints, shared by every sub-command.
#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// PostgreSQL connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/arosaje"
    )]
    pub database_url: ConnectionUrl,
    /// Maximum connections in the PostgreSQL pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    pub database_max_connections: u32,
    /// PostgreSQL ends a session of ours left idle inside a transaction this long (seconds; 0:
    /// never), releasing its locks: an instance cut off mid-append would otherwise hold the
    /// commit-order lock, and stall every append, until TCP gives up on it.
    #[arg(long, env = "DATABASE_IDLE_IN_TRANSACTION_SECS", default_value_t = 60)]
    pub database_idle_in_transaction_secs: u64,
    /// PostgreSQL probes a silent connection of ours after this long (seconds; 0: the server's
    /// default), then every 10 s, and drops it after 3 unanswered probes: a vanished instance's
    /// session locks (a side-effect projector's lease, a rebuild's) are freed within about
    /// this long plus 30 s. TCP connections only.
    #[arg(long, env = "DATABASE_TCP_KEEPALIVE_SECS", default_value_t = 30)]
    pub database_tcp_keepalive_secs: u64,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub store: StoreConfig,
    /// Redis connection string (sessions, rate limits; later fan-out, cache).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: ConnectionUrl,
    /// Address the HTTP server listens on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,
    /// Development mode: built-in (public) secrets when none are set, and unsent mails printed
    /// whole to the log. Never for an instance that others can reach.
    #[arg(long, env = "AROSAJE_DEV", default_value_t = false, action = clap::ArgAction::Set,
          default_missing_value = "true", num_args = 0..=1,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: bool,
    /// Master key of the signed tokens (at least 32 bytes): the access-token key and the key of
    /// mailed action tokens are derived from it, each for its own purpose. Required.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Key of the keyed hash that indexes e-mail addresses without storing them in clear
    /// (at least 16 bytes). Changing it makes existing accounts unreachable by e-mail: set it
    /// once. Required.
    #[arg(long, env = "EMAIL_PEPPER", hide_env_values = true)]
    pub email_pepper: Option<Secret>,
    /// Lifetime of an access token, in seconds (refresh tokens renew it).
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub access_token_ttl_secs: u64,
    /// USER and BOTANIST sessions end after this long without a refresh (seconds).
    #[arg(long, env = "SESSION_IDLE_SECS", default_value_t = 14 * 24 * 3600)]
    pub session_idle_secs: u64,
    /// USER and BOTANIST sessions end this long after their login, however active (seconds).
    #[arg(long, env = "SESSION_ABSOLUTE_SECS", default_value_t = 30 * 24 * 3600)]
    pub session_absolute_secs: u64,
    /// ADMIN and AUDITOR sessions end after this long without a refresh (seconds).
    #[arg(long, env = "PRIVILEGED_SESSION_IDLE_SECS", default_value_t = 30 * 60)]
    pub privileged_session_idle_secs: u64,
    /// ADMIN and AUDITOR sessions end this long after their login (seconds).
    #[arg(long, env = "PRIVILEGED_SESSION_ABSOLUTE_SECS", default_value_t = 12 * 3600)]
    pub privileged_session_absolute_secs: u64,
    /// How long a command waits for its read models before answering 202 with its position.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT_MS", default_value_t = 2000)]
    pub read_your_writes_timeout_ms: u64,
    /// Attempts of a command that meets a concurrent change before it answers 409.
    #[arg(long, env = "COMMAND_RETRIES", default_value_t = 5)]
    pub command_retries: u32,
    /// Concurrent single-event appends share one INSERT and one commit (0 turns it off). Every
    /// append holds the commit-order lock through its commit (fsync included), so statements in
    /// flight at once only queue on it: fewer writers make bigger groups, fewer fsyncs per event
    /// (create/peer on the ratio bench: 1 writer 1.88, 2 writers 1.67, 4 writers 1.25-1.54, 8
    /// writers 1.21-1.30). Two keep appends going while one writer's connection hangs.
    #[arg(long, env = "GROUP_COMMIT_WRITERS", default_value_t = 2)]
    pub group_commit_writers: usize,
    /// Largest number of appends written by one group commit.
    #[arg(long, env = "GROUP_COMMIT_MAX", default_value_t = 256)]
    pub group_commit_max: usize,
    /// Projectors poll the log this often even without notifications.
    #[arg(long, env = "PROJECTION_POLL_MS", default_value_t = 1000)]
    pub projection_poll_ms: u64,
    /// Events a projector applies in one transaction at most.
    #[arg(long, env = "PROJECTION_BATCH_SIZE", default_value_t = 500)]
    pub projection_batch_size: i64,
    /// Failed attempts at one event before a projector parks it and goes on.
    #[arg(long, env = "PROJECTION_MAX_ATTEMPTS", default_value_t = 5)]
    pub projection_max_attempts: u32,
    /// A read model never built, on a log of at least this many events, is built at start by a
    /// rebuild (bulk, aside, then swapped in) rather than batch by batch.
    #[arg(long, env = "COLD_START_REBUILD_EVENTS", default_value_t = 100_000)]
    pub cold_start_rebuild_events: i64,
    /// Largest accepted JSON request body, in bytes.
    #[arg(long, env = "MAX_JSON_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_json_body_bytes: usize,
    /// Largest accepted photo upload, in bytes.
    #[arg(long, env = "MAX_PHOTO_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_photo_bytes: usize,
    /// Largest photo in pixels (width x height); more is refused (413) before decoding, so a
    /// decompression bomb never takes the memory.
    #[arg(long, env = "MAX_PHOTO_PIXELS", default_value_t = 40_000_000)]
    pub max_photo_pixels: u64,
    /// Where photos are stored when `STORAGE_URL` is unset: a local directory.
    #[arg(long, env = "STORAGE_DIR", default_value = "data/photos")]
    pub storage_dir: String,
    /// An object store for photos instead of `STORAGE_DIR`: `s3://bucket/prefix` (credentials,
    /// region and endpoint from the usual `AWS_*` variables, e.g. `AWS_ENDPOINT` for MinIO).
    #[arg(long, env = "STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Requests taking longer than this are answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Longest wait for any Redis call; past it the request gets 503 (sessions, and the rate
    /// limits of the authentication endpoints) or passes unlimited (other rate limits).
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// SMTP server for outgoing mail, e.g. `smtp://127.0.0.1:2525` or
    /// `smtps://user:pass@mail.example:465`. Unset: mails are logged, not sent.
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<ConnectionUrl>,
    /// Sender of outgoing mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "A'rosa-je <no-reply@arosaje.local>"
    )]
    pub mail_from: String,
    /// Whether sittings require a verified e-mail address (false: local demos skip it).
    #[arg(long, env = "REQUIRE_EMAIL_VERIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_email_verification: bool,
    /// The longest sitting, in days.
    #[arg(long, env = "MAX_SITTING_DAYS", default_value_t = 90)]
    pub max_sitting_days: i64,
    /// How often the start reminder job looks for sittings that start tomorrow, in seconds
    /// (owner and sitter are mailed once, whatever the number of instances).
    #[arg(long, env = "START_REMINDER_INTERVAL_SECS", default_value_t = 600)]
    pub start_reminder_interval_secs: u64,
    /// How often the expiry job looks for open (or accepted, never started) sittings whose last
    /// day has passed, in seconds (one instance at a time; each owner is mailed once).
    #[arg(long, env = "SITTING_EXPIRY_INTERVAL_SECS", default_value_t = 600)]
    pub sitting_expiry_interval_secs: u64,
    /// Message texts become unreadable everywhere after this many days (the fact that a message
    /// was sent stays).
    #[arg(long, env = "MESSAGE_RETENTION_DAYS", default_value_t = 30)]
    pub message_retention_days: u32,
    /// A GDPR export whose client reads nothing for this long is cut short (seconds): it holds
    /// no database connection meanwhile, only its caller's one export slot.
    #[arg(long, env = "EXPORT_STALL_SECS", default_value_t = 60)]
    pub export_stall_secs: u64,
    /// Events per page of a GDPR export: each page is one short statement.
    #[arg(long, env = "EXPORT_PAGE_EVENTS", default_value_t = 256)]
    pub export_page_events: usize,
    /// Base URL of the front end, for links in mails.
    #[arg(long, env = "PUBLIC_URL", default_value = "http://127.0.0.1:8000")]
    pub public_url: String,
    /// The built web app (`web/.output/public`) to serve at `/`; `serve` uses that folder when
    /// this is unset and it exists; empty: no web app.
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
    /// The map tiles the web app loads (`https://tile.example/{z}/{x}/{y}.png`): its origin is
    /// added to `img-src` of the web app's CSP. Unset: no tiles.
    #[arg(long, env = "WEB_TILE_URL")]
    pub web_tile_url: Option<String>,
    /// Rate-limit window, in seconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECS", default_value_t = 60)]
    pub rate_limit_window_secs: u64,
    /// Requests per window, per client IP and endpoint, on the API.
    #[arg(long, env = "RATE_LIMIT_API", default_value_t = 600)]
    pub rate_limit_api: u32,
    /// Requests per window, per client IP, on login, registration, token refresh, e-mail
    /// verification and password reset.
    #[arg(long, env = "RATE_LIMIT_AUTH", default_value_t = 20)]
    pub rate_limit_auth: u32,
    /// Attempts per window against one e-mail address (login, registration), from any IP.
    #[arg(long, env = "RATE_LIMIT_AUTH_PER_EMAIL", default_value_t = 10)]
    pub rate_limit_auth_per_email: u32,
    /// Password checks one account may fail within `PASSWORD_ATTEMPTS_WINDOW_SECS` (login,
    /// password change, TOTP enrolment), from any address; more get 429
    /// `too_many_password_attempts`. Counted per e-mail address at login, whether or not an
    /// account has it.
    #[arg(long, env = "PASSWORD_ATTEMPTS_PER_ACCOUNT", default_value_t = 100)]
    pub password_attempts_per_account: u32,
    /// The sliding window of `PASSWORD_ATTEMPTS_PER_ACCOUNT`, in seconds.
    #[arg(long, env = "PASSWORD_ATTEMPTS_WINDOW_SECS", default_value_t = 3600)]
    pub password_attempts_window_secs: u64,
    /// Wrong second-factor codes in a row (login, step-up, confirmation, removal) that lock an
    /// account's second factor.
    #[arg(long, env = "MFA_MAX_FAILURES", default_value_t = 5)]
    pub mfa_max_failures: u32,
    /// How long a locked second factor refuses every code (429 `mfa_locked`), in seconds.
    #[arg(long, env = "MFA_LOCKOUT_SECS", default_value_t = 15 * 60)]
    pub mfa_lockout_secs: u64,
    /// Proxies whose `X-Forwarded-For` is believed (comma-separated IPs); others' is ignored.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub trusted_proxies: Vec<String>,
    /// Origins allowed to call the API from a browser (comma-separated; empty: none).
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_allowed_origins: Vec<String>,
    /// Networks allowed to read `/metrics` without a token (comma-separated addresses or
    /// address/prefix), e.g. where Prometheus runs.
    #[arg(
        long,
        env = "METRICS_ALLOWED_IPS",
        value_delimiter = ',',
        default_value = "127.0.0.1/32,::1/128"
    )]
    pub metrics_allowed_ips: Vec<String>,
    /// A bearer token that also opens `/metrics` (`Authorization: Bearer ...`), from anywhere.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,
    /// Whether ADMIN and AUDITOR sessions need TOTP (`required`: without it they may only enrol).
    #[arg(long, env = "ADMIN_MFA", value_enum, default_value_t = MfaPolicy::Required)]
    pub admin_mfa: MfaPolicy,
    /// Run the projectors in this process (turn off for API-only instances).
    #[arg(long, env = "RUN_PROJECTORS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_projectors: bool,
    #[command(flatten)]
    pub influx: InfluxConfig,
}

/// Where business series go (InfluxDB v2, see `infra::influx`). Unset `INFLUX_URL`: nowhere.
#[derive(Debug, Clone, Args)]
pub struct InfluxConfig {
    /// InfluxDB v2 base URL, e.g. `http://influxdb:8086`. Unset: no series are written.
    #[arg(long, env = "INFLUX_URL")]
    pub influx_url: Option<ConnectionUrl>,
    /// API token with write access to `INFLUX_BUCKET` (required with `INFLUX_URL`).
    #[arg(long, env = "INFLUX_TOKEN", hide_env_values = true)]
    pub influx_token: Option<Secret>,
    /// Organisation that owns the bucket.
    #[arg(long, env = "INFLUX_ORG", default_value = "arosaje")]
    pub influx_org: String,
    /// Bucket the series are written to.
    #[arg(long, env = "INFLUX_BUCKET", default_value = "arosaje")]
    pub influx_bucket: String,
    /// Points sent in one write at most; a full batch is sent at once.
    #[arg(long, env = "INFLUX_BATCH_SIZE", default_value_t = 1000)]
    pub influx_batch_size: usize,
    /// A batch that is not full is sent after this long (milliseconds).
    #[arg(long, env = "INFLUX_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    pub influx_flush_interval_ms: u64,
    /// Points waiting to be written at most; more are dropped (and counted), never waited for.
    #[arg(long, env = "INFLUX_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub influx_queue_capacity: usize,
    /// Longest wait for one write; past it the batch is dropped (and counted).
    #[arg(long, env = "INFLUX_TIMEOUT_MS", default_value_t = 5000)]
    pub influx_timeout_ms: u64,
}

impl InfluxConfig {
    /// Whether series are written at all.
    pub fn enabled(&self) -> bool {
        self.influx_url
            .as_ref()
            .is_some_and(|url| !url.as_str().trim().is_empty())
    }

    /// Problems with these settings, for [`Config::validate`].
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(url) = self.influx_url.as_ref().filter(|_| self.enabled()) else {
            return problems;
        };
        match url::Url::parse(url.as_str().trim()) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => problems.push("INFLUX_URL must be an http:// or https:// URL".into()),
        }
        if self
            .influx_token
            .as_ref()
            .is_none_or(|t| t.expose().is_empty())
        {
            problems.push("INFLUX_TOKEN is required with INFLUX_URL".into());
        }
        for (name, value) in [
            ("INFLUX_ORG", &self.influx_org),
            ("INFLUX_BUCKET", &self.influx_bucket),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} must not be empty with INFLUX_URL"));
            }
        }
        for (name, value) in [
            ("INFLUX_BATCH_SIZE", self.influx_batch_size as u64),
            ("INFLUX_FLUSH_INTERVAL_MS", self.influx_flush_interval_ms),
            ("INFLUX_QUEUE_CAPACITY", self.influx_queue_capacity as u64),
            ("INFLUX_TIMEOUT_MS", self.influx_timeout_ms),
        ] {
            if value < 1 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        problems
    }
}

impl Config {
    /// Defaults for everything, as if no variable were set, with fresh random secrets; tests and
    /// benches start from here.
    pub fn for_tests(database_url: &str) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["arosaje"]).config;
        config.store.database_url = ConnectionUrl::new(database_url);
        if let Ok(url) = std::env::var("REDIS_URL") {
            config.redis_url = ConnectionUrl::new(url);
        }
        config.jwt_secret = Some(Secret::new(random_secret()));
        config.email_pepper = Some(Secret::new(random_secret()));
        config
    }

    /// Checks every setting, and in development mode fills in the missing secrets. An error names
    /// each problem; `serve` and the CLI refuse to start on one.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.dev {
            self.jwt_secret
                .get_or_insert_with(|| Secret::new(DEV_JWT_SECRET));
            self.email_pepper
                .get_or_insert_with(|| Secret::new(DEV_EMAIL_PEPPER));
        }
        let secrets = [
            ("JWT_SECRET", &self.jwt_secret, MIN_JWT_SECRET_BYTES),
            ("EMAIL_PEPPER", &self.email_pepper, MIN_EMAIL_PEPPER_BYTES),
        ];
        for (name, value, min) in secrets {
            match value.as_ref().map(Secret::expose) {
                None | Some("") => problems.push(format!(
                    "{name} is not set (scripts/run.sh generates one; or start with --dev / \
                     AROSAJE_DEV=1 for a local trial)"
                )),
                Some(v) if KNOWN_SECRETS.contains(&v) && !self.dev => problems.push(format!(
                    "{name} is a publicly known development value: generate your own"
                )),
                Some(v) if v.len() < min => {
                    problems.push(format!("{name} must be at least {min} bytes long"))
                }
                Some(_) => {}
            }
        }
        let positive = [
            (
                "DATABASE_MAX_CONNECTIONS",
                i64::from(self.store.database_max_connections),
            ),
            ("GROUP_COMMIT_MAX", self.group_commit_max as i64),
            ("PROJECTION_BATCH_SIZE", self.projection_batch_size),
            (
                "PROJECTION_MAX_ATTEMPTS",
                i64::from(self.projection_max_attempts),
            ),
            ("PROJECTION_POLL_MS", self.projection_poll_ms as i64),
            ("COLD_START_REBUILD_EVENTS", self.cold_start_rebuild_events),
            (
                "START_REMINDER_INTERVAL_SECS",
                self.start_reminder_interval_secs as i64,
            ),
            (
                "SITTING_EXPIRY_INTERVAL_SECS",
                self.sitting_expiry_interval_secs as i64,
            ),
            ("MAX_JSON_BODY_BYTES", self.max_json_body_bytes as i64),
            ("REQUEST_TIMEOUT_SECS", self.request_timeout_secs as i64),
            ("REDIS_TIMEOUT_MS", self.redis_timeout_ms as i64),
            ("ACCESS_TOKEN_TTL_SECS", self.access_token_ttl_secs as i64),
            ("SESSION_IDLE_SECS", self.session_idle_secs as i64),
            ("SESSION_ABSOLUTE_SECS", self.session_absolute_secs as i64),
            (
                "PRIVILEGED_SESSION_IDLE_SECS",
                self.privileged_session_idle_secs as i64,
            ),
            (
                "PRIVILEGED_SESSION_ABSOLUTE_SECS",
                self.privileged_session_absolute_secs as i64,
            ),
            ("RATE_LIMIT_WINDOW_SECS", self.rate_limit_window_secs as i64),
            ("RATE_LIMIT_API", i64::from(self.rate_limit_api)),
            ("RATE_LIMIT_AUTH", i64::from(self.rate_limit_auth)),
            (
                "RATE_LIMIT_AUTH_PER_EMAIL",
                i64::from(self.rate_limit_auth_per_email),
            ),
            (
                "PASSWORD_ATTEMPTS_PER_ACCOUNT",
                i64::from(self.password_attempts_per_account),
            ),
            (
                "PASSWORD_ATTEMPTS_WINDOW_SECS",
                self.password_attempts_window_secs as i64,
            ),
            ("MFA_MAX_FAILURES", i64::from(self.mfa_max_failures)),
            ("MFA_LOCKOUT_SECS", self.mfa_lockout_secs as i64),
        ];
        for (name, value) in positive {
            if value < 1 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        // Activity is seen at refresh: a session must not go idle while its access token lives.
        for (name, idle) in [
            ("SESSION_IDLE_SECS", self.session_idle_secs),
            (
                "PRIVILEGED_SESSION_IDLE_SECS",
                self.privileged_session_idle_secs,
            ),
        ] {
            if idle < self.access_token_ttl_secs {
                problems.push(format!(
                    "{name} must be at least ACCESS_TOKEN_TTL_SECS ({})",
                    self.access_token_ttl_secs
                ));
            }
        }
        if self.projection_batch_size > 100_000 {
            problems.push("PROJECTION_BATCH_SIZE must be at most 100000".into());
        }
        if self.group_commit_max > 10_000 {
            problems.push("GROUP_COMMIT_MAX must be at most 10000".into());
        }
        if self.group_commit_writers > 64 {
            problems.push("GROUP_COMMIT_WRITERS must be at most 64".into());
        }
        for proxy in self.trusted_proxies.iter().map(|p| p.trim()) {
            if !proxy.is_empty() && proxy.parse::<std::net::IpAddr>().is_err() {
                problems.push(format!("TRUSTED_PROXIES: {proxy:?} is not an IP address"));
            }
        }
        for network in self.metrics_allowed_ips.iter().map(|p| p.trim()) {
            if !network.is_empty() && Network::parse(network).is_none() {
                problems.push(format!(
                    "METRICS_ALLOWED_IPS: {network:?} is not an address or address/prefix"
                ));
            }
        }
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| !t.expose().is_empty() && t.expose().len() < 16)
        {
            problems.push("METRICS_TOKEN must be at least 16 bytes long".into());
        }
        problems.extend(self.influx.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The token master key; [`Config::validate`] has made sure it is set.
    pub fn jwt_secret(&self) -> &str {
        self.jwt_secret.as_ref().map(Secret::expose).unwrap_or("")
    }

    /// The e-mail index key; [`Config::validate`] has made sure it is set.
    pub fn email_pepper(&self) -> &str {
        self.email_pepper.as_ref().map(Secret::expose).unwrap_or("")
    }

    /// Session lifetimes by role.
    pub fn session_lifetimes(&self) -> crate::infra::sessions::Lifetimes {
        crate::infra::sessions::Lifetimes {
            idle: Duration::from_secs(self.session_idle_secs),
            absolute: Duration::from_secs(self.session_absolute_secs),
            privileged_idle: Duration::from_secs(self.privileged_session_idle_secs),
            privileged_absolute: Duration::from_secs(self.privileged_session_absolute_secs),
        }
    }

    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn projection_poll(&self) -> Duration {
        Duration::from_millis(self.projection_poll_ms)
    }

    pub fn start_reminder_interval(&self) -> Duration {
        Duration::from_secs(self.start_reminder_interval_secs)
    }

    pub fn sitting_expiry_interval(&self) -> Duration {
        Duration::from_secs(self.sitting_expiry_interval_secs)
    }

    /// Warnings an operator should see at start-up.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.dev {
            warnings.push(
                "DEVELOPMENT MODE (--dev / AROSAJE_DEV): public built-in secrets unless set, and \
                 unsent mails printed whole to the log. Anyone can forge tokens for this \
                 instance: never let others reach it",
            );
        }
        if self.smtp_url.as_ref().is_none_or(|u| u.as_str().is_empty()) {
            warnings.push("SMTP_URL is unset: mails (verification, password reset) are not sent");
        }
        warnings
    }
}

/// An address range: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(value: &str) -> Option<Network> {
        let (address, prefix) = match value.trim().split_once('/') {
            Some((address, prefix)) => (address.parse().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (value.trim().parse().ok()?, None),
        };
        let max = match address {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { address, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What is wrong with a configuration, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// 48 random bytes, base64: what `scripts/run.sh` generates too.
pub fn random_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_required_long_and_not_public_unless_in_development_mode() {
        let mut config = Config::for_tests("postgres://x");
        assert_eq!(config.validate(), Ok(()));

        config.jwt_secret = None;
        config.email_pepper = Some(Secret::new(DEV_EMAIL_PEPPER));
        let err = config.clone().validate().unwrap_err();
        assert!(
            err.0.iter().any(|p| p.starts_with("JWT_SECRET is not set")),
            "{err}"
        );
        assert!(
            err.0
                .iter()
                .any(|p| p.contains("EMAIL_PEPPER is a publicly known")),
            "{err}"
        );

        config.jwt_secret = Some(Secret::new("short"));
        config.email_pepper = Some(Secret::new("change-me-local-compose-email-pepper"));
        let err = config.clone().validate().unwrap_err();
        assert!(err
            .0
            .iter()
            .any(|p| p.contains("JWT_SECRET must be at least 32 bytes")));
        assert!(err
            .0
            .iter()
            .any(|p| p.contains("EMAIL_PEPPER is a publicly known")));

        // Development mode fills in what is missing, and says so.
        let mut dev = Config::for_tests("postgres://x");
        dev.jwt_secret = None;
        dev.email_pepper = None;
        dev.dev = true;
        assert_eq!(dev.validate(), Ok(()));
        assert_eq!(dev.jwt_secret(), DEV_JWT_SECRET);
        assert!(dev
            .warnings()
            .iter()
            .any(|w| w.starts_with("DEVELOPMENT MODE")));
    }

    #[test]
    fn zero_sizes_and_bad_proxies_are_refused_before_they_panic_or_spin() {
        let mut config = Config::for_tests("postgres://x");
        config.group_commit_max = 0;
        config.projection_batch_size = 0;
        config.projection_max_attempts = 0;
        config.trusted_proxies = vec!["10.0.0.1".into(), "not-an-ip".into()];
        let err = config.validate().unwrap_err();
        for expected in [
            "GROUP_COMMIT_MAX must be at least 1",
            "PROJECTION_BATCH_SIZE must be at least 1",
            "PROJECTION_MAX_ATTEMPTS must be at least 1",
            "TRUSTED_PROXIES: \"not-an-ip\" is not an IP address",
        ] {
            assert!(err.0.iter().any(|p| p == expected), "{expected}: {err}");
        }
    }

    #[test]
    fn influx_needs_a_url_a_token_and_positive_sizes_only_when_enabled() {
        let mut config = Config::for_tests("postgres://x");
        config.influx.influx_batch_size = 0;
        assert_eq!(config.clone().validate(), Ok(()), "off: not checked");
        config.influx.influx_url = Some(ConnectionUrl::new("influxdb:8086"));
        let err = config.validate().unwrap_err();
        for expected in [
            "INFLUX_URL must be an http:// or https:// URL",
            "INFLUX_TOKEN is required with INFLUX_URL",
            "INFLUX_BATCH_SIZE must be at least 1",
        ] {
            assert!(err.0.iter().any(|p| p == expected), "{expected}: {err}");
        }
        let mut config = Config::for_tests("postgres://x");
        config.influx.influx_url = Some(ConnectionUrl::new("http://influxdb:8086"));
        config.influx.influx_token = Some(Secret::new("a-token"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn networks_match_their_prefix() {
        let lan = Network::parse("10.0.0.0/8").unwrap();
        assert!(lan.contains("10.20.30.40".parse().unwrap()));
        assert!(!lan.contains("11.0.0.1".parse().unwrap()));
        assert!(lan.contains("::ffff:10.1.1.1".parse().unwrap()));
        let one = Network::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Network::parse("10.0.0.0/33"), None);
        assert_eq!(Network::parse("nope"), None);
    }

    #[test]
    fn debug_never_prints_credentials() {
        let mut config = Config::for_tests("postgres://app:hunter2@db:5432/arosaje");
        config.smtp_url = Some(ConnectionUrl::new("smtps://mailer:s3cret@mail.example:465"));
        config.redis_url = ConnectionUrl::new("rediss://:r3dis@cache:6380");
        let printed = format!("{config:?}");
        for secret in [
            "hunter2",
            "s3cret",
            "r3dis",
            config.jwt_secret(),
            config.email_pepper(),
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("postgres://app:***@db:5432/arosaje"),
            "{printed}"
        );
    }
}
