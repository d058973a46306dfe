-- Answers to creating POSTs sent with an `Idempotency-Key` (src/api/idempotency.rs): a retry with
-- the same key from the same user within 24 h gets the stored answer instead of running again.
-- `status` is NULL while the first request is still running (a claim).
CREATE TABLE idempotency_keys
(
    user_id      uuid        NOT NULL,
    key          text        NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    fingerprint  bytea       NOT NULL,
    status       smallint,
    content_type text,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
-- Clean-up of expired keys. A btree, not BRIN: taking over an expired key rewrites created_at, so
-- the physical order BRIN relies on does not hold.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
