-- Read model: plants (projection `plants`).
CREATE TABLE plants
(
    id                     uuid PRIMARY KEY,
    owner_id               uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                   text        NOT NULL,
    species                text,
    description            text,
    watering_interval_days integer,
    light                  text,
    care_notes             text,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    version                bigint      NOT NULL,
    -- When the projector wrote the row: read-model staleness for operators and benchmarks.
    projected_at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Ids are UUIDv7 (time-ordered): lists page on (owner_id, id) and id alone.
CREATE INDEX plants_owner ON plants (owner_id, id DESC);
