//! The peer: what a plain cqrs-es + postgres-es service does with the same request, written the
//! way the cqrs-es demo is (serverlesstechnology/cqrs-demo): `postgres_cqrs` over the stock
//! postgres-es `events` table, one `GenericQuery` view kept in a `PostgresViewRepository` (the
//! demo's read side, updated after the commit in the request), an axum handler that executes
//! the command with its metadata. No auth, no global order, no hash chain, no idempotency.
//! It runs in its own database, on its own pool of the same size as the application's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope, View};
use postgres_es::{PostgresCqrs, PostgresViewRepository};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The stock postgres-es schema (its `db/init.sql`) and the demo's view table.
const SCHEMA: &[&str] = &[
    "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
     sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL, \
     event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL, \
     PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    "CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
     last_sequence bigint CHECK (last_sequence >= 0) NOT NULL, \
     current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL, \
     PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))",
    "CREATE TABLE plant_query (view_id text NOT NULL, version bigint CHECK (version >= 0) NOT NULL, \
     payload json NOT NULL, PRIMARY KEY (view_id))",
];

#[derive(Debug, Clone, Deserialize)]
pub struct Care {
    pub watering_interval_days: Option<i64>,
    pub light: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatePlant {
    pub name: String,
    pub species: Option<String>,
    pub care: Option<Care>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlantEvent {
    PlantCreated {
        name: String,
        species: Option<String>,
        watering_interval_days: Option<i64>,
        light: Option<String>,
        notes: Option<String>,
    },
}

impl DomainEvent for PlantEvent {
    fn event_type(&self) -> String {
        "PlantCreated".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlantError {
    #[error("the plant already exists")]
    AlreadyExists,
    #[error("a name is required")]
    NoName,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Plant {
    created: bool,
}

impl Aggregate for Plant {
    const TYPE: &'static str = "Plant";
    type Command = CreatePlant;
    type Event = PlantEvent;
    type Error = PlantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: CreatePlant,
        _services: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), PlantError> {
        if self.created {
            return Err(PlantError::AlreadyExists);
        }
        if command.name.trim().is_empty() {
            return Err(PlantError::NoName);
        }
        let care = command.care.unwrap_or(Care {
            watering_interval_days: None,
            light: None,
            notes: None,
        });
        sink.write(
            PlantEvent::PlantCreated {
                name: command.name,
                species: command.species,
                watering_interval_days: care.watering_interval_days,
                light: care.light,
                notes: care.notes,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: PlantEvent) {
        match event {
            PlantEvent::PlantCreated { .. } => self.created = true,
        }
    }
}

/// The demo's read side: one JSON view per aggregate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PlantView {
    id: String,
    name: String,
    species: Option<String>,
}

impl View<Plant> for PlantView {
    fn update(&mut self, event: &EventEnvelope<Plant>) {
        match &event.payload {
            PlantEvent::PlantCreated { name, species, .. } => {
                self.id = event.aggregate_id.clone();
                self.name = name.clone();
                self.species = species.clone();
            }
        }
    }
}

type Cqrs = Arc<PostgresCqrs<Plant>>;

async fn create_plant(
    State(cqrs): State<Cqrs>,
    Json(command): Json<CreatePlant>,
) -> impl IntoResponse {
    let id = uuid::Uuid::now_v7().to_string();
    let metadata = HashMap::from([("time".to_string(), chrono::Utc::now().to_rfc3339())]);
    match cqrs.execute_with_metadata(&id, command, metadata).await {
        Ok(()) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    }
}

/// Creates the peer's tables in `pool`'s (empty) database and serves `POST /api/plants` on a
/// loopback port; returns its base URL.
pub async fn serve(pool: PgPool) -> anyhow::Result<String> {
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    let view = Arc::new(PostgresViewRepository::<PlantView, Plant>::new(
        "plant_query",
        pool.clone(),
    ));
    let cqrs: Cqrs = Arc::new(postgres_es::postgres_cqrs(
        pool,
        vec![Box::new(GenericQuery::new(view))],
        (),
    ));
    let router = Router::new()
        .route("/api/plants", post(create_plant))
        .with_state(cqrs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(base)
}
