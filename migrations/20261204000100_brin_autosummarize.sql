-- BRIN indexes summarise a range of pages only when something asks for it: without
-- `autosummarize`, the ranges filled since the last VACUUM stay unsummarised, and a BRIN scan
-- must read every one of them (they "match" any condition). On an append-only table that is the
-- tail, the part time-window queries want: measured on a log of 1,048,620 events loaded at
-- once, an audit query for an empty day read all 89,896 heap pages (4.5 s); once summarised,
-- 7 pages (0.26 ms). With `autosummarize`, autovacuum summarises each range as soon as the
-- next one receives a row (it needs autovacuum on, as PostgreSQL ships it).
ALTER INDEX events_timestamp_brin SET (autosummarize = on);
ALTER INDEX sent_mails_sent_at_brin SET (autosummarize = on);
ALTER INDEX message_keys_created_brin SET (autosummarize = on);
ALTER INDEX messaging.messages_created_brin SET (autosummarize = on);
-- A partitioned index takes no SET: built again with the option, which each month's partition
-- (made by the projection `access`) copies.
DROP INDEX monitoring.access_log_at_brin;
CREATE INDEX access_log_at_brin ON monitoring.access_log USING brin (accessed_at)
    WITH (autosummarize = on);
