-- Audit queries (`GET /api/audit/events`) page the log in global order under one filter or more:
-- each filter has an index that yields its events in that order, so a page is an index range
-- scan whatever the log's size. (A stream is served by the primary key; time by the BRIN index.)
CREATE INDEX events_type_order ON events (aggregate_type, global_position);
CREATE INDEX events_event_type_order ON events (event_type, global_position);
CREATE INDEX events_actor_order ON events ((metadata ->> 'actor_id'), global_position);
