-- TOTP two-factor authentication in the users read model. The secret stays sealed with the
-- user's key (login opens it), so the read model holds no second factor in clear; recovery codes
-- are SHA-256 hashes.
ALTER TABLE users
    ADD COLUMN mfa_enabled    boolean NOT NULL DEFAULT false,
    ADD COLUMN totp_secret    text,
    ADD COLUMN totp_pending   text,
    ADD COLUMN recovery_codes text[]  NOT NULL DEFAULT '{}';
