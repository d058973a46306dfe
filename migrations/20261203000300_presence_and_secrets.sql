-- Presence (`online`, `last_seen`) is shown only between people who share an accepted or
-- running sitting, or a conversation in which both have written: the messaging projection marks
-- a participant who wrote in a conversation.
ALTER TABLE messaging.participants ADD COLUMN has_written boolean NOT NULL DEFAULT false;
UPDATE messaging.participants p
   SET has_written = true
 WHERE EXISTS (SELECT 1 FROM messaging.messages m
                WHERE m.conversation_id = p.conversation_id AND m.sender_id = p.user_id);

-- This database's own name in shared infrastructure: query-cache keys carry it, so that two
-- deployments (or two test databases) sharing one Redis never read each other's answers.
CREATE TABLE deployment
(
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    singleton boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO deployment DEFAULT VALUES;

-- Erasure leaves no id of the person in the read models but where the record needs it (their
-- messages in others' conversations, access records). Who started a conversation is read by
-- nobody: gone. Advice on an erased person's plant goes with the plant; an erased sitter is no
-- one (as the advice projection does in a replay, by the person's key).
ALTER TABLE messaging.conversations DROP COLUMN started_by;
DELETE FROM advice a WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.plant_owner_id);
UPDATE advice a SET sitter_id = NULL
 WHERE sitter_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = a.sitter_id);
ALTER TABLE advice
    ADD CONSTRAINT advice_plant_owner_fk FOREIGN KEY (plant_owner_id) REFERENCES users (id) ON DELETE CASCADE,
    ADD CONSTRAINT advice_sitter_fk FOREIGN KEY (sitter_id) REFERENCES users (id) ON DELETE SET NULL;
CREATE INDEX advice_plant_owner ON advice (plant_owner_id);
CREATE INDEX advice_sitter ON advice (sitter_id) WHERE sitter_id IS NOT NULL;
