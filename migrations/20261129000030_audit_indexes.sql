-- Audit queries (`GET /api/audit/events`) page the log in global order under one filter or more:
-- each filter has an index that yields its events in that order, so a page is an index range
-- scan whatever the log's size. (Type and id together: the primary key; time: the BRIN index.)
--
-- The type index is on lower(aggregate_type) on purpose: an index led by the plain column would
-- be a candidate for every stream lookup (`aggregate_type = $1 AND aggregate_id = $2 AND ...`),
-- and on a log without statistics yet the planner picks it and scans every event of the type
-- for each insert's hash-chain lookup (measured: 20,000 events in one statement took 21 s).
-- The audit API filters types case-insensitively through it.
CREATE INDEX events_type_order ON events (lower(aggregate_type), global_position);
CREATE INDEX events_stream_order ON events (aggregate_id, global_position);
CREATE INDEX events_event_type_order ON events (event_type, global_position);
CREATE INDEX events_actor_order ON events ((metadata ->> 'actor_id'), global_position);
