-- Read models of the projection `advice` (src/projections/advice.rs): botanists' advice on plants,
-- its versions and the verdicts of other botanists, and the botanists' work queue.

CREATE TABLE advice
(
    id             uuid PRIMARY KEY,
    plant_id       uuid        NOT NULL,
    plant_owner_id uuid        NOT NULL,
    sitting_id     uuid,
    -- Who cared for the plant when the advice was given (reads it while the sitting runs).
    sitter_id      uuid,
    author_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    priority       text        NOT NULL,
    -- The current version's text; NULL once its author was erased.
    body           text,
    revision       integer     NOT NULL,
    -- active, withdrawn (by its author), hidden (by a moderator)
    state          text        NOT NULL,
    validations    integer     NOT NULL DEFAULT 0,
    rejections     integer     NOT NULL DEFAULT 0,
    hidden_by      uuid,
    hidden_reason  text,
    hidden_at      timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    version        bigint      NOT NULL
);
CREATE INDEX advice_plant ON advice (plant_id, id DESC);
CREATE INDEX advice_author ON advice (author_id, id DESC);

CREATE TABLE advice_versions
(
    advice_id  uuid        NOT NULL REFERENCES advice (id) ON DELETE CASCADE,
    revision   integer     NOT NULL,
    priority   text        NOT NULL,
    body       text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (advice_id, revision)
);

CREATE TABLE advice_reviews
(
    advice_id   uuid        NOT NULL REFERENCES advice (id) ON DELETE CASCADE,
    botanist_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- validated, rejected
    verdict     text        NOT NULL,
    revision    integer     NOT NULL,
    comment     text,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (advice_id, botanist_id)
);
CREATE INDEX advice_reviews_botanist ON advice_reviews (botanist_id);

-- The botanists' work queue: one row per plant of an open, accepted or running sitting (rows go
-- when the sitting completes or is cancelled). `advice_count` counts the active advice on the
-- plant given since the sitting was requested (or in its context): 0 means "to review".
-- `flagged`: the plant's latest active advice, whenever given, was urgent or asked for a follow-up.
CREATE TABLE advice_queue
(
    sitting_id     uuid        NOT NULL,
    plant_id       uuid        NOT NULL,
    sitting_status text        NOT NULL,
    starts_on      date        NOT NULL,
    ends_on        date        NOT NULL,
    requested_at   timestamptz NOT NULL,
    advice_count   integer     NOT NULL DEFAULT 0,
    flagged        boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (sitting_id, plant_id)
);
-- `tab=to_review`: flagged first, then by sitting start: an ordered scan of this index, and the
-- page cursor is one row comparison on it.
CREATE INDEX advice_queue_to_review
    ON advice_queue ((NOT flagged), starts_on, sitting_id, plant_id) WHERE advice_count = 0;
CREATE INDEX advice_queue_plant ON advice_queue (plant_id);
