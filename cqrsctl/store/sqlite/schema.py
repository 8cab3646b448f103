"""The SQLite schema: forward-only migrations."""

from __future__ import annotations

# Forward-only migrations: version -> statements. Never edit a released entry; add one.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL DEFAULT 1,
    category TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (stream_id, stream_version)
)""",
        "CREATE INDEX IF NOT EXISTS events_category ON events (category, global_position)",
        """CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema_version TEXT NOT NULL,
    state TEXT NOT NULL,
    taken_at TEXT NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL DEFAULT 0,
    version TEXT,
    status TEXT NOT NULL DEFAULT 'idle',
    error TEXT,
    error_position INTEGER,
    skipped TEXT NOT NULL DEFAULT '[]',
    owner TEXT,
    lease_until TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    event_position INTEGER,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    claimed_by TEXT,
    claimed_until TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT
)""",
        "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at)",
        """CREATE TABLE IF NOT EXISTS sagas (
    saga_id TEXT PRIMARY KEY,
    saga_type TEXT NOT NULL,
    status TEXT NOT NULL,
    current_step INTEGER NOT NULL DEFAULT 0,
    steps TEXT NOT NULL DEFAULT '[]',
    results TEXT NOT NULL DEFAULT '{}',
    compensations TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL DEFAULT '{}',
    correlation_id TEXT,
    error_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)""",
        "CREATE INDEX IF NOT EXISTS sagas_status ON sagas (status, saga_type)",
        """CREATE TABLE IF NOT EXISTS deadlines (
    deadline_id TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    name TEXT NOT NULL,
    due_at TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    fired_at TEXT
)""",
        "CREATE INDEX IF NOT EXISTS deadlines_due ON deadlines (status, due_at)",
        """CREATE TABLE IF NOT EXISTS processed_commands (
    command_id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    result TEXT NOT NULL,
    processed_at TEXT NOT NULL
)""",
    ],
    # Outbox claims: the next pending messages in order, and "is an earlier one of this key waiting?".
    2: [
        "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE status = 'pending'",
        "CREATE INDEX IF NOT EXISTS outbox_pending_key ON outbox (topic, key, seq) WHERE status = 'pending'",
    ],
    # Outbox claims without a per-key index: leased rows found by their lease, so a batch's
    # claim and delivery touch a few index pages rather than one per key.
    3: [
        "DROP INDEX IF EXISTS outbox_pending_key",
        "CREATE INDEX IF NOT EXISTS outbox_leased ON outbox (claimed_until) WHERE claimed_until IS NOT NULL",
    ],
    # The operations journal, and append-only events and journal in the database itself
    # (README, "Guard rails", says how an administrator lifts it on purpose).
    4: [
        """CREATE TABLE IF NOT EXISTS cqrsctl_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    result TEXT NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS cqrsctl_journal_kind ON cqrsctl_journal (kind, id)",
        *(
            f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_{op.lower()} BEFORE {op} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END"
            for table in ("events", "cqrsctl_journal")
            for op in ("UPDATE", "DELETE")
        ),
    ],
}

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS cqrsctl_schema (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""
