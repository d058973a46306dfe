//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations as the
//! routes are registered (`utoipa-axum`), so a route cannot be served without being described.
//! Served at `GET /openapi.json`, with an interactive reference (Scalar, its script embedded in
//! the binary: no CDN) at `GET /docs`.
//!
//! What every operation shares (the error schema, 401 for those that need a token, 400/413/415/422
//! for those that take a body, 408/429/500/503 for all) is added by [`complete`], from the same
//! rules the edge layers apply, so no handler can forget them. [`complete`] also adds the
//! document's links ([`LINKS`]): how an id in an answer feeds the next request, which stateful
//! fuzzers (`scripts/fuzz.sh`) and client generators follow.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, RefOr};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::App;

/// The name of the bearer-token security scheme that secured operations refer to.
pub const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "A'rosa-je API",
        description = "Plant sitting, botanist advice and messaging. Every change is a command \
                       appending events to the log; reads come from projections of it.\n\n\
                       Conventions: JSON in and out, `snake_case` fields, UUID ids, RFC 3339 UTC \
                       times. Errors are `{\"error\": {\"code\", \"message\", \"fields\"?}}`. Lists \
                       take `?limit=` (1-100, default 20) and an opaque `?cursor=`, and answer \
                       `{\"items\", \"next_cursor\"}`. Commands answer once the read models have \
                       caught up (read-your-writes), with `version` and `position`; when they \
                       have not in time, 202 with `status: pending`. Creating `POST`s accept an \
                       `Idempotency-Key` header.",
        license(name = "MIT", identifier = "MIT"),
    ),
    tags(
        (name = "auth", description = "Registration, login, tokens, e-mail verification, password reset"),
        (name = "me", description = "The caller's own account: profile, sessions, password, MFA"),
        (name = "plants", description = "Plants, their care and their photos"),
        (name = "sittings", description = "Sitting requests (gardes): applications, acceptance, care reports, reviews"),
        (name = "advice", description = "Botanists' advice on plants: versions, cross-validation, moderation"),
        (name = "botanists", description = "A botanist's work queue and statistics"),
        (name = "users", description = "Public profiles"),
        (name = "messaging", description = "Conversations, messages, read marks, search"),
        (name = "live", description = "Live updates over WebSocket"),
        (name = "admin", description = "User administration (ADMIN)"),
        (name = "audit", description = "The event log for auditors (AUDITOR, ADMIN)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
    components(schemas(ErrorBody, ErrorDetail, Pending)),
)]
struct ApiDoc;

/// The error every non-2xx answer carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, `snake_case` (`validation_failed`, `not_found`, `mfa_required`...).
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// On `validation_failed`: each invalid field (dotted path) and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
}

/// A command that committed, whose read models had not caught up in time: read the resource
/// again shortly (or wait for `position` in the projections).
#[derive(Debug, Serialize, ToSchema)]
pub struct Pending {
    pub id: Uuid,
    /// Always `pending`.
    pub status: String,
    /// The aggregate's version after the command.
    pub version: i64,
    /// The global log position of the command's last event.
    pub position: Option<i64>,
}

/// A resource as a command left it, with the log position that produced it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Positioned<T> {
    #[serde(flatten)]
    pub resource: T,
    /// The global log position of the command's last event.
    pub position: Option<i64>,
}

/// A page of a list: pass `next_cursor` back as `?cursor=` for the next one; `null` at the end.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each item turned into another.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Every documented route, unmounted: `api::router` mounts them behind the edge layers.
pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/auth", super::auth::router())
        .nest("/api/me/mfa", super::mfa::router())
        .nest("/api/me", super::me::router())
        .nest("/api/plants", super::plants::router())
        .nest("/api/conversations", super::conversations::router())
        .nest("/api/messages", super::conversations::search_router())
        .nest("/api/photos", super::photos::router())
        .nest("/api/ws", super::ws::ticket_router())
        .merge(super::ws::router())
        .nest("/api/sittings", super::sittings::router())
        .nest("/api/advice", super::advice::router())
        .nest("/api/botanist", super::botanist::router())
        .nest("/api/users", super::users::router())
        .nest("/api/admin", super::admin::router())
        .nest("/api/audit", super::audit::router())
        .merge(super::ops::router())
        .merge(router())
}

/// The complete document, without a database or anything else running (`arosaje openapi`).
pub fn openapi() -> OpenApi {
    let (_, mut document) = routes().split_for_parts();
    complete(&mut document);
    document
}

/// The document as served, serialised once.
#[derive(Clone)]
pub struct Served(Arc<String>);

impl Served {
    pub fn new(document: &OpenApi) -> Self {
        let json = serde_json::to_string(document).unwrap_or_else(|err| {
            tracing::error!(error = %err, "the OpenAPI document does not serialise");
            "{}".to_string()
        });
        Served(Arc::new(json))
    }
}

fn router() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
        .routes(routes!(docs_script))
        .routes(routes!(docs_init))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(document): Extension<Served>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.as_str().to_owned(),
    )
        .into_response()
}

/// What the docs page may load: its own scripts, the styles Scalar injects, and calls to this
/// API ("try it"); nothing from elsewhere, and it may not be framed.
/// Checked in headless Chromium against Scalar 1.76: `'unsafe-inline'` styles are needed (Scalar
/// styles itself from JavaScript); `eval` is not (its one probe for it is caught).
pub const DOCS_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>A'rosa-je API</title>
  </head>
  <body>
    <div id="app"></div>
    <script src="docs/scalar.js"></script>
    <script src="docs/init.js"></script>
  </body>
</html>
"#;

/// Relative to the page, so the docs work behind a proxy that mounts the API under a prefix.
const DOCS_INIT: &str = "Scalar.createApiReference('#app', {\n  url: 'openapi.json',\n  \
    withDefaultFonts: false,\n  hideClientButton: true,\n  showDeveloperTools: 'never',\n  telemetry: false\n});\n";

fn with_docs_policy(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    response
}

/// The interactive API reference.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The API reference page", content_type = "text/html", body = String)))]
async fn docs_page() -> Response {
    with_docs_policy(axum::response::Html(DOCS_HTML).into_response())
}

/// The reference's script (Scalar), embedded in the binary.
#[utoipa::path(get, path = "/docs/scalar.js", tag = "operations",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String),
              (status = 404, description = "Not built into this binary", body = ErrorBody)))]
async fn docs_script() -> Response {
    match scalar_api_reference::get_asset("scalar.js") {
        Some(script) => with_docs_policy(
            (
                [
                    (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                    (header::CACHE_CONTROL, "public, max-age=86400"),
                ],
                script,
            )
                .into_response(),
        ),
        None => super::error::ApiError::NotFound("docs script").into_response(),
    }
}

/// Starts the reference on this document.
#[utoipa::path(get, path = "/docs/init.js", tag = "operations",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
async fn docs_init() -> Response {
    with_docs_policy(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            DOCS_INIT,
        )
            .into_response(),
    )
}

/// The answers the edge gives on any route, added to every operation: see the module comment.
pub fn complete(document: &mut OpenApi) {
    let components = document
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.security_schemes.insert(
        BEARER.to_string(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "The `access_token` of `POST /api/auth/login` or `/api/auth/refresh`",
                ))
                .build(),
        ),
    );
    components.security_schemes.insert(
        "metrics_token".to_string(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`METRICS_TOKEN`, for scrapers outside `METRICS_ALLOWED_IPS`",
                ))
                .build(),
        ),
    );
    for (name, description) in COMMON_RESPONSES {
        components
            .responses
            .insert(name.to_string(), RefOr::T(error_response(description)));
    }
    add_links(document);
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            add_common_responses(operation);
        }
    }
}

const COMMON_RESPONSES: [(&str, &str); 9] = [
    ("BadRequest", "`malformed_json`: the body is not JSON"),
    (
        "Unauthorized",
        "`missing_token`, `invalid_token`, `token_expired` or `session_revoked`",
    ),
    (
        "Forbidden",
        "`mfa_enrollment_required`: an ADMIN or AUDITOR must turn TOTP on first \
         (`ADMIN_MFA=required`)",
    ),
    (
        "PayloadTooLarge",
        "The body is over the size limit (`payload_too_large`)",
    ),
    (
        "UnsupportedMediaType",
        "The body is not `application/json` (`unsupported_media_type`)",
    ),
    (
        "Unprocessable",
        "`validation_failed` (with `fields`), `invalid_body` or `invalid_query`; with an \
         `Idempotency-Key`, `idempotency_key_reused` (the key came with another request) or \
         `invalid_idempotency_key`",
    ),
    (
        "TooManyRequests",
        "Rate limited (`rate_limited`); `Retry-After` says when to retry",
    ),
    ("Timeout", "The request took too long (`request_timeout`)"),
    (
        "Unavailable",
        "A dependency is busy or down; `Retry-After` says when to retry: `database_busy`, \
         `database_unavailable` (nothing was written), `outcome_unknown` (the database went away \
         while a write may have committed: retry with the same `Idempotency-Key`, which answers \
         what committed or applies it once), `sessions_unavailable`",
    ),
];

fn error_response(description: &str) -> DocResponse {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorBody",
            )))),
        )
        .build()
}

fn add_common_responses(operation: &mut Operation) {
    let secured = operation.security.iter().flatten().any(|requirement| {
        serde_json::to_value(requirement).is_ok_and(|value| value.get(BEARER).is_some())
    });
    let has_body = operation.request_body.is_some();
    let has_query = operation.parameters.iter().flatten().any(|parameter| {
        matches!(
            parameter.parameter_in,
            utoipa::openapi::path::ParameterIn::Query
        )
    });
    let mut common = vec![
        ("408", "Timeout"),
        ("429", "TooManyRequests"),
        ("503", "Unavailable"),
    ];
    if secured {
        common.extend([("401", "Unauthorized"), ("403", "Forbidden")]);
    }
    if has_body {
        common.extend([
            ("400", "BadRequest"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "Unprocessable"),
        ]);
    }
    if has_query {
        common.push(("422", "Unprocessable"));
    }
    for (status, name) in common {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)));
    }
    operation
        .responses
        .responses
        .entry("500".to_string())
        .or_insert_with(|| RefOr::T(error_response("Internal error (`internal_error`); logged")));
}

/// A link: from the answer `status` of `from` (method and path), to the operation `to`, with
/// parameters and a request body taken from that answer (OpenAPI runtime expressions).
pub struct DocLink {
    pub from: (&'static str, &'static str),
    pub status: &'static str,
    pub name: &'static str,
    pub to: (&'static str, &'static str),
    pub parameters: &'static [(&'static str, &'static str)],
    /// JSON with runtime expressions inside, merged into the body a client would send.
    pub request_body: Option<&'static str>,
}

const fn link(
    from: (&'static str, &'static str),
    status: &'static str,
    name: &'static str,
    to: (&'static str, &'static str),
    parameters: &'static [(&'static str, &'static str)],
    request_body: Option<&'static str>,
) -> DocLink {
    DocLink {
        from,
        status,
        name,
        to,
        parameters,
        request_body,
    }
}

const ID: &[(&str, &str)] = &[("id", "$response.body#/id")];
const CREATE_PLANT: (&str, &str) = ("post", "/api/plants");
const REQUEST_SITTING: (&str, &str) = ("post", "/api/sittings");
const GIVE_ADVICE: (&str, &str) = ("post", "/api/plants/{id}/advice");
const START_CONVERSATION: (&str, &str) = ("post", "/api/conversations");
const SEND_MESSAGE: (&str, &str) = ("post", "/api/conversations/{id}/messages");
const REGISTER: (&str, &str) = ("post", "/api/auth/register");

/// Every link of the document: from a created plant to its sittings and advice, from a sitting
/// to its lifecycle, from an advice to its versions and verdicts, from a conversation to its
/// messages, from a new account to what can be done with or to it. A test checks that each
/// names operations and parameters the document has.
pub const LINKS: &[DocLink] = &[
    link(
        CREATE_PLANT,
        "201",
        "GetPlant",
        ("get", "/api/plants/{id}"),
        ID,
        None,
    ),
    link(
        CREATE_PLANT,
        "201",
        "UpdatePlant",
        ("patch", "/api/plants/{id}"),
        ID,
        None,
    ),
    link(
        CREATE_PLANT,
        "201",
        "DeletePlant",
        ("delete", "/api/plants/{id}"),
        ID,
        None,
    ),
    link(
        CREATE_PLANT,
        "201",
        "ListPhotos",
        ("get", "/api/plants/{id}/photos"),
        ID,
        None,
    ),
    link(CREATE_PLANT, "201", "GiveAdvice", GIVE_ADVICE, ID, None),
    link(
        CREATE_PLANT,
        "201",
        "ListAdvice",
        ("get", "/api/plants/{id}/advice"),
        ID,
        None,
    ),
    link(
        CREATE_PLANT,
        "201",
        "RequestSitting",
        REQUEST_SITTING,
        &[],
        Some(r#"{"plant_ids": ["$response.body#/id"]}"#),
    ),
    link(
        REQUEST_SITTING,
        "201",
        "GetSitting",
        ("get", "/api/sittings/{id}"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Apply",
        ("post", "/api/sittings/{id}/applications"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "ListApplications",
        ("get", "/api/sittings/{id}/applications"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Withdraw",
        ("delete", "/api/sittings/{id}/applications/mine"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Accept",
        ("post", "/api/sittings/{id}/accept"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Start",
        ("post", "/api/sittings/{id}/start"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Complete",
        ("post", "/api/sittings/{id}/complete"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Cancel",
        ("post", "/api/sittings/{id}/cancel"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "ReportCare",
        ("post", "/api/sittings/{id}/reports"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "ListReports",
        ("get", "/api/sittings/{id}/reports"),
        ID,
        None,
    ),
    link(
        REQUEST_SITTING,
        "201",
        "Review",
        ("post", "/api/sittings/{id}/reviews"),
        ID,
        None,
    ),
    link(
        GIVE_ADVICE,
        "201",
        "ReviseAdvice",
        ("patch", "/api/advice/{id}"),
        ID,
        None,
    ),
    link(
        GIVE_ADVICE,
        "201",
        "RemoveAdvice",
        ("delete", "/api/advice/{id}"),
        ID,
        None,
    ),
    link(
        GIVE_ADVICE,
        "201",
        "ListVersions",
        ("get", "/api/advice/{id}/versions"),
        ID,
        None,
    ),
    link(
        GIVE_ADVICE,
        "201",
        "ValidateAdvice",
        ("post", "/api/advice/{id}/validate"),
        ID,
        None,
    ),
    link(
        GIVE_ADVICE,
        "201",
        "RejectAdvice",
        ("post", "/api/advice/{id}/reject"),
        ID,
        None,
    ),
    link(
        START_CONVERSATION,
        "201",
        "SendMessage",
        SEND_MESSAGE,
        ID,
        None,
    ),
    link(
        START_CONVERSATION,
        "201",
        "ListMessages",
        ("get", "/api/conversations/{id}/messages"),
        ID,
        None,
    ),
    link(
        SEND_MESSAGE,
        "201",
        "MarkRead",
        ("post", "/api/conversations/{id}/read"),
        &[("id", "$request.path.id")],
        Some(r#"{"up_to": "$response.body#/id"}"#),
    ),
    link(
        REGISTER,
        "201",
        "PublicProfile",
        ("get", "/api/users/{id}"),
        ID,
        None,
    ),
    link(
        REGISTER,
        "201",
        "StartConversation",
        START_CONVERSATION,
        &[],
        Some(r#"{"participant_ids": ["$response.body#/id"]}"#),
    ),
    link(
        REGISTER,
        "201",
        "ChangeRole",
        ("put", "/api/admin/users/{id}/role"),
        ID,
        None,
    ),
    link(
        REGISTER,
        "201",
        "DisableUser",
        ("post", "/api/admin/users/{id}/disable"),
        ID,
        None,
    ),
    link(
        REGISTER,
        "201",
        "EnableUser",
        ("post", "/api/admin/users/{id}/enable"),
        ID,
        None,
    ),
    link(
        REGISTER,
        "201",
        "ApproveBotanist",
        ("post", "/api/admin/verifications/{id}/approve"),
        ID,
        None,
    ),
    link(
        REGISTER,
        "201",
        "ExportUser",
        ("get", "/api/admin/users/{id}/export"),
        ID,
        None,
    ),
];

fn operation_mut<'a>(
    document: &'a mut OpenApi,
    (method, path): (&str, &str),
) -> Option<&'a mut Operation> {
    let item = document.paths.paths.get_mut(path)?;
    match method {
        "get" => item.get.as_mut(),
        "post" => item.post.as_mut(),
        "put" => item.put.as_mut(),
        "patch" => item.patch.as_mut(),
        "delete" => item.delete.as_mut(),
        _ => None,
    }
}

/// Adds [`LINKS`] to the answers they start from, naming their targets by `operationId`. A link
/// whose ends are not in the document is left out (and the contract test fails).
fn add_links(document: &mut OpenApi) {
    for link in LINKS {
        let Some(target) = operation_mut(document, link.to).and_then(|op| op.operation_id.clone())
        else {
            continue;
        };
        // utoipa 5.5 serialises `Link::operation_id` and `request_body` in snake_case, which no
        // OpenAPI reader knows: those two go in as fields of their own (through the flattened
        // extensions map, which `from_iter` leaves unprefixed).
        let mut fields = vec![("operationId", serde_json::Value::String(target))];
        if let Some(body) = link.request_body.and_then(|b| serde_json::from_str(b).ok()) {
            fields.push(("requestBody", body));
        }
        let mut builder = utoipa::openapi::link::LinkBuilder::new().extensions(Some(
            utoipa::openapi::extensions::Extensions::from_iter(fields),
        ));
        for (name, expression) in link.parameters {
            builder = builder.parameter(*name, *expression);
        }
        let Some(RefOr::T(response)) = operation_mut(document, link.from)
            .and_then(|op| op.responses.responses.get_mut(link.status))
        else {
            continue;
        };
        response
            .links
            .insert(link.name.to_string(), RefOr::T(builder.build()));
    }
}
