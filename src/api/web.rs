//! The web app (`web/`, built to static files) served at `/` when `WEB_DIR` names its folder:
//! files as they are, client routes (`/sittings/…`) answered with `index.html`, and the API's
//! own paths never shadowed: an unknown path under them stays a JSON 404.
//!
//! Its pages get a Content-Security-Policy that allows only this origin (plus the configured
//! map tiles for images, and the hashes of the few inline scripts the build wrote into
//! `index.html`), in place of the API's `default-src 'none'`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use super::error::ApiError;
use crate::config::Config;

/// Paths that belong to the API: the web app never answers under them.
const RESERVED: &[&str] = &[
    "/api",
    "/ws",
    "/docs",
    "/openapi.json",
    "/metrics",
    "/health",
    "/ready",
];

/// The built web app: its folder and the policy its answers carry.
#[derive(Debug)]
pub struct Site {
    dir: PathBuf,
    csp: HeaderValue,
}

impl Site {
    /// The site `WEB_DIR` names, if it holds an `index.html` (an empty `WEB_DIR`: none).
    pub fn load(config: &Config) -> Option<Arc<Site>> {
        let dir = config
            .web_dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty())?;
        let index = std::fs::read_to_string(dir.join("index.html"))
            .map_err(|err| {
                tracing::warn!(dir = %dir.display(), error = %err,
                    "WEB_DIR has no readable index.html: the web app is not served");
            })
            .ok()?;
        let csp = policy(&index, config.web_tile_url.as_deref());
        let csp = HeaderValue::from_str(&csp)
            .map_err(|err| tracing::warn!(error = %err, "web app CSP unusable"))
            .ok()?;
        tracing::info!(dir = %dir.display(), "serving the web app at /");
        Some(Arc::new(Site {
            dir: dir.clone(),
            csp,
        }))
    }

    /// The default folder `serve` uses when `WEB_DIR` is unset, if a build is there.
    pub fn default_dir() -> Option<PathBuf> {
        let dir = Path::new("web/.output/public");
        dir.join("index.html").is_file().then(|| dir.to_path_buf())
    }
}

/// Whether `path` is one of the API's (or under one).
pub fn reserved(path: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        path == *prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The CSP of the web app's answers: this origin only, the inline scripts of `index.html` by
/// hash, images also from the tile server (and `data:`/`blob:` for previews and photos fetched
/// with the token), WebSockets to this origin.
pub fn policy(index_html: &str, tile_url: Option<&str>) -> String {
    let hashes: String = inline_scripts(index_html)
        .map(|script| {
            let digest = Sha256::digest(script.as_bytes());
            format!(
                " 'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect();
    let tiles = tile_url
        .and_then(origin_of)
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'{hashes}; style-src 'self'; \
         img-src 'self' data: blob:{tiles}; connect-src 'self'; font-src 'self'; \
         manifest-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// `scheme://host[:port]` of a URL template, or None when it is not an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    // A template such as `{s}.tile.example` stands for its subdomains.
    let host = host.replace("{s}", "*");
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
    {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// The bodies of `<script>` elements without `src` in an HTML page.
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    html.split("<script").skip(1).filter_map(|rest| {
        let (attributes, after) = rest.split_once('>')?;
        if attributes.contains("src=") {
            return None;
        }
        let (body, _) = after.split_once("</script>")?;
        (!body.is_empty()).then_some(body)
    })
}

/// Answers a request no API route took: the web app's file, or `index.html` for a client
/// route, or the API's JSON 404 under its own paths (and without a web app).
pub async fn fallback(site: Option<Arc<Site>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let site = match site {
        Some(site)
            if !reserved(&path) && matches!(*request.method(), Method::GET | Method::HEAD) =>
        {
            site
        }
        _ => return ApiError::NotFound("route").into_response(),
    };
    let files = ServeDir::new(&site.dir).append_index_html_on_directories(true);
    let mut response = match files.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    let asset = path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'));
    if response.status() == StatusCode::NOT_FOUND && !asset {
        // A client route: the app's shell, which routes in the browser.
        let index = Request::new(Body::empty());
        response = match ServeFile::new(site.dir.join("index.html"))
            .oneshot(index)
            .await
        {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        };
    }
    // Built assets carry their hash in their names; everything else is checked each time.
    let cache = if path.starts_with("/_nuxt/") && response.status().is_success() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, site.csp.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_paths_are_the_apis_and_their_children_only() {
        for path in [
            "/api",
            "/api/plants",
            "/ws",
            "/docs",
            "/docs/x",
            "/openapi.json",
            "/metrics",
            "/health",
            "/ready",
        ] {
            assert!(reserved(path), "{path}");
        }
        for path in [
            "/",
            "/apiary",
            "/sittings/1",
            "/docsy",
            "/healthy",
            "/_nuxt/a.js",
        ] {
            assert!(!reserved(path), "{path}");
        }
    }

    #[test]
    fn policy_hashes_inline_scripts_and_allows_the_tile_origin() {
        let html = r#"<html><script type="module" src="/_nuxt/a.js"></script><script>window.x=1</script></html>"#;
        let csp = policy(html, Some("https://{s}.tile.example.org/{z}/{x}/{y}.png"));
        let digest = Sha256::digest(b"window.x=1");
        let hash = base64::engine::general_purpose::STANDARD.encode(digest);
        assert!(
            csp.contains(&format!("script-src 'self' 'sha256-{hash}';")),
            "{csp}"
        );
        assert!(
            csp.contains("img-src 'self' data: blob: https://*.tile.example.org;"),
            "{csp}"
        );
        assert!(csp.contains("default-src 'self'"));
        assert!(!csp.contains("unsafe"));
    }

    #[test]
    fn a_tile_url_that_is_no_http_url_adds_nothing() {
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("https://a b/"), None);
        assert_eq!(
            origin_of("http://127.0.0.1:9000/{z}"),
            Some("http://127.0.0.1:9000".into())
        );
    }
}
