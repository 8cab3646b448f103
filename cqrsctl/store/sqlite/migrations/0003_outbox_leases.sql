-- Outbox claims without a per-key index: leased rows found by their lease, so a batch's
-- claim and delivery touch a few index pages rather than one per key.
-- Released: never edit this file; add the next version instead.

DROP INDEX IF EXISTS outbox_pending_key;

CREATE INDEX IF NOT EXISTS outbox_leased ON outbox (claimed_until) WHERE claimed_until IS NOT NULL;
