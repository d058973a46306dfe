-- Sittings (gardes). Needs PostgreSQL's contrib extensions btree_gist (the sitters' calendar
-- constraint), cube and earthdistance (search near a place). They ship with the server (Debian's
-- postgresql package, the official Docker image); creating earthdistance needs a superuser, or
-- an administrator who creates these three extensions once in the database before migrating.
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;

-- Write-side guard, not a read model: the days each accepted sitter is booked. A row is written
-- in the transaction that appends `SitterAccepted` and deleted in the one that appends the
-- cancellation, so two owners accepting one sitter for overlapping days cannot both commit.
CREATE TABLE sitter_bookings
(
    sitting_id uuid PRIMARY KEY,
    sitter_id  uuid      NOT NULL,
    days       daterange NOT NULL,
    EXCLUDE USING gist (sitter_id WITH =, days WITH &&)
);

-- Read model (projection `sittings`).
CREATE TABLE sittings
(
    id           uuid PRIMARY KEY,
    owner_id     uuid             NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- open, accepted, in_progress, completed, cancelled
    status       text             NOT NULL,
    starts_on    date             NOT NULL,
    ends_on      date             NOT NULL,
    -- Exact: shown to the owner, the accepted sitter and admins only.
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    -- About 1 km (GeoPoint::approximate): what everyone else sees, and what distances use.
    approx_lat   double precision NOT NULL,
    approx_lon   double precision NOT NULL,
    city         text             NOT NULL,
    instructions text,
    sitter_id    uuid             REFERENCES users (id) ON DELETE SET NULL,
    applications integer          NOT NULL DEFAULT 0,
    reports      integer          NOT NULL DEFAULT 0,
    cancel_reason text,
    created_at   timestamptz      NOT NULL,
    updated_at   timestamptz      NOT NULL,
    version      bigint           NOT NULL,
    projected_at timestamptz      NOT NULL DEFAULT clock_timestamp()
);
-- Browsing open sittings near a place: a GiST index on the approximate point, for the box test
-- (`earth_box`) and nearest-first order (`<->`).
CREATE INDEX sittings_open_near ON sittings USING gist (ll_to_earth(approx_lat, approx_lon))
    WHERE status = 'open';
CREATE INDEX sittings_status_start ON sittings (status, starts_on, id);
CREATE INDEX sittings_owner ON sittings (owner_id, id DESC);
CREATE INDEX sittings_sitter ON sittings (sitter_id, id DESC) WHERE sitter_id IS NOT NULL;

CREATE TABLE sitting_plants
(
    sitting_id uuid NOT NULL REFERENCES sittings (id) ON DELETE CASCADE,
    plant_id   uuid NOT NULL,
    PRIMARY KEY (sitting_id, plant_id)
);
CREATE INDEX sitting_plants_plant ON sitting_plants (plant_id);

CREATE TABLE sitting_applications
(
    sitting_id   uuid        NOT NULL REFERENCES sittings (id) ON DELETE CASCADE,
    applicant_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message      text,
    applied_at   timestamptz NOT NULL,
    PRIMARY KEY (sitting_id, applicant_id)
);
CREATE INDEX sitting_applications_applicant ON sitting_applications (applicant_id, sitting_id);

CREATE TABLE care_reports
(
    id              uuid PRIMARY KEY,
    sitting_id      uuid        NOT NULL REFERENCES sittings (id) ON DELETE CASCADE,
    plant_id        uuid        NOT NULL,
    sitter_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    note            text,
    before_photo_id uuid,
    after_photo_id  uuid,
    created_at      timestamptz NOT NULL
);
CREATE INDEX care_reports_sitting ON care_reports (sitting_id, id);

CREATE TABLE reviews
(
    sitting_id uuid        NOT NULL REFERENCES sittings (id) ON DELETE CASCADE,
    author_id  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    subject_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    rating     smallint    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment    text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (sitting_id, author_id)
);
CREATE INDEX reviews_subject ON reviews (subject_id, created_at DESC);
