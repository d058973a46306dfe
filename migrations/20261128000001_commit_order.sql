-- Positions handed out in commit order (DESIGN.md §2, way (b)).
--
-- Every statement that inserts into `events` first takes one transaction-scoped advisory lock and
-- holds it until its transaction ends. Identity values are drawn after the lock is taken, and the
-- lock is released only once the commit is visible, so a committed position is never followed by
-- an earlier one that commits later: a reader that sees position p has seen every committed
-- position below p. Projectors therefore read `global_position > checkpoint`, with no horizon,
-- and nothing outside our appends (another database's transaction, a slow projector) delays them.
-- A statement trigger fires for manual INSERTs and COPY too. Group commit amortises the lock.
-- The identity must keep CACHE 1 (the default): per-session caches would break the order.
CREATE FUNCTION events_append_lock() RETURNS trigger LANGUAGE plpgsql AS
$$
BEGIN
    -- 27428895743634021 = the bytes of 'arosaje'; advisory locks are per database.
    PERFORM pg_advisory_xact_lock(27428895743634021);
    RETURN NULL;
END
$$;
CREATE TRIGGER events_append_in_commit_order
    BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_lock();

-- Checkpoints become plain positions. A projector that had passed every committed event keeps its
-- place; one that had not restarts right before the first event it had not seen in the old order.
UPDATE projection_checkpoints c
   SET last_position = COALESCE(
           (SELECT min(e.global_position) - 1
              FROM events e
             WHERE (e.transaction_id, e.global_position) > (c.last_transaction_id, c.last_position)),
           (SELECT COALESCE(max(global_position), 0) FROM events));
ALTER TABLE projection_checkpoints DROP COLUMN last_transaction_id;

-- The old reading order is no longer needed; `transaction_id` stays as a fact for auditors.
DROP INDEX events_global_order;

-- Poison events: after a few failed attempts a projector records the event here and goes on.
CREATE TABLE parked_events
(
    projection      text        NOT NULL,
    global_position bigint      NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, global_position)
);

-- The mail outbox also records mails that can never be delivered (a 5xx refusal, an address the
-- SMTP library refuses): they are not retried.
ALTER TABLE sent_mails
    ADD COLUMN status text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'failed')),
    ADD COLUMN error  text;
