//! What the contract fuzzer (`scripts/fuzz.sh`, schemathesis) found the server accepting although
//! the OpenAPI document forbids it, each fixed and pinned here through the router.

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{unique_email, TestApp};

/// Request bodies, and objects inside them, are JSON objects: serde's derived structs also read an
/// array by field order, so `[null, null]` used to be a plant patch that cleared `species`.
#[sqlx::test]
async fn bodies_and_nested_objects_must_be_objects(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.verified_user(&unique_email("arrays")).await;
    let created = t
        .post(
            "/api/plants",
            Some(&token),
            json!({"name": "Fern", "species": "Nephrolepis", "care": {"light": "shade"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_string();
    let plant = format!("/api/plants/{id}");

    for body in [
        json!([null, null]),
        json!(["Renamed"]),
        json!({"care": [null, null]}),
        json!(null),
    ] {
        let reply = t.patch(&plant, &token, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {reply:?}"
        );
        assert_eq!(
            reply.body["error"]["code"], "invalid_body",
            "{body}: {reply:?}"
        );
    }
    let created_from_array = t
        .post("/api/plants", Some(&token), json!(["Array plant"]))
        .await;
    assert_eq!(
        created_from_array.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{created_from_array:?}"
    );
    let unchanged = t.get(&plant, &token).await;
    assert_eq!(unchanged.body["name"], "Fern");
    assert_eq!(unchanged.body["species"], "Nephrolepis");
    assert_eq!(unchanged.body["care"]["light"], "shade");

    // A plant's name is a string that cannot be cleared: `null` was accepted (and ignored).
    let nameless = t.patch(&plant, &token, json!({"name": null})).await;
    assert_eq!(
        nameless.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{nameless:?}"
    );
    assert!(
        nameless.body["error"]["fields"]["name"].is_string(),
        "{nameless:?}"
    );

    // `care: null` is still "no care change", and an object still works.
    let changed = t
        .patch(&plant, &token, json!({"care": null, "species": null}))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    assert_eq!(changed.body["species"], serde_json::Value::Null);
    assert_eq!(changed.body["care"]["light"], "shade");

    // A sitting's location too.
    let sitting = t
        .post(
            "/api/sittings",
            Some(&token),
            json!({"plant_ids": [id], "starts_on": "2099-01-01", "ends_on": "2099-01-02",
                   "location": [45.76, 4.83, "Lyon"]}),
        )
        .await;
    assert_eq!(
        sitting.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{sitting:?}"
    );
    assert_eq!(sitting.body["error"]["code"], "invalid_body", "{sitting:?}");
}

/// A typed query parameter that is present must hold its type: `owner_id=` (empty) used to list
/// everyone's plants as if absent, and `to=` the whole log.
#[sqlx::test]
async fn empty_typed_query_parameters_are_refused(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let t = TestApp::spawn(options, connect).await;
    let (_, admin) = t.admin().await;
    let (_, auditor) = t.user_with_role(&admin, "AUDITOR").await;

    let plants = t.get("/api/plants?owner_id=", &admin).await;
    assert_eq!(
        plants.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{plants:?}"
    );
    assert_eq!(plants.body["error"]["code"], "validation_failed");
    assert!(
        plants.body["error"]["fields"]["owner_id"].is_string(),
        "{plants:?}"
    );
    assert_eq!(t.get("/api/plants", &admin).await.status, StatusCode::OK);

    for (query, field) in [
        ("to=", "to"),
        ("from=", "from"),
        ("actor_id=", "actor_id"),
        ("after=", "after"),
    ] {
        let reply = t.get(&format!("/api/audit/events?{query}"), &auditor).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {reply:?}"
        );
        assert!(
            reply.body["error"]["fields"][field].is_string(),
            "{query}: {reply:?}"
        );
    }
    for (query, field) in [
        ("to=", "to"),
        ("from=", "from"),
        ("radius_km=", "radius_km"),
    ] {
        let reply = t.get(&format!("/api/sittings?{query}"), &admin).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {reply:?}"
        );
        assert!(
            reply.body["error"]["fields"][field].is_string(),
            "{query}: {reply:?}"
        );
    }
    assert_eq!(
        t.get("/api/sittings?to=2099-01-01", &admin).await.status,
        StatusCode::OK
    );
    assert_eq!(
        t.get("/api/audit/events?to=2099-01-01T00:00:00Z", &auditor)
            .await
            .status,
        StatusCode::OK
    );
}

/// `display_name` is a string that cannot be cleared: `null` used to be accepted (and ignored).
#[sqlx::test]
async fn a_display_name_cannot_be_cleared(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("nameless")).await;
    let reply = t
        .call(
            Method::PATCH,
            "/api/me",
            Some(&token),
            Some(json!({"display_name": null, "city": "Lyon"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    assert!(
        reply.body["error"]["fields"]["display_name"].is_string(),
        "{reply:?}"
    );
    let me = t.get("/api/me", &token).await;
    assert_eq!(me.body["display_name"], "Test User");
    assert_ne!(
        me.body["city"], "Lyon",
        "nothing of a refused patch applies"
    );
}

/// A NUL character in a query parameter used to reach PostgreSQL (which refuses it in text) and
/// answer 500; it is refused at the edge, on every route with a query.
#[sqlx::test]
async fn a_nul_in_a_query_is_refused(options: PgPoolOptions, connect: PgConnectOptions) {
    let t = TestApp::spawn(options, connect).await;
    let (_, token) = t.user(&unique_email("nul")).await;
    for uri in [
        "/api/messages/search?q=%00abc",
        "/api/messages/search?q=a%00",
        "/api/plants?q=%00",
        "/api/sittings?role=%00",
    ] {
        let reply = t.get(uri, &token).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{uri}: {reply:?}"
        );
        assert_eq!(
            reply.body["error"]["code"], "invalid_query",
            "{uri}: {reply:?}"
        );
    }
    // A literal "%00" (sent as %2500) is just text.
    let literal = t.get("/api/messages/search?q=%2500", &token).await;
    assert_eq!(literal.status, StatusCode::OK, "{literal:?}");
}
