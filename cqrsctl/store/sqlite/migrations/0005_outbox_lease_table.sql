-- Outbox leases in a table of their own: one row per claimed batch (its owner, until when,
-- and its messages' seq numbers as a JSON array). A claim then writes one row, not every
-- message it takes, and a delivery writes each message's row once. The messages'
-- claimed_by and claimed_until are no longer written: leases held now move to the table.
-- Due time is indexed for pending messages only (a delivery takes a row out of the index
-- rather than moving it within), dead messages in an index of their own.
-- Released: never edit this file; add the next version instead.

CREATE TABLE IF NOT EXISTS outbox_leases (
    lease_id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    lease_until TEXT NOT NULL,
    seqs TEXT NOT NULL
);

INSERT INTO outbox_leases (owner, lease_until, seqs)
SELECT claimed_by, claimed_until, json_group_array(seq) FROM (
    SELECT claimed_by, claimed_until, seq FROM outbox
    WHERE claimed_until IS NOT NULL AND claimed_by IS NOT NULL AND status = 'pending' ORDER BY seq
) GROUP BY claimed_by, claimed_until;

UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_until IS NOT NULL;

DROP INDEX IF EXISTS outbox_leased;

DROP INDEX IF EXISTS outbox_due;

CREATE INDEX IF NOT EXISTS outbox_pending_due ON outbox (next_attempt_at) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (seq) WHERE status = 'dead';
