//! The OpenAPI document against the running code: every route is in the document and every
//! documented route is served, and every answer the tests receive on a documented route matches
//! the schema documented for its status (checked in `TestApp::raw`, so all the integration tests
//! feed it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, TestApp, PASSWORD};

/// The document the code generates, as JSON.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_value(arosaje::api::docs::openapi()).expect("the document serialises")
    })
}

/// The documented path template a concrete path falls under, if any (`/api/plants/{id}` for
/// `/api/plants/0190...`); literal segments win over parameters.
pub fn template_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut best: Option<(usize, &String)> = None;
    for template in document()["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                !segment.is_empty()
            } else {
                literal += 1;
                part == segment
            }
        });
        if fits && best.is_none_or(|(score, _)| literal > score) {
            best = Some((literal, template));
        }
    }
    best.map(|(_, template)| template.clone())
}

/// Resolves `{"$ref": "#/components/responses/X"}`.
fn resolve_response(response: &Value) -> &Value {
    match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/responses/");
            &document()["components"]["responses"][name]
        }
        None => response,
    }
}

/// Makes a schema strict for answers: objects may carry only the properties they document
/// (`additionalProperties: false`, or `unevaluatedProperties: false` over an `allOf`), so a field
/// the code sends and the document forgets fails too.
fn strict(schema: &mut Value, in_all_of: bool) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(parts)) = map.get_mut("allOf") {
                for part in parts {
                    strict(part, true);
                }
                map.insert("unevaluatedProperties".into(), json!(false));
            }
            for key in ["oneOf", "anyOf"] {
                if let Some(Value::Array(parts)) = map.get_mut(key) {
                    for part in parts {
                        strict(part, in_all_of);
                    }
                }
            }
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                for property in properties.values_mut() {
                    strict(property, false);
                }
                if !in_all_of && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), json!(false));
                }
            }
            if let Some(items) = map.get_mut("items") {
                strict(items, false);
            }
        }
        Value::Array(values) => values.iter_mut().for_each(|v| strict(v, false)),
        _ => {}
    }
}

/// The documented JSON schema of an answer, compiled once, strict.
fn validator(
    template: &str,
    method: &str,
    status: u16,
) -> Result<&'static jsonschema::Validator, String> {
    type Key = (String, String, u16);
    static CACHE: OnceLock<Mutex<BTreeMap<Key, &'static jsonschema::Validator>>> = OnceLock::new();
    let key = (template.to_string(), method.to_string(), status);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().expect("cache").get(&key) {
        return Ok(found);
    }
    let operation = &document()["paths"][template][method];
    let response = operation["responses"]
        .get(status.to_string())
        .ok_or_else(|| {
            format!("{method} {template} answered {status}, which it does not document")
        })?;
    let response = resolve_response(response);
    let schema = response["content"]["application/json"]["schema"].clone();
    if schema.is_null() {
        return Err(format!(
            "{method} {template} answered {status} with a JSON body; the document has none"
        ));
    }
    let mut components = document()["components"]["schemas"].clone();
    if let Some(schemas) = components.as_object_mut() {
        schemas
            .values_mut()
            .for_each(|schema| strict(schema, false));
    }
    let mut schema = schema;
    strict(&mut schema, false);
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": {"schemas": components},
    });
    let compiled = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|err| {
            format!("the schema of {method} {template} {status} does not compile: {err}")
        })?;
    let compiled: &'static jsonschema::Validator = Box::leak(Box::new(compiled));
    cache.lock().expect("cache").insert(key, compiled);
    Ok(compiled)
}

/// Checks an answer against the document; `None` when the path is not a documented one (test
/// routes, unknown paths) or the method is not allowed there.
pub fn check(
    method: &Method,
    path: &str,
    status: StatusCode,
    content_type: &str,
    body: &[u8],
) -> Option<Result<(), String>> {
    let template = template_of(path)?;
    let method = method.as_str().to_ascii_lowercase();
    if document()["paths"][&template].get(&method).is_none()
        || status == StatusCode::METHOD_NOT_ALLOWED
    {
        return None;
    }
    let operation = &document()["paths"][&template][&method];
    let Some(response) = operation["responses"].get(status.as_u16().to_string()) else {
        return Some(Err(format!(
            "{method} {template} answered {status}, which it does not document"
        )));
    };
    let documented_types: Vec<&String> = resolve_response(response)["content"]
        .as_object()
        .map(|content| content.keys().collect())
        .unwrap_or_default();
    if body.is_empty() {
        return Some(if documented_types.is_empty() {
            Ok(())
        } else {
            Err(format!("{method} {template} {status}: an empty body, the document promises {documented_types:?}"))
        });
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !documented_types.iter().any(|t| t.as_str() == media) {
        return Some(Err(format!(
            "{method} {template} {status}: sent `{media}`, the document says {documented_types:?}"
        )));
    }
    if media != "application/json" || template == "/openapi.json" {
        return Some(Ok(()));
    }
    let instance: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            return Some(Err(format!(
                "{method} {template} {status}: not JSON: {err}"
            )))
        }
    };
    Some(
        validator(&template, &method, status.as_u16()).and_then(|validator| {
            let errors: Vec<String> = validator
                .iter_errors(&instance)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{method} {template} {status} does not match its documented schema: {}\nbody: {instance}",
                    errors.join("; ")
                ))
            }
        }),
    )
}

/// Every operation of the document: (path, method).
fn documented_operations() -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document()["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                operations.insert((path.clone(), method.to_string()));
            }
        }
    }
    operations
}

/// The paths an axum router serves, read from its `Debug` form (axum has no listing API). The
/// test below fails loudly if this finds nothing, rather than passing on an empty list.
fn served_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    // `Router { path_router: .., fallback_router: .., .. }`: the routes, not the fallbacks.
    let routes = debug.split("fallback_router").next().unwrap_or("");
    routes
        .split('"')
        .filter(|s| s.starts_with('/') && !s.contains("__private__axum"))
        .map(str::to_string)
        .collect()
}

/// A concrete path for a template: any id.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|part| {
            if part.starts_with('{') {
                "01900000-0000-7000-8000-000000000000"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[sqlx::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let router = arosaje::api::router(t.app.clone());
    let served = served_paths(&router);
    assert!(
        served.len() > 20 && served.contains("/api/plants/{id}"),
        "the router's paths could not be read: {served:?}"
    );
    let documented: BTreeSet<String> = document()["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let undocumented: Vec<&String> = served.difference(&documented).collect();
    let unserved: Vec<&String> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    // Methods: on each path, a method is served exactly when it is documented. An unserved method
    // answers the router's 405; a served one anything else (401, 404, 422...).
    let operations = documented_operations();
    for path in &served {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let request = Request::builder()
                .method(method)
                .uri(concrete(path))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let reply = t.raw(request).await;
            let is_served = reply.status != StatusCode::METHOD_NOT_ALLOWED;
            let is_documented = operations.contains(&(path.clone(), method.to_ascii_lowercase()));
            assert_eq!(
                is_served, is_documented,
                "{method} {path}: served {is_served}, documented {is_documented} ({reply:?})"
            );
        }
    }
}

#[test]
fn every_operation_documents_its_parameters_security_and_errors() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut operation_ids = BTreeSet::new();
    for (path, method) in documented_operations() {
        let operation = &doc["paths"][&path][&method];
        let name = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap_or_default();
        assert!(
            operation_ids.insert(id.to_string()),
            "{name}: operationId `{id}` is not unique (client generators need it)"
        );
        assert!(operation["summary"].is_string(), "{name}: no summary");
        assert!(
            operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{name}: no tag"
        );
        let responses = operation["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2') || s == "101"),
            "{name}: no success answer"
        );
        for status in ["429", "500"] {
            assert!(responses.contains_key(status), "{name}: no {status}");
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &resolve_response(response)["content"]["application/json"]["schema"];
                let is_error = schema["$ref"] == "#/components/schemas/ErrorBody"
                    || (path == "/ready" && status == "503");
                assert!(is_error, "{name} {status}: not the error schema: {schema}");
            }
        }
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        if secured {
            assert!(responses.contains_key("401"), "{name}: secured without 401");
        }
        let parameters: Vec<&Value> = operation["parameters"]
            .as_array()
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let param = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                parameters.iter().any(|p| p["name"] == param
                    && p["in"] == "path"
                    && p["description"].is_string()),
                "{name}: path parameter {param} undescribed"
            );
        }
        let lists = responses
            .get("200")
            .and_then(|r| r["content"]["application/json"]["schema"]["$ref"].as_str())
            .is_some_and(|r| r.starts_with("#/components/schemas/Page_"));
        if lists && path != "/api/me/sessions" {
            for param in ["limit", "cursor"] {
                assert!(
                    parameters
                        .iter()
                        .any(|p| p["name"] == param && p["in"] == "query"),
                    "{name}: a list without `{param}`"
                );
            }
        }
        if operation.get("requestBody").is_some() {
            for status in ["400", "413", "415", "422"] {
                assert!(
                    responses.contains_key(status),
                    "{name}: takes a body, no {status}"
                );
            }
        }
    }
}

#[test]
fn the_checker_refuses_answers_that_drift_from_the_document() {
    let plant = json!({
        "id": "01900000-0000-7000-8000-000000000001",
        "owner_id": "01900000-0000-7000-8000-000000000002",
        "name": "Fern",
        "species": null,
        "description": null,
        "care": {"watering_interval_days": 7, "light": null, "notes": null},
        "created_at": "2026-11-28T10:00:00Z",
        "updated_at": "2026-11-28T10:00:00Z",
        "version": 1,
    });
    let check = |status: StatusCode, body: &Value| {
        let bytes = serde_json::to_vec(body).expect("json");
        check(
            &Method::GET,
            "/api/plants/01900000-0000-7000-8000-000000000001",
            status,
            "application/json",
            &bytes,
        )
        .expect("a documented route")
    };
    assert_eq!(check(StatusCode::OK, &plant), Ok(()));
    let mut missing = plant.clone();
    missing.as_object_mut().expect("object").remove("owner_id");
    assert!(
        check(StatusCode::OK, &missing).is_err(),
        "a missing field passed"
    );
    let mut extra = plant.clone();
    extra["secret_field"] = json!(1);
    assert!(
        check(StatusCode::OK, &extra).is_err(),
        "an undocumented field passed"
    );
    let mut wrong = plant.clone();
    wrong["version"] = json!("1");
    assert!(
        check(StatusCode::OK, &wrong).is_err(),
        "a wrongly typed field passed"
    );
    assert!(
        check(
            StatusCode::CONFLICT,
            &json!({"error": {"code": "x", "message": "y"}})
        )
        .is_err(),
        "an undocumented status passed"
    );
    assert_eq!(
        check(
            StatusCode::NOT_FOUND,
            &json!({"error": {"code": "not_found", "message": "plant not found"}})
        ),
        Ok(())
    );
    // Positioned answers: the resource's fields plus `position`, nothing else.
    let mut positioned = plant.clone();
    positioned["position"] = json!(12);
    let patch = |body: &Value| check_patch(body);
    assert_eq!(patch(&positioned), Ok(()));
    positioned["extra"] = json!(true);
    assert!(
        patch(&positioned).is_err(),
        "an undocumented field passed an allOf"
    );
    assert_eq!(
        template_of("/api/me/sessions").as_deref(),
        Some("/api/me/sessions")
    );
    assert_eq!(
        template_of("/api/me/sessions/abc").as_deref(),
        Some("/api/me/sessions/{sid}")
    );
    assert_eq!(template_of("/api/nothing"), None);
}

fn check_patch(body: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(body).expect("json");
    check(
        &Method::PATCH,
        "/api/plants/01900000-0000-7000-8000-000000000001",
        StatusCode::OK,
        "application/json",
        &bytes,
    )
    .expect("a documented route")
}

#[sqlx::test]
async fn the_document_and_the_docs_page_are_served(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let anonymous = |uri: &str| {
        Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request")
    };
    let served = t.raw(anonymous("/openapi.json")).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        &served.body,
        document(),
        "the served document is the generated one"
    );

    let page = t.raw(anonymous("/docs")).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.body.as_str().expect("html");
    let policy = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(
        !policy.contains("unsafe-eval") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );
    // Every script the page names is served from here, under the same policy.
    let scripts: Vec<&str> = html
        .split("<script src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(scripts, ["docs/scalar.js", "docs/init.js"]);
    for script in scripts {
        let reply = t.raw(anonymous(&format!("/{script}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{script}");
        assert!(reply.headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/javascript"));
        assert!(
            reply.body.as_str().is_some_and(|js| js.len() > 50),
            "{script} is empty"
        );
    }
    let bundle = t.raw(anonymous("/docs/scalar.js")).await;
    assert!(
        bundle.body.as_str().expect("js").len() > 1_000_000,
        "the embedded Scalar bundle"
    );
    let init = t.raw(anonymous("/docs/init.js")).await;
    assert!(init.body.as_str().expect("js").contains("'openapi.json'"));

    // The API keeps its own strict policy.
    let (_, token) = t.user(&unique_email("docs")).await;
    let me = t.get("/api/me", &token).await;
    assert_eq!(
        me.headers[header::CONTENT_SECURITY_POLICY],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

/// A tour of every documented operation, so that each has at least one answer checked against
/// its schema (the other tests add many more, errors included).
#[sqlx::test]
async fn a_tour_of_the_api_matches_the_document(options: PgPoolOptions, connect: PgConnectOptions) {
    // The tour logs in and registers more often than one client may per minute (20 per
    // authentication endpoint); rate limits are tests/api/limits.rs's subject, not this one's.
    // On a quiet machine the tour ran fast enough to meet the limit.
    let mut roomy = crate::helpers::config();
    roomy.rate_limit_auth = 1000;
    let t = TestApp::with_config(options, connect, roomy, true).await;
    let (_, admin) = t.admin().await;
    let email = unique_email("tour");
    let registered = t.register(&email, "Tour Owner").await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    let user_id = registered.body["id"].as_str().expect("id").to_string();
    let login = t.login(&email, PASSWORD).await;
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let refresh = login.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let (botanist_id, _) = {
        let email = unique_email("asks");
        let body = json!({"email": email, "password": PASSWORD, "display_name": "Would Be Botanist", "botanist": true});
        let reply = t.post("/api/auth/register", None, body).await;
        (reply.body["id"].as_str().expect("id").to_string(), ())
    };

    t.get("/api/me", &token).await;
    t.patch(
        "/api/me",
        &token,
        json!({"city": "Nantes", "phone": "+33 6 12 34 56 78"}),
    )
    .await;
    let sessions = t.get("/api/me/sessions", &token).await;
    assert_eq!(sessions.status, StatusCode::OK);
    let plant = t.create_plant(&token, "Tour monstera").await;
    let plant_id = plant.body["id"].as_str().expect("plant").to_string();
    t.get("/api/plants?limit=5", &token).await;
    t.get(&format!("/api/plants/{plant_id}"), &token).await;
    t.patch(
        &format!("/api/plants/{plant_id}"),
        &token,
        json!({"care": {"watering_interval_days": 5}}),
    )
    .await;
    t.delete(&format!("/api/plants/{plant_id}"), &token).await;
    t.post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    t.post(
        "/api/auth/verify-email",
        None,
        json!({"token": "not-a-token"}),
    )
    .await;
    t.post("/api/auth/password-reset", None, json!({"email": email}))
        .await;
    t.post(
        "/api/auth/password-reset/confirm",
        None,
        json!({"token": "nope", "new_password": "another long passphrase"}),
    )
    .await;
    t.post(
        "/api/me/mfa/totp",
        Some(&token),
        json!({"current_password": PASSWORD}),
    )
    .await;
    t.post(
        "/api/me/mfa/totp/confirm",
        Some(&token),
        json!({"code": "000000"}),
    )
    .await;
    t.post(
        "/api/me/mfa/verify",
        Some(&token),
        json!({"code": "000000"}),
    )
    .await;
    t.call(
        Method::DELETE,
        "/api/me/mfa/totp",
        Some(&token),
        Some(json!({"code": "000000"})),
    )
    .await;
    t.get("/api/admin/users?role=USER", &admin).await;
    t.get("/api/admin/verifications", &admin).await;
    t.get("/api/admin/stats", &admin).await;
    t.post(
        &format!("/api/admin/verifications/{botanist_id}/reject"),
        Some(&admin),
        json!({}),
    )
    .await;
    t.post(
        &format!("/api/admin/verifications/{botanist_id}/approve"),
        Some(&admin),
        json!({}),
    )
    .await;
    t.call(
        Method::PUT,
        &format!("/api/admin/users/{user_id}/role"),
        Some(&admin),
        Some(json!({"role": "USER"})),
    )
    .await;
    t.post(
        &format!("/api/admin/users/{user_id}/disable"),
        Some(&admin),
        json!({}),
    )
    .await;
    t.post(
        &format!("/api/admin/users/{user_id}/enable"),
        Some(&admin),
        json!({}),
    )
    .await;
    let again = t.login(&email, PASSWORD).await;
    let token = again.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    t.post(
        "/api/me/password",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
    )
    .await;
    t.call(Method::DELETE, "/api/me/sessions", Some(&token), None)
        .await;
    t.call(
        Method::DELETE,
        &format!("/api/me/sessions/{}", uuid::Uuid::now_v7()),
        Some(&token),
        None,
    )
    .await;
    t.post("/api/auth/logout", Some(&token), json!({})).await;
    // Messaging: a conversation, a message, the lists, a read mark, a search.
    let (_, talker) = t.user(&unique_email("talker")).await;
    let (listener, _) = t.user(&unique_email("listener")).await;
    let conversation = t
        .post(
            "/api/conversations",
            Some(&talker),
            json!({"participant_ids": [listener]}),
        )
        .await;
    assert_eq!(conversation.status, StatusCode::CREATED, "{conversation:?}");
    let conversation = conversation.body["id"].as_str().expect("id").to_string();
    let said = t
        .post(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&talker),
            json!({"body": "Bonjour"}),
        )
        .await;
    t.get("/api/conversations", &talker).await;
    t.get(
        &format!("/api/conversations/{conversation}/messages"),
        &talker,
    )
    .await;
    t.post(
        &format!("/api/conversations/{conversation}/read"),
        Some(&talker),
        json!({"up_to": said.body["id"]}),
    )
    .await;
    t.get("/api/messages/search?q=bonjour", &talker).await;
    // Live: a ticket, and /ws asked without a WebSocket handshake.
    t.post("/api/ws/ticket", Some(&talker), json!({})).await;
    let not_a_socket = t.get("/ws", &talker).await;
    assert_eq!(
        not_a_socket.status,
        StatusCode::BAD_REQUEST,
        "{not_a_socket:?}"
    );
    // Photos: an upload, the list, the image and its thumbnail.
    let (_, photographer) = t.user(&unique_email("photographer")).await;
    let plant = t.create_plant(&photographer, "Photo fern").await.body["id"]
        .as_str()
        .expect("plant")
        .to_string();
    let photo = crate::photos::upload(
        &t,
        &photographer,
        &plant,
        "a.jpg",
        &crate::photos::jpeg(64, 48),
    )
    .await;
    assert_eq!(photo.status, StatusCode::CREATED, "{photo:?}");
    t.get(&format!("/api/plants/{plant}/photos"), &photographer)
        .await;
    for key in ["url", "thumbnail_url"] {
        let uri = photo.body[key].as_str().expect("url");
        let request = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {photographer}"))
            .body(Body::empty())
            .expect("request");
        assert_eq!(t.raw(request).await.status, StatusCode::OK);
    }
    // Sittings: the whole lifecycle, then an application withdrawn and a sitting cancelled.
    let lifecycle = crate::sittings::full_lifecycle(&t).await;
    t.get(&format!("/api/sittings/{lifecycle}"), &admin).await;
    let (_, owner, plants) = crate::sittings::owner_with_plants(&t, 1).await;
    let (_, sitter) = t.verified_user(&unique_email("tour-sitter")).await;
    let body = crate::sittings::sitting_body(&plants, 2, 4, crate::sittings::LYON, "Lyon");
    let open = crate::sittings::request(&t, &owner, body).await.body["id"]
        .as_str()
        .expect("sitting")
        .to_string();
    t.post(
        &format!("/api/sittings/{open}/applications"),
        Some(&sitter),
        json!({}),
    )
    .await;
    t.get("/api/me/applications", &sitter).await;
    t.get(&format!("/api/sittings/{open}?reason=tour"), &admin)
        .await;
    t.delete(&format!("/api/sittings/{open}/applications/mine"), &sitter)
        .await;
    t.post(
        &format!("/api/sittings/{open}/cancel"),
        Some(&owner),
        json!({"reason": "Trip off"}),
    )
    .await;
    // Advice: given, revised, validated, rejected, listed, its versions, the queue and stats,
    // withdrawn; another hidden by a moderator.
    let (_, botanists) = crate::advice::botanists(&t, 3).await;
    let given =
        crate::advice::advise(&t, &botanists[0].1, &plants[0], json!({"body": "Mist it"})).await;
    assert_eq!(given.status, StatusCode::CREATED, "{given:?}");
    let advice = given.body["id"].as_str().expect("advice").to_string();
    t.patch(
        &format!("/api/advice/{advice}"),
        &botanists[0].1,
        json!({"body": "Mist it twice a week", "priority": "follow_up"}),
    )
    .await;
    t.post(
        &format!("/api/advice/{advice}/validate"),
        Some(&botanists[1].1),
        json!({"comment": "Yes"}),
    )
    .await;
    t.post(
        &format!("/api/advice/{advice}/reject"),
        Some(&botanists[2].1),
        json!({}),
    )
    .await;
    t.get(&format!("/api/plants/{}/advice", plants[0]), &owner)
        .await;
    t.get(&format!("/api/advice/{advice}/versions"), &owner)
        .await;
    t.get("/api/botanist/queue?tab=to_review", &botanists[1].1)
        .await;
    t.get("/api/botanist/queue?tab=reviewed", &botanists[0].1)
        .await;
    t.get("/api/botanist/stats", &botanists[0].1).await;
    t.delete(&format!("/api/advice/{advice}"), &botanists[0].1)
        .await;
    let spam = crate::advice::advise(&t, &botanists[1].1, &plants[0], json!({"body": "Buy"})).await;
    let spam = spam.body["id"].as_str().expect("advice");
    t.delete(&format!("/api/advice/{spam}?reason=advertising"), &admin)
        .await;
    t.get(&format!("/api/plants/{}/advice", plants[0]), &admin)
        .await;
    // Audit: the log, and one stream as of now.
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;
    t.get(
        "/api/audit/events?aggregate_type=Advice&reason=tour",
        &auditor,
    )
    .await;
    t.get(&format!("/api/audit/aggregates/Advice/{advice}"), &auditor)
        .await;
    // GDPR: an export, one on a person's behalf, and two erasures.
    t.get("/api/me/export", &owner).await;
    let (leaving, leaving_token) = t.user(&crate::helpers::unique_email("leaving")).await;
    t.get(&format!("/api/admin/users/{leaving}/export"), &admin)
        .await;
    t.delete("/api/me", &leaving_token).await;
    let (erased, _) = t.user(&crate::helpers::unique_email("erased")).await;
    t.delete(&format!("/api/admin/users/{erased}"), &admin)
        .await;
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/scalar.js",
        "/docs/init.js",
    ] {
        t.raw(
            Request::builder()
                .uri(path)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    }

    let checked = t.checked();
    let missing: Vec<_> = documented_operations()
        .into_iter()
        .filter(|op| !checked.contains(op))
        .collect();
    assert!(
        missing.is_empty(),
        "operations the tour did not check: {missing:?}"
    );
}

/// Every link names an operation of the document by `operationId` (camelCase, as OpenAPI spells
/// it), with parameters that operation has and body fields its request schema has; and the links
/// reach sittings, advice and conversations, so stateful fuzzers (`scripts/fuzz.sh`) get there.
#[test]
fn links_lead_to_documented_operations() {
    let document = document();
    let mut operations: BTreeMap<&str, &Value> = BTreeMap::new();
    for item in document["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("item").values() {
            if let Some(id) = operation["operationId"].as_str() {
                assert!(
                    operations.insert(id, operation).is_none(),
                    "operationId {id} is not unique"
                );
            }
        }
    }
    let mut links = 0;
    let mut targets = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            let Some(responses) = operation["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let Some(found) = response["links"].as_object() else {
                    continue;
                };
                for (name, link) in found {
                    let at = format!("{method} {path} {status} {name}");
                    assert!(link.get("operation_id").is_none(), "{at}: snake_case key");
                    assert!(link.get("request_body").is_none(), "{at}: snake_case key");
                    let target_id = link["operationId"].as_str().expect("operationId");
                    let target = operations
                        .get(target_id)
                        .unwrap_or_else(|| panic!("{at}: no operation {target_id}"));
                    let parameters: BTreeSet<&str> = target["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["name"].as_str())
                        .collect();
                    for parameter in link["parameters"].as_object().into_iter().flatten() {
                        assert!(
                            parameters.contains(parameter.0.as_str()),
                            "{at}: {target_id} has no parameter {}",
                            parameter.0
                        );
                    }
                    if let Some(body) = link.get("requestBody") {
                        let schema =
                            &target["requestBody"]["content"]["application/json"]["schema"];
                        let name = schema["$ref"]
                            .as_str()
                            .expect("a named body")
                            .trim_start_matches("#/components/schemas/");
                        let properties = &document["components"]["schemas"][name]["properties"];
                        for field in body.as_object().expect("a body object").keys() {
                            assert!(
                                properties.get(field).is_some(),
                                "{at}: {name} has no field {field}"
                            );
                        }
                    }
                    targets.insert(target_id.to_string());
                    links += 1;
                }
            }
        }
    }
    assert_eq!(
        links,
        arosaje::api::docs::LINKS.len(),
        "every link is in the document"
    );
    for needed in [
        "request_sitting",
        "give_advice",
        "start_conversation",
        "send_message",
        "accept",
    ] {
        assert!(targets.contains(needed), "no link leads to {needed}");
    }
}
