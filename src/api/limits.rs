//! Rate limiting per client and endpoint (`rate:{client}:{endpoint}`, the client being an IPv4
//! address or an IPv6 /64), stricter on the authentication endpoints, and per target e-mail against
//! credential stuffing. Answers 429 with `Retry-After`; every limited response carries
//! `RateLimit-Limit/Remaining/Reset`.
//!
//! When Redis is unreachable, the authentication endpoints fail closed (503
//! `rate_limiter_unavailable`, before any password is checked: an unthrottled login is a password
//! oracle); elsewhere limits are not enforced (fail open, logged and counted), so an outage of the
//! limiter does not take the whole API down.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::infra::rate_limit::{Decision, Quota};
use crate::infra::sessions::Sessions;
use crate::App;

/// Endpoints with the stricter authentication quota, closed while the limiter is unavailable.
const AUTH_ENDPOINTS: &[&str] = &[
    "/api/auth/login",
    "/api/auth/register",
    "/api/auth/refresh",
    "/api/auth/password-reset",
    "/api/auth/password-reset/confirm",
    "/api/auth/verify-email",
    // Checks a password: as strict as login.
    "/api/me/password",
    "/api/me/mfa/totp",
    "/api/me/mfa/totp/confirm",
    "/api/me/mfa/verify",
];

/// Endpoints never limited (probes and scrapers).
const EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];

/// The stored value of the session a request's token names, read by [`rate_limit`] together
/// with the request's count; the [`super::token::AuthUser`] extractor judges it as it would a
/// value it read itself (one Redis round trip per authenticated request instead of two).
/// Only this middleware inserts it: a client cannot.
#[derive(Debug, Clone)]
pub struct SessionRead {
    pub user_id: uuid::Uuid,
    pub session_id: uuid::Uuid,
    pub value: Option<String>,
}

fn window(app: &App) -> Duration {
    Duration::from_secs(app.config.rate_limit_window_secs.max(1))
}

pub async fn rate_limit(State(app): State<App>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    if EXEMPT.contains(&endpoint.as_str()) {
        return next.run(request).await;
    }
    let auth = AUTH_ENDPOINTS.contains(&endpoint.as_str());
    let limit = if auth {
        app.config.rate_limit_auth
    } else {
        app.config.rate_limit_api
    };
    let quota = Quota {
        limit,
        window: window(&app),
    };
    let client = client_addr(&request, &app.config.trusted_proxies)
        .map(rate_key)
        .unwrap_or_else(|| "unknown".to_string());
    let key = format!("rate:{client}:{endpoint}");
    // A request with a valid token reads its session in the same round trip as its count.
    let claims = super::token::bearer_token(request.headers()).and_then(|t| app.jwt.verify(t).ok());
    let checked = match claims {
        Some(claims) => {
            let (hash, field) = Sessions::location(claims.sub, claims.sid);
            app.rate_limiter
                .check_and_hget(&key, quota, hash, field)
                .await
                .map(|(decision, value)| {
                    let read = SessionRead {
                        user_id: claims.sub,
                        session_id: claims.sid,
                        value,
                    };
                    (decision, Some(read))
                })
        }
        None => app
            .rate_limiter
            .check(&key, quota)
            .await
            .map(|decision| (decision, None)),
    };
    let mut request = request;
    let checked = checked.map(|(decision, read)| {
        if let Some(read) = read {
            request.extensions_mut().insert(read);
        }
        decision
    });
    match checked {
        Ok(decision) if !decision.allowed => {
            super::security_log::rate_limited(&endpoint, "client");
            metrics::counter!("rate_limit_rejections_total", "endpoint" => endpoint).increment(1);
            let mut response = ApiError::RateLimited {
                retry_after: decision.retry_after,
            }
            .into_response();
            add_headers(response.headers_mut(), &decision);
            response
        }
        Ok(decision) => {
            let mut response = next.run(request).await;
            add_headers(response.headers_mut(), &decision);
            response
        }
        Err(err) if auth => {
            metrics::counter!("rate_limit_errors_total").increment(1);
            tracing::warn!(error = %err, %endpoint, "rate limiter unavailable; request refused");
            limiter_unavailable().into_response()
        }
        Err(err) => {
            metrics::counter!("rate_limit_errors_total").increment(1);
            tracing::warn!(error = %err, "rate limiter unavailable; request let through");
            next.run(request).await
        }
    }
}

/// The per-address limit of login, registration and password reset, whatever IP the attempts
/// come from. Fails closed: only authentication endpoints call it.
pub async fn limit_email(app: &App, endpoint: &str, email_hash: &[u8]) -> Result<(), ApiError> {
    let hash: String = email_hash
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let quota = Quota {
        limit: app.config.rate_limit_auth_per_email,
        window: window(app),
    };
    match app
        .rate_limiter
        .check(&format!("rate:email:{hash}:{endpoint}"), quota)
        .await
    {
        Ok(decision) if !decision.allowed => {
            super::security_log::rate_limited(endpoint, "email");
            metrics::counter!("rate_limit_rejections_total", "endpoint" => "per_email")
                .increment(1);
            Err(ApiError::RateLimited {
                retry_after: decision.retry_after,
            })
        }
        Ok(_) => Ok(()),
        Err(err) => {
            metrics::counter!("rate_limit_errors_total").increment(1);
            tracing::warn!(error = %err, %endpoint, "rate limiter unavailable; attempt refused");
            Err(limiter_unavailable())
        }
    }
}

/// Authentication waits while its limits cannot be counted.
fn limiter_unavailable() -> ApiError {
    ApiError::Unavailable {
        code: "rate_limiter_unavailable",
        message: "sign-in is paused while the rate limiter is unavailable; try again shortly"
            .into(),
    }
}

fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    let secs = |d: Duration| HeaderValue::from(d.as_secs_f64().ceil() as u64);
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", secs(decision.reset_after));
}

/// What rate limits count by: an IPv4 address whole; an IPv6 address by its /64, the smallest
/// network one subscriber gets (counting whole addresses gave each client 2^64 buckets); an
/// IPv4-mapped IPv6 address as its IPv4 address.
pub fn rate_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                format!("{}/64", Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The client's address as text, `unknown` without a socket (see [`client_addr`]).
pub fn client_ip(request: &Request, trusted_proxies: &[String]) -> String {
    client_addr(request, trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The client's address: the socket's peer, unless that peer is a trusted proxy, in which case
/// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_addr(request: &Request, trusted_proxies: &[String]) -> Option<IpAddr> {
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        // What tests (and embedders) supply instead of a socket.
        .or_else(|| {
            extensions
                .get::<axum::extract::connect_info::MockConnectInfo<SocketAddr>>()
                .map(|mock| mock.0.ip())
        });
    let trusted = |ip: &IpAddr| {
        trusted_proxies
            .iter()
            .any(|p| p.trim().parse::<IpAddr>().ok() == Some(*ip))
    };
    match peer {
        Some(peer) if trusted(&peer) => Some(
            request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|part| part.trim().parse::<IpAddr>().ok())
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(peer: &str, forwarded: Option<&str>) -> Request {
        let mut builder = axum::http::Request::get("/");
        if let Some(value) = forwarded {
            builder = builder.header("x-forwarded-for", value);
        }
        let mut request = builder.body(Body::empty()).unwrap();
        let addr: SocketAddr = format!("{peer}:4000").parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(addr));
        request
    }

    #[test]
    fn the_client_is_the_socket_peer_unless_a_trusted_proxy_says_otherwise() {
        let proxies = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        // A client cannot pick its own address by sending the header directly.
        assert_eq!(
            client_ip(&request("203.0.113.9", Some("1.2.3.4")), &proxies),
            "203.0.113.9"
        );
        // Behind trusted proxies: the right-most address that is not one of them.
        let chained = request("10.0.0.1", Some("1.2.3.4, 198.51.100.7, 10.0.0.2"));
        assert_eq!(client_ip(&chained, &proxies), "198.51.100.7");
        // A trusted proxy that sends no header is the client.
        assert_eq!(client_ip(&request("10.0.0.1", None), &proxies), "10.0.0.1");
        let no_socket = axum::http::Request::get("/").body(Body::empty()).unwrap();
        assert_eq!(client_ip(&no_socket, &proxies), "unknown");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let key = |ip: &str| rate_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "one /64, one bucket"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db9:1:2::1"));
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"), "IPv4 stays whole");
        assert_eq!(key("::ffff:203.0.113.9"), "203.0.113.9", "IPv4-mapped");
    }
}
