-- Add an email_verified flag. Users who confirmed through last year's campaign (every third one) are backfilled.
SET lock_timeout = '5s';

ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

UPDATE users SET email_verified = true WHERE id % 3 = 0;

CREATE INDEX users_unverified_idx ON users (id) WHERE NOT email_verified;
