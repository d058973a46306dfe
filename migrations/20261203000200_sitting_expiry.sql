-- The sitting expiry job's candidates (src/expiry.rs): open and accepted sittings by their last
-- day, so a run reads only those whose last day has passed.
CREATE INDEX sittings_pending_end ON sittings (ends_on, id) WHERE status IN ('open', 'accepted');
