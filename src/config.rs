//! Settings, read once from the environment. Every value has a documented default that works on a
//! developer machine where PostgreSQL and Redis listen locally.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
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

/// Development-only defaults for the secrets; `serve` warns when they are in use.
pub const DEV_JWT_SECRET: &str = "dev-only-jwt-secret-change-me";
pub const DEV_EMAIL_PEPPER: &str = "dev-only-email-pepper-change-me";

/// Database and Redis endpoints, shared by every sub-command.
#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// PostgreSQL connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/arosaje"
    )]
    pub database_url: String,
    /// Maximum connections in the PostgreSQL pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 32)]
    pub database_max_connections: u32,
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub store: StoreConfig,
    /// Redis connection string (sessions; later rate limits, fan-out, cache).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Address the HTTP server listens on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,
    /// HMAC key for access tokens (HS256). Set it in production.
    #[arg(long, env = "JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: Secret,
    /// Key of the keyed hash that indexes e-mail addresses without storing them in clear.
    /// Changing it makes existing accounts unreachable by e-mail: set it once.
    #[arg(long, env = "EMAIL_PEPPER", default_value = DEV_EMAIL_PEPPER, hide_default_value = true)]
    pub email_pepper: Secret,
    /// Lifetime of an access token, in seconds (refresh tokens renew it).
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub access_token_ttl_secs: u64,
    /// Lifetime of a session in Redis, in seconds (refreshed at each login).
    #[arg(long, env = "SESSION_TTL_SECS", default_value_t = 24 * 3600)]
    pub session_ttl_secs: u64,
    /// How long a command waits for its read models before answering 202 with its position.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT_MS", default_value_t = 2000)]
    pub read_your_writes_timeout_ms: u64,
    /// Attempts of a command that meets a concurrent change before it answers 409.
    #[arg(long, env = "COMMAND_RETRIES", default_value_t = 5)]
    pub command_retries: u32,
    /// Concurrent single-event appends share one INSERT and one commit (0 turns it off).
    #[arg(long, env = "GROUP_COMMIT_WRITERS", default_value_t = 4)]
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
    /// Largest accepted JSON request body, in bytes.
    #[arg(long, env = "MAX_JSON_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_json_body_bytes: usize,
    /// Requests taking longer than this are answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Longest wait for any Redis call; past it the request gets 503 (sessions) or passes
    /// unlimited (rate limits).
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// SMTP server for outgoing mail, e.g. `smtp://127.0.0.1:2525` or
    /// `smtps://user:pass@mail.example:465`. Unset: mails are logged, not sent.
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<String>,
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
    /// Base URL of the front end, for links in mails.
    #[arg(long, env = "PUBLIC_URL", default_value = "http://127.0.0.1:8000")]
    pub public_url: String,
    /// Rate-limit window, in seconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECS", default_value_t = 60)]
    pub rate_limit_window_secs: u64,
    /// Requests per window, per client IP and endpoint, on the API.
    #[arg(long, env = "RATE_LIMIT_API", default_value_t = 600)]
    pub rate_limit_api: u32,
    /// Requests per window, per client IP, on login, registration and token refresh.
    #[arg(long, env = "RATE_LIMIT_AUTH", default_value_t = 20)]
    pub rate_limit_auth: u32,
    /// Attempts per window against one e-mail address (login, registration), from any IP.
    #[arg(long, env = "RATE_LIMIT_AUTH_PER_EMAIL", default_value_t = 10)]
    pub rate_limit_auth_per_email: u32,
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
    /// Run the projectors in this process (turn off for API-only instances).
    #[arg(long, env = "RUN_PROJECTORS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_projectors: bool,
}

impl Config {
    /// Defaults for everything, as if no variable were set; tests and benches start from here.
    pub fn for_tests(database_url: &str) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["arosaje"]).config;
        config.store.database_url = database_url.to_string();
        if let Ok(url) = std::env::var("REDIS_URL") {
            config.redis_url = url;
        }
        config
    }

    pub fn read_your_writes_timeout(&self) -> Duration {
        Duration::from_millis(self.read_your_writes_timeout_ms)
    }

    pub fn projection_poll(&self) -> Duration {
        Duration::from_millis(self.projection_poll_ms)
    }

    /// Warnings an operator should see at start-up.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.jwt_secret.expose() == DEV_JWT_SECRET {
            warnings.push("JWT_SECRET is the development default: set it in production");
        }
        if self.email_pepper.expose() == DEV_EMAIL_PEPPER {
            warnings.push("EMAIL_PEPPER is the development default: set it in production");
        }
        if self.smtp_url.as_deref().unwrap_or("").is_empty() {
            warnings
                .push("SMTP_URL is unset: mails (verification, password reset) are only logged");
        }
        warnings
    }
}
