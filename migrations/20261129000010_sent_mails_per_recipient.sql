-- A sitting event may mail two people (the start reminder goes to the owner and to the sitter), so
-- the outbox keeps one row per event and recipient. `user_id` is the recipient; account mails
-- (one per event, to the account) keep the rows they had.
ALTER TABLE sent_mails DROP CONSTRAINT sent_mails_pkey;
ALTER TABLE sent_mails ADD PRIMARY KEY (event_position, user_id);
