-- Per-user data keys (AES-256-GCM) for personal data inside events. Deleting a row is the
-- crypto-shredding half of erasure; the key never enters the event log.
CREATE TABLE user_keys
(
    user_id    uuid PRIMARY KEY,
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Command-side uniqueness of e-mail addresses, keyed by a keyed hash (HMAC-SHA-256) of the
-- normalised address: the aggregate cannot know about other users, and the log is never decrypted
-- to find out. Written in the same transaction as the UserRegistered event.
CREATE TABLE email_claims
(
    email_hash bytea PRIMARY KEY,
    user_id    uuid        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

-- Read model: users (projection `users`).
CREATE TABLE users
(
    id                 uuid PRIMARY KEY,
    email              text        NOT NULL,
    email_hash         bytea       NOT NULL UNIQUE,
    display_name       text        NOT NULL,
    password_hash      text        NOT NULL,
    role               text        NOT NULL,
    status             text        NOT NULL DEFAULT 'active',
    botanist_requested boolean     NOT NULL DEFAULT false,
    -- none | pending | approved | rejected: an admin verifies botanist accounts.
    botanist_status    text        NOT NULL DEFAULT 'none',
    email_verified     boolean     NOT NULL DEFAULT false,
    phone              text,
    city               text,
    bio                text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL
);
CREATE INDEX users_role ON users (role);
CREATE INDEX users_botanist_pending ON users (id) WHERE botanist_status = 'pending';
