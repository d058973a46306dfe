-- The event store: postgres-es's `events` and `snapshots` tables, plus a global order that
-- projectors can follow without skipping events (see DESIGN.md §2).
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         jsonb                        NOT NULL,
    metadata        jsonb                        NOT NULL,
    timestamp       timestamptz                  NOT NULL DEFAULT now(),
    -- Identity values are handed out before commit, so they become visible out of order; the
    -- writing transaction's id, compared against the oldest running transaction, closes that gap.
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The order projectors read in, and the cursor they keep.
CREATE UNIQUE INDEX events_global_order ON events (transaction_id, global_position);
CREATE UNIQUE INDEX events_global_position ON events (global_position);
CREATE INDEX events_timestamp_brin ON events USING brin (timestamp);

-- Events are immutable: history is never rewritten (erasure shreds keys instead).
CREATE FUNCTION events_immutable() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'events are immutable (% refused)', TG_OP USING ERRCODE = 'P0001';
END
$$;
CREATE TRIGGER events_no_update
    BEFORE UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_immutable();

-- Snapshots, as postgres-es lays them out (used by aggregates whose streams grow without bound).
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- One row per projector: the (transaction_id, global_position) pair of the last event applied.
CREATE TABLE projection_checkpoints
(
    name                text        PRIMARY KEY,
    version             integer     NOT NULL,
    last_transaction_id xid8        NOT NULL DEFAULT '0',
    last_position       bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
