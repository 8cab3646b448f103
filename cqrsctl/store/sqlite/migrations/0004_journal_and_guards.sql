-- The operations journal, and append-only events and journal in the database itself
-- (README, "Guard rails", says how an administrator lifts it on purpose).
-- Released: never edit this file; add the next version instead.

CREATE TABLE IF NOT EXISTS cqrsctl_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    result TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS cqrsctl_journal_kind ON cqrsctl_journal (kind, id);

CREATE TRIGGER IF NOT EXISTS events_append_only_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END;

CREATE TRIGGER IF NOT EXISTS events_append_only_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events is append-only: DELETE refused'); END;

CREATE TRIGGER IF NOT EXISTS cqrsctl_journal_append_only_update BEFORE UPDATE ON cqrsctl_journal BEGIN SELECT RAISE(ABORT, 'cqrsctl_journal is append-only: UPDATE refused'); END;

CREATE TRIGGER IF NOT EXISTS cqrsctl_journal_append_only_delete BEFORE DELETE ON cqrsctl_journal BEGIN SELECT RAISE(ABORT, 'cqrsctl_journal is append-only: DELETE refused'); END;
