-- Access auditing (src/access.rs): who looked at whose data, when and why. Each access is an
-- `AccessRecorded` event whose details are sealed under the key of its month; retention deletes
-- a month's key after a year (the log stays intact, those details unreadable) and drops the
-- month's partition of the read model.
CREATE TABLE access_keys
(
    month      date PRIMARY KEY CHECK (extract(day FROM month) = 1),
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Read model of the projection `access`, in the monitoring schema (DESIGN.md §3), partitioned by
-- the month whose key seals the record (the month of the access), so retention deletes a key and
-- drops exactly its partition; the projection creates each month's partition when it first needs
-- it. BRIN on the time: rows arrive in time order.
CREATE SCHEMA IF NOT EXISTS monitoring;

CREATE TABLE monitoring.access_log
(
    id            uuid        NOT NULL,
    month         date        NOT NULL,
    accessed_at   timestamptz NOT NULL,
    accessor_id   uuid        NOT NULL,
    accessor_role text        NOT NULL,
    -- export | admin_export | admin_user_search | audit_events | audit_aggregate
    kind          text        NOT NULL,
    -- Whose data, when one person's: the subject of an export, the person an audit query names.
    subject_id    uuid,
    reason        text,
    query         jsonb       NOT NULL DEFAULT '{}',
    position      bigint      NOT NULL,
    PRIMARY KEY (id, month)
) PARTITION BY RANGE (month);
CREATE INDEX access_log_at_brin ON monitoring.access_log USING brin (accessed_at);
CREATE INDEX access_log_subject ON monitoring.access_log (subject_id, accessed_at);
CREATE INDEX access_log_accessor ON monitoring.access_log (accessor_id, accessed_at);
