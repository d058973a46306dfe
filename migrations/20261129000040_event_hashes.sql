-- Tamper evidence (src/audit.rs). Every event stores a SHA-256 hash chaining it to the previous
-- event of its stream:
--   hash = sha256(hash of the previous event of the stream (none for the first) || input)
--   input = the UTF-8 bytes of aggregate_type, aggregate_id, sequence, event_type, event_version,
--           payload::text, metadata::text and the timestamp (UTC, microseconds), joined by U+001F.
-- A trigger computes it for every insert, whoever inserts (our appends, group commit, psql);
-- `arosaje audit verify` recomputes it from the columns, in Rust, and reports the first event
-- whose hash or link does not hold. Checkpoints (below) chain the stream hashes in global order
-- and are signed with a key the database does not hold, so rewriting a whole stream, or deleting
-- its last events, shows too.
ALTER TABLE events ADD COLUMN hash bytea;

CREATE FUNCTION event_hash_input(aggregate_type text, aggregate_id text, sequence bigint,
                                 event_type text, event_version text, payload jsonb,
                                 metadata jsonb, at timestamptz) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT AS
$$
SELECT convert_to(concat_ws(chr(31), aggregate_type, aggregate_id, sequence::text, event_type,
                            event_version, payload::text, metadata::text,
                            to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                  'UTF8')
$$;

-- The lookup of the previous event must be an index lookup whatever the statistics say: on a
-- young log without any, the planner would scan the table for every insert (quadratic in one big
-- statement). Every index led by a column it filters on is selective (see `audit_indexes`).
CREATE FUNCTION events_chain() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS
$$
DECLARE
    previous bytea;
BEGIN
    IF NEW.sequence > 1 THEN
        SELECT e.hash INTO previous FROM events e
         WHERE e.aggregate_type = NEW.aggregate_type AND e.aggregate_id = NEW.aggregate_id
           AND e.sequence = NEW.sequence - 1;
    END IF;
    NEW.hash := sha256(COALESCE(previous, ''::bytea) ||
                       event_hash_input(NEW.aggregate_type, NEW.aggregate_id, NEW.sequence,
                                        NEW.event_type, NEW.event_version, NEW.payload,
                                        NEW.metadata, NEW.timestamp));
    RETURN NEW;
END
$$;

-- Events already in the log get their hashes once, stream by stream, in order.
ALTER TABLE events DISABLE TRIGGER events_no_update;
DO
$$
    DECLARE
        r        record;
        previous bytea;
        stream   text := NULL;
    BEGIN
        FOR r IN SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                        metadata, timestamp
                   FROM events ORDER BY aggregate_type, aggregate_id, sequence
            LOOP
                IF stream IS DISTINCT FROM r.aggregate_type || '/' || r.aggregate_id THEN
                    previous := ''::bytea;
                    stream := r.aggregate_type || '/' || r.aggregate_id;
                END IF;
                previous := sha256(previous ||
                                   event_hash_input(r.aggregate_type, r.aggregate_id, r.sequence,
                                                    r.event_type, r.event_version, r.payload,
                                                    r.metadata, r.timestamp));
                UPDATE events SET hash = previous
                 WHERE aggregate_type = r.aggregate_type AND aggregate_id = r.aggregate_id
                   AND sequence = r.sequence;
            END LOOP;
    END
$$;
ALTER TABLE events ENABLE TRIGGER events_no_update;
ALTER TABLE events ALTER COLUMN hash SET NOT NULL;

CREATE TRIGGER events_chain
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();

-- Checkpoints over the global log: `chain` = sha256(previous checkpoint's chain || the hash of
-- every event after its position up to this one, in global order); `mac` = HMAC-SHA256 of
-- (position, events, chain) under a key derived from the service's secrets (never stored here).
CREATE TABLE audit_checkpoints
(
    position   bigint PRIMARY KEY,
    events     bigint      NOT NULL,
    chain      bytea       NOT NULL,
    mac        bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
