-- The role of the session that got a stored answer (src/api/idempotency.rs): a refusal (4xx) is
-- replayed only to that role; after a role change the request runs again. Rows from before have
-- none, so their refusals run again once.
ALTER TABLE idempotency_keys ADD COLUMN role text;
