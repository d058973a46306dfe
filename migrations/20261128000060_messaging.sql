-- Per-message data keys (src/events/crypto.rs, MessageKeys): deleting one makes that message's
-- text unreadable in the log and everywhere (retention, erasure of its sender).
CREATE TABLE message_keys
(
    message_id uuid PRIMARY KEY,
    sender_id  uuid        NOT NULL,
    key        bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_keys_sender ON message_keys (sender_id);
CREATE INDEX message_keys_created_brin ON message_keys USING brin (created_at);

-- Read models of the projection `messaging`, in their own schema (DESIGN.md §3).
CREATE SCHEMA IF NOT EXISTS messaging;

CREATE TABLE messaging.conversations
(
    id              uuid PRIMARY KEY,
    sitting_id      uuid,
    started_by      uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    -- Last activity, for "my conversations, latest first".
    last_position   bigint      NOT NULL,
    last_message_id uuid
);

CREATE TABLE messaging.participants
(
    conversation_id    uuid   NOT NULL REFERENCES messaging.conversations (id) ON DELETE CASCADE,
    user_id            uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Log position of the last message this participant has read.
    last_read_position bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX participants_user ON messaging.participants (user_id, conversation_id);

CREATE TABLE messaging.messages
(
    id              uuid PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES messaging.conversations (id) ON DELETE CASCADE,
    sender_id       uuid        NOT NULL,
    -- NULL once unreadable (retention, erasure of the sender).
    body            text,
    position        bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    -- Full-text search in French and English (stemmed): the search index is this projection.
    search          tsvector GENERATED ALWAYS AS (
        to_tsvector('french', coalesce(body, '')) || to_tsvector('english', coalesce(body, ''))
    ) STORED
);
CREATE INDEX messages_conversation ON messaging.messages (conversation_id, position DESC);
CREATE INDEX messages_search ON messaging.messages USING gin (search);
CREATE INDEX messages_created_brin ON messaging.messages USING brin (created_at);
