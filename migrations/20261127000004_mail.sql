-- Outbox record of the mailer projection: one row per event whose mail went out, written right
-- after the SMTP server accepted it, so a replay or a retried batch does not send it again.
CREATE TABLE sent_mails
(
    event_position bigint PRIMARY KEY,
    user_id        uuid        NOT NULL,
    kind           text        NOT NULL,
    message_id     text        NOT NULL,
    sent_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sent_mails_sent_at_brin ON sent_mails USING brin (sent_at);
