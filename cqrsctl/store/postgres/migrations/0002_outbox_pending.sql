-- Outbox claims: the next pending messages in order, and "is an earlier one of this key waiting?".
-- Released: never edit this file; add the next version instead.

CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS outbox_pending_key ON outbox (topic, key, seq) WHERE status = 'pending';
