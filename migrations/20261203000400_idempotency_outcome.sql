-- Whether the command of an idempotent request committed, recorded in the same statement as its
-- events (src/events/claim.rs): the position of the command's last event, NULL while nothing
-- committed. A retry after a failure (503 `outcome_unknown`, a process that died) reads it: the
-- first outcome if set, a fresh run if not.
ALTER TABLE idempotency_keys ADD COLUMN committed_position bigint;
-- A claim whose request ended in a 5xx after its command committed: a retry may take it over at
-- once (without waiting for the claim to count as abandoned) and answers what was committed.
ALTER TABLE idempotency_keys ADD COLUMN released boolean NOT NULL DEFAULT false;
