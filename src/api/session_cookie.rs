//! The refresh token's cookie, for browsers.
//!
//! Login and refresh answer the pair in JSON (the contract every client uses) and, alongside,
//! set the refresh token in a cookie no script can read (`HttpOnly`), sent only over TLS
//! (`Secure`; browsers treat `localhost` and 127.0.0.1 as secure), never on a cross-site
//! request (`SameSite=Strict`), bound to this exact host (the `__Host-` prefix: no `Domain`, so
//! a sibling subdomain cannot plant one). The web client keeps its access token in memory only;
//! after a reload it calls `POST /api/auth/refresh` with `{}` and the cookie brings the session
//! back. A body's `refresh_token`, when given, wins over the cookie, so API clients are
//! unaffected. CSRF: the cookie is only read by `/api/auth/refresh`, which needs a JSON body
//! (a cross-origin page cannot send one without a CORS preflight this API refuses) and whose
//! answer such a page cannot read.

use std::time::Duration;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};

pub const NAME: &str = "__Host-arosaje_refresh";

/// The refresh token presented in the request's cookies, if any.
pub fn read(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == NAME && !cookie.value().is_empty())
        .map(|cookie| cookie.value().to_string())
}

fn build(value: &str, max_age: Duration) -> Option<HeaderValue> {
    let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let cookie = Cookie::build((NAME, value))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(seconds))
        .build();
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// Sets the cookie to `token` for `max_age` (the session's idle lifetime: each refresh renews it).
pub fn set(headers: &mut HeaderMap, token: &str, max_age: Duration) {
    if let Some(value) = build(token, max_age) {
        headers.append(SET_COOKIE, value);
    }
}

/// Tells the browser to forget the cookie (logout, a refused refresh).
pub fn clear(headers: &mut HeaderMap) {
    if let Some(value) = build("", Duration::ZERO) {
        headers.append(SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_host_bound_http_only_secure_and_strict() {
        let mut headers = HeaderMap::new();
        set(&mut headers, "u.s.secret", Duration::from_secs(600));
        let value = headers[SET_COOKIE].to_str().unwrap();
        let parsed = Cookie::parse(value).unwrap();
        assert_eq!(parsed.name(), NAME);
        assert_eq!(parsed.value(), "u.s.secret");
        assert_eq!(parsed.http_only(), Some(true));
        assert_eq!(parsed.secure(), Some(true));
        assert_eq!(parsed.same_site(), Some(SameSite::Strict));
        assert_eq!(parsed.path(), Some("/"));
        assert_eq!(parsed.domain(), None);
        assert_eq!(parsed.max_age(), Some(cookie::time::Duration::seconds(600)));
    }

    #[test]
    fn clearing_expires_it_at_once() {
        let mut headers = HeaderMap::new();
        clear(&mut headers);
        let parsed = Cookie::parse(headers[SET_COOKIE].to_str().unwrap()).unwrap();
        assert_eq!(parsed.value(), "");
        assert_eq!(parsed.max_age(), Some(cookie::time::Duration::ZERO));
    }

    #[test]
    fn reads_the_token_among_other_cookies_and_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("theme=dark; lang=fr"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-arosaje_refresh=u.s.secret; b=2"),
        );
        assert_eq!(read(&headers).as_deref(), Some("u.s.secret"));
        let mut empty = HeaderMap::new();
        empty.append(
            COOKIE,
            HeaderValue::from_static("__Host-arosaje_refresh=; x"),
        );
        assert_eq!(read(&empty), None);
        assert_eq!(read(&HeaderMap::new()), None);
    }
}
