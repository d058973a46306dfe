use std::time::Duration;

use arosaje::config::Config;
use arosaje::{api, App, BackgroundTasks};
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub app: App,
    pub router: Router,
    pub pool: PgPool,
    pub _projectors: Option<BackgroundTasks>,
    /// The documented operations whose answers were checked against the document.
    pub checked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A pool of our own on the test's database: sqlx's test pools share 20 connections among all
/// tests of the binary, too few for projectors plus concurrent writers.
pub async fn pool(_options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    // As `connect_database` sets it up, with more time to wait for a connection.
    arosaje::infra::db::pool_options(&config().store)
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect)
        .await
        .expect("test pool")
}

/// Default test configuration: fast polling, real Redis from `REDIS_URL` or localhost, and the
/// same random secrets for every app of the run (instances of one deployment share them).
pub fn config() -> Config {
    static SECRETS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (jwt, pepper) = SECRETS.get_or_init(|| {
        (
            arosaje::config::random_secret(),
            arosaje::config::random_secret(),
        )
    });
    let mut config = Config::for_tests("postgres://unused");
    config.jwt_secret = Some(arosaje::config::Secret::new(jwt.clone()));
    config.email_pepper = Some(arosaje::config::Secret::new(pepper.clone()));
    // Test clients come from 10.x addresses (see `with_config`).
    config.metrics_allowed_ips = vec!["10.0.0.0/8".into()];
    // Test admins have no authenticator app; `tests/api/mfa.rs` covers `required`.
    config.admin_mfa = arosaje::config::MfaPolicy::Optional;
    config.projection_poll_ms = 200;
    // Photos of each test app in a directory of its own.
    config.storage_dir = std::env::temp_dir()
        .join(format!("arosaje-test-photos-{}", Uuid::new_v4()))
        .to_string_lossy()
        .into_owned();
    config.read_your_writes_timeout_ms = 10_000;
    config
}

impl TestApp {
    pub async fn spawn(options: PgPoolOptions, connect: PgConnectOptions) -> TestApp {
        Self::with_config(options, connect, config(), true).await
    }

    pub async fn with_config(
        options: PgPoolOptions,
        connect: PgConnectOptions,
        config: Config,
        run_projectors: bool,
    ) -> TestApp {
        // The app's connections are made as `connect_database` makes them.
        let connect = arosaje::infra::db::session_settings(connect, &config.store);
        let pool = pool(options, connect).await;
        Self::with_pool(pool, config, run_projectors).await
    }

    /// An app on a pool the test built (e.g. with `before_acquire` hooks that change sessions).
    pub async fn with_pool(pool: PgPool, config: Config, run_projectors: bool) -> TestApp {
        keep_interest();
        let app = App::with_pool(config, pool.clone()).await.expect("app");
        let projectors = run_projectors.then(|| app.start_projectors());
        // Each test app is its own client address, so rate limits of parallel tests stay apart.
        let client =
            std::net::SocketAddr::from(([10, rand_octet(), rand_octet(), rand_octet()], 40000));
        TestApp {
            router: api::router(app.clone()).layer(MockConnectInfo(client)),
            app,
            pool,
            _projectors: projectors,
            checked: Default::default(),
        }
    }

    /// The documented operations answered so far, as (path template, lowercase method).
    pub fn checked(&self) -> std::collections::BTreeSet<(String, String)> {
        self.checked.lock().expect("checked").clone()
    }

    /// Sends a request through the router. Every answer on a documented route must match the
    /// OpenAPI document (status, content type, schema): see `contract.rs`.
    pub async fn raw(&self, request: Request<Body>) -> Reply {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match crate::contract::check(&method, &path, status, content_type, &bytes) {
            None => {}
            Some(Ok(())) => {
                if let Some(template) = crate::contract::template_of(&path) {
                    self.checked
                        .lock()
                        .expect("checked")
                        .insert((template, method.as_str().to_ascii_lowercase()));
                }
            }
            Some(Err(drift)) => panic!("the answer drifts from the OpenAPI document: {drift}"),
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        self.raw(request).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, Some(token), None).await
    }

    pub async fn post(&self, uri: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, uri, token, Some(body)).await
    }

    pub async fn patch(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, uri, Some(token), Some(body)).await
    }

    pub async fn delete(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(token), None).await
    }

    pub async fn register(&self, email: &str, display_name: &str) -> Reply {
        self.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "display_name": display_name}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers and logs in a user; returns (user id, access token).
    pub async fn user(&self, email: &str) -> (Uuid, String) {
        self.user_named(email, "Test User").await
    }

    /// Registers and logs in a user with this display name; returns (user id, access token).
    pub async fn user_named(&self, email: &str, display_name: &str) -> (Uuid, String) {
        let registered = self.register(email, display_name).await;
        assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
        let login = self.login(email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        let id = login.body["user"]["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        (
            id,
            login.body["access_token"]
                .as_str()
                .expect("token")
                .to_string(),
        )
    }

    /// A user whose e-mail address is verified (through the link's token, as a user would);
    /// returns (user id, access token).
    pub async fn verified_user(&self, email: &str) -> (Uuid, String) {
        self.verified_user_named(email, "Test User").await
    }

    /// [`TestApp::verified_user`] with this display name.
    pub async fn verified_user_named(&self, email: &str, display_name: &str) -> (Uuid, String) {
        let (id, token) = self.user_named(email, display_name).await;
        let link = self
            .app
            .tokens
            .issue(arosaje::infra::tokens::Purpose::VerifyEmail, id, 0)
            .expect("token");
        let verified = self
            .post("/api/auth/verify-email", None, json!({ "token": link }))
            .await;
        assert_eq!(verified.status, StatusCode::NO_CONTENT, "{verified:?}");
        (id, token)
    }

    /// An ADMIN, created the way `arosaje admin create` does; returns (id, access token).
    pub async fn admin(&self) -> (Uuid, String) {
        let email = unique_email("admin");
        let id = arosaje::identity::create_admin(&self.app, &email, PASSWORD, "Admin")
            .await
            .expect("admin");
        let login = self.login(&email, PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        (
            id,
            login.body["access_token"]
                .as_str()
                .expect("token")
                .to_string(),
        )
    }

    /// A user given `role` by an admin, logged in afterwards; returns (id, access token).
    pub async fn user_with_role(&self, admin_token: &str, role: &str) -> (Uuid, String) {
        let email = unique_email(&role.to_lowercase());
        let (id, _) = self.user(&email).await;
        let changed = self
            .call(
                Method::PUT,
                &format!("/api/admin/users/{id}/role"),
                Some(admin_token),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
        let login = self.login(&email, PASSWORD).await;
        (
            id,
            login.body["access_token"]
                .as_str()
                .expect("token")
                .to_string(),
        )
    }

    pub async fn create_plant(&self, token: &str, name: &str) -> Reply {
        self.post(
            "/api/plants",
            Some(token),
            json!({"name": name, "care": {"watering_interval_days": 7}}),
        )
        .await
    }
}

/// Waits for a condition with a deadline instead of sleeping a fixed time.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn unique_email(prefix: &str) -> String {
    format!("{prefix}-{}@example.com", Uuid::new_v4().simple())
}

fn rand_octet() -> u8 {
    (Uuid::new_v4().as_u128() % 250) as u8 + 1
}

/// A session's record in Redis, straight from the source.
pub async fn redis_session(user_id: Uuid, session_id: Uuid) -> serde_json::Value {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let value: String = redis::cmd("HGET")
        .arg(format!("session:{user_id}"))
        .arg(session_id.to_string())
        .query_async(&mut conn)
        .await
        .expect("session");
    serde_json::from_str(&value).expect("json")
}

pub async fn put_redis_session(user_id: Uuid, session_id: Uuid, value: &serde_json::Value) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("HSET")
        .arg(format!("session:{user_id}"))
        .arg(session_id.to_string())
        .arg(value.to_string())
        .query_async::<()>(&mut conn)
        .await
        .expect("hset");
}

/// Log lines written, as `LOG_FORMAT=json` writes them, while a [`capture_logs`] guard lives.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("buffer").clone()).expect("UTF-8")
    }

    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }
}

/// A global subscriber that records nothing but is interested in every callsite.
///
/// tracing caches one interest per callsite for the whole process. While at most one
/// dispatcher is registered, a callsite first reached on a thread with no subscriber of its own
/// is cached as `never`, and from then on no thread sees it, a capturing one included: another
/// test's wrong password could silence the `login_failed` line `hardening.rs` waits for
/// (tokio-rs/tracing's callsite cache; seen in CI as a flake of that test). With this one
/// registered for the whole binary, no callsite is ever cached as `never`: each event asks the
/// subscriber of its own thread.
struct InterestKeeper;

impl tracing::Subscriber for InterestKeeper {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs [`InterestKeeper`] once per test binary; every test app does, so it is in place
/// before the callsites are first reached.
fn keep_interest() {
    static KEEPER: std::sync::Once = std::sync::Once::new();
    KEEPER.call_once(|| {
        tracing::subscriber::set_global_default(InterestKeeper)
            .expect("no other global subscriber in the test binary");
    });
}

/// Captures, as JSON lines at `info`, what this thread logs while the guard lives.
/// `#[sqlx::test]` runs each test on a current-thread runtime, so the app's projectors, spawned
/// on it, log here too, and other tests (on other threads) do not.
pub fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    keep_interest();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter("info")
        .with_writer(captured.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}
