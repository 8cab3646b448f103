"""SQLite backend: one file, WAL, one writer at a time.

Durability: WAL with `synchronous=NORMAL` (the default) survives a crash of the
process but may lose the last commits on power loss or an OS crash;
`?synchronous=FULL` in the URL fsyncs every commit and survives both.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ..errors import CommandRaceError, DatabaseError, DuplicateEventError, NotFoundError, UsageError
from .base import (
    CORE_COLUMNS,
    OUTBOX_COLUMNS,
    SCHEMA_VERSION,
    Deadline,
    EventRow,
    FoldRow,
    JournalEntry,
    NewMessage,
    OutboxFailure,
    OutboxMessage,
    SagaRecord,
    Snapshot,
    Store,
    StoredEvent,
    StreamInfo,
    Transaction,
    default_actor,
    dumps,
    stored_event,
    utcnow,
)
from .tracking import FENCE_IDLE, FENCE_WAIT, Checkpoint, EventTuple, Table, Tracking, check_user_table

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

_EVENT_COLUMNS = (
    "global_position, stream_id, stream_version, event_id, event_type, "
    "schema_version, data, metadata, recorded_at"
)

_SYNC_MODES = {"off", "normal", "full", "extra"}


def _ts(value: datetime) -> str:
    # Fixed width (always microseconds, always +00:00) so that text order is time order.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _opt_ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _ints(seqs: Sequence[int]) -> str:
    """Row numbers inlined into `IN (…)`: one statement for a whole batch, no injection (ints)."""
    return ",".join(str(int(s)) for s in seqs)


def _message(r: tuple[Any, ...]) -> OutboxMessage:
    return OutboxMessage(
        r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5]), orjson.loads(r[6]), r[7], r[8],
        datetime.fromisoformat(r[9]), r[10], r[11], _opt_ts(r[12]), datetime.fromisoformat(r[13]),
        _opt_ts(r[14]),
    )  # fmt: skip


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return stored_event(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        orjson.loads(row[6]),
        orjson.loads(row[7]),
        datetime.fromisoformat(row[8]),
    )


_SAGA_COLUMNS = (
    "saga_id, saga_type, status, current_step, steps, results, compensations, state,"
    " correlation_id, error_message, created_at, updated_at, version"
)
_DEADLINE_COLUMNS = "deadline_id, saga_id, name, due_at, payload, status, fired_at"


def _saga(r: tuple[Any, ...]) -> SagaRecord:
    return SagaRecord(
        r[0], r[1], r[2], r[3], orjson.loads(r[4]), orjson.loads(r[5]), orjson.loads(r[6]), orjson.loads(r[7]),
        r[8], r[9], datetime.fromisoformat(r[10]), datetime.fromisoformat(r[11]), r[12],
    )  # fmt: skip


def _deadline(r: tuple[Any, ...]) -> Deadline:
    return Deadline(
        r[0], r[1], r[2], datetime.fromisoformat(r[3]), orjson.loads(r[4]), r[5],
        None if r[6] is None else datetime.fromisoformat(r[6]),
    )  # fmt: skip


def _stream_range(
    stream_id: str, from_version: int, to_version: int | None, as_of: datetime | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a stream read from `from_version` on."""
    where, params = "stream_id = ? AND stream_version >= ?", [stream_id, from_version]
    if to_version is not None:
        where += " AND stream_version <= ?"
        params.append(to_version)
    if as_of is not None:
        where += " AND recorded_at <= ?"
        params.append(_ts(as_of))
    return where, params


class SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection, outer: _WriteTransaction | None = None) -> None:
        self.conn, self.outer = conn, outer
        # Under BEGIN IMMEDIATE nobody else writes, so a version seen by a full read
        # of a stream in this transaction stays true; append need not ask again.
        self._known: dict[str, int] = {}

    @property
    def tracking(self) -> SQLiteTracking:
        return SQLiteTracking(self.conn, self.outer)

    def _lock_for_append(self) -> None:
        # Writers run under BEGIN IMMEDIATE: one at a time, so positions commit in order.
        pass

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT cqrsctl_sp")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO cqrsctl_sp")
            self.conn.execute("RELEASE cqrsctl_sp")
            # Versions read inside may have been of rows now gone.
            self._known.clear()
            raise
        self.conn.execute("RELEASE cqrsctl_sp")

    def _stream_version(self, stream_id: str) -> int:
        known = self._known.get(stream_id)
        if known is not None:
            return known
        row = self.conn.execute(
            "SELECT max(stream_version) FROM events WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        return row[0] or 0

    stream_version = _stream_version

    def _events_by_id(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        found: list[StoredEvent] = []
        ids = list(event_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found += map(
                _event,
                self.conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id IN ({marks})", chunk),
            )
        return found

    def _insert_events(self, rows: list[EventRow]) -> list[int]:
        sql = (
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,"
            " category, data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        try:
            if len(rows) == 1:
                r = rows[0]
                cur = self.conn.execute(sql, (*r[:8], _ts(r[8])))
                self._known[r[0]] = r[1]
                return [cur.lastrowid]  # type: ignore[list-item]
            params = []
            at, stamp = None, ""
            for r in rows:
                if r[8] is not at:  # the rows of one append share their timestamp
                    at, stamp = r[8], _ts(r[8])
                params.append((*r[:8], stamp))
            self.conn.executemany(sql, params)
        except sqlite3.IntegrityError as exc:
            raise DuplicateEventError(f"append rejected by a uniqueness rule: {exc}") from None
        finally:
            self._known.clear()
        last = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return list(range(last - len(rows) + 1, last + 1))

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> list[StoredEvent]:
        where, params = _stream_range(stream_id, from_version, to_version, as_of)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where} ORDER BY stream_version"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        events = list(map(_event, self.conn.execute(sql, params)))
        if to_version is None and as_of is None and limit is None:
            if events:
                self._known[stream_id] = events[-1].stream_version
            elif from_version == 1:
                self._known[stream_id] = 0
        return events

    def read_stream_data(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
    ) -> list[FoldRow]:
        where, params = _stream_range(stream_id, from_version, to_version, as_of)
        sql = "SELECT global_position, stream_version, event_type, schema_version, data FROM events WHERE "
        rows = self.conn.execute(sql + where + " ORDER BY stream_version", params).fetchall()
        if to_version is None and as_of is None:
            if rows:
                self._known[stream_id] = rows[-1][1]
            elif from_version == 1:
                self._known[stream_id] = 0
        return rows

    def processed_command(self, command_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT result FROM processed_commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def record_command(self, command_id: str, stream_id: str, result: dict[str, Any]) -> None:
        cur = self.conn.execute(
            "INSERT INTO processed_commands (command_id, stream_id, result, processed_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (command_id) DO NOTHING",
            (command_id, stream_id, dumps(result), _ts(utcnow())),
        )
        if cur.rowcount == 0:
            raise CommandRaceError(command_id, stream_id)

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        row = self.conn.execute(
            "SELECT stream_id, aggregate_type, version, schema_version, state, taken_at"
            " FROM snapshots WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], row[3], orjson.loads(row[4]), datetime.fromisoformat(row[5]))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.conn.execute(
            "INSERT INTO snapshots (stream_id, aggregate_type, version, schema_version, state, taken_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
            " aggregate_type = excluded.aggregate_type, version = excluded.version,"
            " schema_version = excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at",
            (
                snapshot.stream_id,
                snapshot.aggregate_type,
                snapshot.version,
                snapshot.schema_version,
                dumps(snapshot.state),
                _ts(snapshot.taken_at),
            ),
        )

    def list_snapshots(self, limit: int | None = None) -> list[Snapshot]:
        rows = self.conn.execute(
            "SELECT stream_id, aggregate_type, version, schema_version, state, taken_at"
            " FROM snapshots ORDER BY stream_id LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [
            Snapshot(r[0], r[1], r[2], r[3], orjson.loads(r[4]), datetime.fromisoformat(r[5])) for r in rows
        ]

    def delete_snapshots(self, stream_id: str | None = None) -> int:
        if stream_id is None:
            return self.conn.execute("DELETE FROM snapshots").rowcount
        return self.conn.execute("DELETE FROM snapshots WHERE stream_id = ?", (stream_id,)).rowcount

    # -- outbox -------------------------------------------------------------------------
    # Claims run in a write transaction (BEGIN IMMEDIATE): one claimer at a time, so the
    # lease columns alone keep concurrent drains apart.

    def add_outbox(self, messages: Sequence[NewMessage]) -> None:
        self.conn.executemany(
            "INSERT INTO outbox (message_id, event_position, topic, key, payload, headers, next_attempt_at,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            [
                (
                    m.message_id, m.event_position, m.topic, m.key, dumps(m.payload), dumps(m.headers),
                    _ts(m.created_at), _ts(m.created_at),
                )
                for m in messages
            ],
        )  # fmt: skip

    def claim_outbox(
        self,
        owner: str,
        limit: int,
        now: datetime,
        until: datetime,
        topics: Sequence[str] | None = None,
    ) -> list[OutboxMessage]:
        # Order per key: a message waits while an earlier pending one of its key is leased
        # or backing off. Those few rows are found first (by lease, by due time), then the
        # candidates are read in seq order past them.
        params: dict[str, Any] = {"owner": owner, "until": _ts(until), "now": _ts(now), "limit": limit}
        only = ""
        if topics:
            only = " AND o.topic IN (" + ",".join(f":t{i}" for i in range(len(topics))) + ")"
            params.update({f"t{i}": t for i, t in enumerate(topics)})
        rows = self.conn.execute(
            "UPDATE outbox SET claimed_by = :owner, claimed_until = :until WHERE seq IN ("
            " WITH blocked AS MATERIALIZED (SELECT topic, key, min(seq) AS first FROM ("
            "  SELECT topic, key, seq FROM outbox INDEXED BY outbox_leased"
            "   WHERE claimed_until >= :now AND status = 'pending'"
            "  UNION ALL SELECT topic, key, seq FROM outbox INDEXED BY outbox_due"
            "   WHERE status = 'pending' AND next_attempt_at > :now"
            " ) GROUP BY topic, key)"
            # INDEXED BY: left alone, the planner picks outbox_due and sorts every pending row.
            " SELECT o.seq FROM outbox o INDEXED BY outbox_pending"
            " WHERE o.status = 'pending' AND o.next_attempt_at <= :now"
            " AND (o.claimed_until IS NULL OR o.claimed_until < :now)"
            " AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND b.first < o.seq)"
            f"{only} ORDER BY o.seq LIMIT :limit"
            f") RETURNING {OUTBOX_COLUMNS}",
            params,
        ).fetchall()
        # RETURNING gives no order.
        rows.sort(key=lambda r: r[0])
        return [_message(r) for r in rows]

    def outbox_claimers(self, now: datetime) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT claimed_by FROM outbox WHERE status = 'pending' AND claimed_until >= ?",
            (_ts(now),),
        )
        return [r[0] for r in rows]

    def renew_outbox(self, owner: str, seqs: Sequence[int], until: datetime) -> int:
        return self.conn.execute(
            f"UPDATE outbox SET claimed_until = ? WHERE seq IN ({_ints(seqs)}) AND claimed_by = ?"
            " AND status = 'pending'",
            (_ts(until), owner),
        ).rowcount

    def release_outbox(self, owner: str, seqs: Sequence[int] | None = None, error: str | None = None) -> int:
        sql = (
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL, last_error = coalesce(?, last_error)"
            " WHERE claimed_by = ? AND status = 'pending'"
        )
        if seqs is None:
            return self.conn.execute(sql, (error, owner)).rowcount
        return self.conn.execute(sql + f" AND seq IN ({_ints(seqs)})", (error, owner)).rowcount

    def mark_delivered(self, seqs: Sequence[int], now: datetime, owner: str | None = None) -> int:
        t = _ts(now)
        sql = (
            "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1,"
            f" claimed_by = NULL, claimed_until = NULL WHERE seq IN ({_ints(seqs)}) AND status = 'pending'"
        )
        if owner is None:
            return self.conn.execute(sql, (t,)).rowcount
        return self.conn.execute(sql + " AND claimed_by = ?", (t, owner)).rowcount

    def count_due_outbox(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        sql = "SELECT count(*) FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?"
        params: list[Any] = [_ts(now)]
        if topics:
            sql += f" AND topic IN ({','.join('?' * len(topics))})"
            params += topics
        return int(self.conn.execute(sql, params).fetchone()[0])

    def mark_failed(self, owner: str, failures: Sequence[OutboxFailure]) -> int:
        return self.conn.executemany(
            "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
            " claimed_by = NULL, claimed_until = NULL"
            " WHERE seq = ? AND claimed_by = ? AND status = 'pending'",
            [
                ("dead" if f.dead else "pending", f.attempts, _ts(f.next_attempt_at), f.error, f.seq, owner)
                for f in failures
            ],
        ).rowcount

    def outbox_backlog(self, now: datetime) -> tuple[int, int, int, datetime | None, int]:
        pending = self.conn.execute(
            "SELECT count(*), coalesce(sum(next_attempt_at <= ?), 0), min(created_at) FROM outbox"
            " WHERE status = 'pending'",
            (_ts(now),),
        ).fetchone()
        dead = self.conn.execute("SELECT count(*) FROM outbox WHERE status = 'dead'").fetchone()[0]
        top = self.conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
        return pending[0], pending[1], dead, _opt_ts(pending[2]), top

    def outbox_summary(self, now: datetime) -> list[tuple[str, str, int, int, datetime | None]]:
        rows = self.conn.execute(
            "SELECT topic, status, count(*), sum(next_attempt_at <= ?), min(created_at) FROM outbox"
            " GROUP BY topic, status ORDER BY topic, status",
            (_ts(now),),
        )
        return [(r[0], r[1], r[2], r[3], _opt_ts(r[4])) for r in rows]

    def list_outbox(
        self,
        status: str | None = None,
        topic: str | None = None,
        limit: int | None = None,
        key: str | None = None,
    ) -> list[OutboxMessage]:
        sql = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE 1 = 1"
        params: list[Any] = []
        if status:
            sql += " AND status = ?"
            params.append(status)
        if topic:
            sql += " AND topic = ?"
            params.append(topic)
        if key is not None:
            sql += " AND key = ?"
            params.append(key)
        sql += " ORDER BY seq LIMIT ?"
        params.append(-1 if limit is None else limit)
        return [_message(r) for r in self.conn.execute(sql, params)]

    def get_outbox(self, ident: str) -> OutboxMessage | None:
        column = "seq" if ident.isdigit() else "message_id"
        value: Any = int(ident) if ident.isdigit() else ident
        row = self.conn.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {column} = ?", (value,)
        ).fetchone()
        return None if row is None else _message(row)

    def requeue_outbox(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        sql = (
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?,"
            " claimed_by = NULL, claimed_until = NULL WHERE "
        )
        if seq is not None:
            return self.conn.execute(
                sql + "seq = ? AND status IN ('pending', 'dead')", (_ts(now), seq)
            ).rowcount
        if not dead:
            return 0
        return self.conn.execute(sql + "status = 'dead'", (_ts(now),)).rowcount

    def purge_outbox(self, statuses: Sequence[str], before: datetime) -> int:
        if not statuses:
            return 0
        return self.conn.execute(
            f"DELETE FROM outbox WHERE status IN ({','.join('?' * len(statuses))})"
            " AND coalesce(delivered_at, created_at) < ?",
            (*statuses, _ts(before)),
        ).rowcount

    # -- the operations journal ----------------------------------------------------------

    def add_journal(self, entry: JournalEntry) -> int:
        entry.at = entry.at or utcnow()
        entry.actor = entry.actor or default_actor()
        cur = self.conn.execute(
            "INSERT INTO cqrsctl_journal (at, actor, kind, args, result) VALUES (?, ?, ?, ?, ?)",
            (_ts(entry.at), entry.actor, entry.kind, dumps(entry.args), dumps(entry.result)),
        )
        entry.id = cur.lastrowid or 0
        return entry.id

    def list_journal(
        self, since: datetime | None = None, kinds: Sequence[str] | None = None, limit: int | None = None
    ) -> list[JournalEntry]:
        sql = "SELECT id, at, actor, kind, args, result FROM cqrsctl_journal WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND at >= ?"
            params.append(_ts(since))
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY id LIMIT ?"
        params.append(-1 if limit is None else limit)
        return [
            JournalEntry(
                r[3], orjson.loads(r[4]), orjson.loads(r[5]), r[2], datetime.fromisoformat(r[1]), r[0]
            )
            for r in self.conn.execute(sql, params)
        ]

    # -- sagas ----------------------------------------------------------------------------

    def try_lock(self, name: str) -> bool:
        return True  # BEGIN IMMEDIATE already made this transaction the only writer

    def get_position(self, name: str) -> int:
        row = self.conn.execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else row[0]

    def set_position(self, name: str, position: int) -> None:
        now = _ts(utcnow())
        self.conn.execute(
            "INSERT INTO checkpoints (name, position, status, created_at, updated_at) VALUES (?, ?, 'running', ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            (name, position, now, now),
        )

    def get_saga(self, saga_id: str) -> SagaRecord | None:
        row = self.conn.execute(f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
        return None if row is None else _saga(row)

    def save_saga(self, saga: SagaRecord) -> None:
        saga.version += 1
        self.conn.execute(
            f"INSERT INTO sagas ({_SAGA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (saga_id) DO UPDATE SET status = excluded.status, current_step = excluded.current_step,"
            " steps = excluded.steps, results = excluded.results, compensations = excluded.compensations,"
            " state = excluded.state, error_message = excluded.error_message, updated_at = excluded.updated_at,"
            " version = excluded.version",
            (
                saga.saga_id, saga.saga_type, saga.status, saga.current_step, dumps(saga.steps),
                dumps(saga.results), dumps(saga.compensations), dumps(saga.state), saga.correlation_id,
                saga.error_message, _ts(saga.created_at), _ts(saga.updated_at), saga.version,
            ),
        )  # fmt: skip

    def list_sagas(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]:
        sql = f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE (? IS NULL OR status = ?) AND (? IS NULL OR saga_type = ?)"
        sql += " ORDER BY created_at, saga_id LIMIT ?"
        rows = self.conn.execute(sql, (status, status, saga_type, saga_type, -1 if limit is None else limit))
        return [_saga(r) for r in rows]

    def saga_counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        if statuses is None:
            return dict(self.conn.execute("SELECT status, count(*) FROM sagas GROUP BY status").fetchall())
        sql = f"SELECT status, count(*) FROM sagas WHERE status IN ({','.join('?' * len(statuses))}) GROUP BY status"
        return dict(self.conn.execute(sql, list(statuses)).fetchall())

    def add_deadline(self, deadline: Deadline) -> None:
        self.conn.execute(
            "INSERT INTO deadlines (deadline_id, saga_id, name, due_at, payload, status) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (deadline_id) DO NOTHING",
            (deadline.deadline_id, deadline.saga_id, deadline.name, _ts(deadline.due_at),
             dumps(deadline.payload), deadline.status),
        )  # fmt: skip

    def due_deadlines(self, now: datetime, limit: int) -> list[Deadline]:
        rows = self.conn.execute(
            f"SELECT {_DEADLINE_COLUMNS} FROM deadlines WHERE status = 'pending' AND due_at <= ?"
            " ORDER BY due_at, deadline_id LIMIT ?",
            (_ts(now), limit),
        )
        return [_deadline(r) for r in rows]

    def saga_deadlines(self, saga_id: str) -> list[Deadline]:
        rows = self.conn.execute(
            f"SELECT {_DEADLINE_COLUMNS} FROM deadlines WHERE saga_id = ? ORDER BY due_at", (saga_id,)
        )
        return [_deadline(r) for r in rows]

    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None:
        self.conn.execute(
            "UPDATE deadlines SET status = ?, fired_at = ? WHERE deadline_id = ?",
            (status, None if fired_at is None else _ts(fired_at), deadline_id),
        )


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """`sqlite:///rel.db`, `sqlite:////abs.db`, `sqlite:///:memory:` -> (path, options)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise UsageError(f"not a sqlite URL: {url}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc:
        path = parts.netloc + "/" + path
    if not path:
        raise UsageError(f"sqlite URL has no file path: {url} (use sqlite:///file.db)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, options


class _Turns:
    """A first-come, first-served lock for the writers of one database file in this process.

    SQLite's own busy handler wakes waiting writers at random (one thread wrote 36 times
    while another wrote once); taking turns here first serves them in the order they came.
    Re-entrant per thread, so a thread that opens a second store on the same file inside a
    write transaction still gets SQLite's own "locked" answer rather than waiting on itself.
    Writers in other processes still meet SQLite's busy handler."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = self._serving = 0
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cond.wait()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                self._cond.notify_all()


_TURNS: dict[str, _Turns] = {}
_TURNS_LOCK = threading.Lock()


def _turns(path: str) -> _Turns:
    key = path if path == ":memory:" else str(Path(path).resolve())
    with _TURNS_LOCK:
        return _TURNS.setdefault(key, _Turns())


class _WriteTransaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on any exception). A class, not a generator:
    it is entered once per dispatched command.

    `deferred`: begin as a reader (a snapshot that blocks no writer) and become the writer
    only at `SQLiteTracking.fence()`, so slow work before that (projection handlers) never
    holds the database's write lock."""

    __slots__ = ("store", "conn", "deferred", "turn")

    def __init__(self, store: SQLiteStore, deferred: bool = False) -> None:
        self.store, self.conn, self.deferred = store, store.conn, deferred
        self.turn = False

    def __enter__(self) -> SQLiteTransaction:
        conn = self.conn
        if self.deferred:
            conn.execute("BEGIN")
            return SQLiteTransaction(conn, self)
        self.take_turn()
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                self.store._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as exc:
            self.give_turn()
            raise DatabaseError(f"sqlite: {exc}") from None
        return SQLiteTransaction(conn, self)

    def take_turn(self) -> None:
        self.store.turns.acquire()
        self.turn = True

    def give_turn(self) -> None:
        if self.turn:
            self.turn = False
            self.store.turns.release()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        conn = self.conn
        try:
            if exc_type is not None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise DatabaseError(f"sqlite commit failed: {error}") from None
        finally:
            self.give_turn()


class SQLiteStore(Store):
    """A store on one SQLite file. Safe to share between threads: each thread gets a
    connection of its own (an in-memory database keeps one for all, used by one thread at a
    time), and writers of this process take turns in the order they came (see _Turns)."""

    backend = "sqlite"

    def __init__(self, url: str, *, migrate: bool = True, create: bool = True) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        unknown = set(options) - {"synchronous", "busy_timeout"}
        if unknown:
            raise UsageError(f"unknown sqlite URL option(s): {', '.join(sorted(unknown))}")
        self.synchronous = options.get("synchronous", "normal").lower()
        if self.synchronous not in _SYNC_MODES:
            raise UsageError(f"synchronous must be one of {', '.join(sorted(_SYNC_MODES))}")
        try:
            self.busy_timeout_ms = int(options.get("busy_timeout", "60000"))
        except ValueError:
            raise UsageError("busy_timeout must be a number of milliseconds") from None
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise DatabaseError(
                    f"cannot open sqlite database {self.path}: directory {parent} does not exist"
                )
            if not create and not Path(self.path).exists():
                raise DatabaseError(f"no store at {self.path}; run `cqrsctl init`")
        self.turns = _turns(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        first = self._connect()
        if self.path == ":memory:":
            self._shared = first  # another connection would be another, empty, database
        if migrate:
            self.migrate()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal" and self.path != ":memory:":
                self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open sqlite database {self.path}: {exc}") from None
        self._local.conn = conn
        with self._all_lock:
            self._all.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        return conn if conn is not None else self._connect()

    def _retry_locked(self, fn: Any) -> Any:
        # The busy handler does not cover every path (switching journal mode, a
        # reader upgraded to writer); users must never see "database is locked".
        import time

        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def transaction(self, *, appending: bool = False, deferred: bool = False) -> _WriteTransaction:
        return _WriteTransaction(self, deferred)

    @contextmanager
    def lazy_transaction(self) -> Iterator[SQLiteTransaction]:
        # synchronous cannot change inside a transaction: around it, then. NORMAL in WAL
        # mode skips the fsync at commit; the next FULL commit or checkpoint syncs it.
        relax = self.synchronous in ("full", "extra") and not self.conn.in_transaction
        if relax:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self.transaction() as tx:
                yield tx
        finally:
            if relax:
                self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    @contextmanager
    def reader(self, *, consistent: bool = True) -> Iterator[SQLiteTransaction]:
        conn = self.conn
        if conn.in_transaction:  # nested inside a write transaction: share it
            yield SQLiteTransaction(conn)
            return
        shared = self._shared is not None
        if shared:  # one connection for every thread: one of them at a time
            self.turns.acquire()
        try:
            if not consistent:
                yield SQLiteTransaction(conn)
                return
            conn.execute("BEGIN")
            try:
                yield SQLiteTransaction(conn)
            finally:
                conn.execute("COMMIT")
        finally:
            if shared:
                self.turns.release()

    def ddl(self) -> str:
        statements = [_SCHEMA_TABLE]
        for version in sorted(MIGRATIONS):
            statements += MIGRATIONS[version]
        return ";\n\n".join(statements) + ";\n"

    def schema_version(self) -> int:
        try:
            row = self.conn.execute("SELECT max(version) FROM cqrsctl_schema").fetchone()
        except sqlite3.OperationalError:
            return 0
        return row[0] or 0

    def _apply_ddl(self, entry: JournalEntry, everything: bool) -> None:
        with self.transaction() as tx:
            tx.conn.execute(_SCHEMA_TABLE)
            current = tx.conn.execute("SELECT coalesce(max(version), 0) FROM cqrsctl_schema").fetchone()[0]
            for version in sorted(MIGRATIONS):
                if version <= current and not everything:
                    continue
                for statement in MIGRATIONS[version]:
                    tx.conn.execute(statement)
                if version > current:
                    tx.conn.execute(
                        "INSERT INTO cqrsctl_schema (version, applied_at) VALUES (?, ?)",
                        (version, _ts(utcnow())),
                    )
            if everything or current < SCHEMA_VERSION:
                entry.result.setdefault("from_version", current)
                entry.result.setdefault("to_version", SCHEMA_VERSION)
                tx.add_journal(entry)

    def core_columns(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for table in CORE_COLUMNS:
            columns = {r[1] for r in self.conn.execute(f"PRAGMA table_info({_q(table)})")}
            if columns:
                found[table] = columns
        return found

    def guards(self) -> dict[str, bool]:
        names = [
            f"{table}_append_only_{op}"
            for table in ("events", "cqrsctl_journal")
            for op in ("update", "delete")
        ]
        present = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        return {name: name in present for name in names}

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE global_position > ?"
        params: list[Any] = [after]
        if categories:
            sql += f" AND category IN ({','.join('?' * len(categories))})"
            params += categories
        if types:
            sql += f" AND event_type IN ({','.join('?' * len(types))})"
            params += types
        sql += " ORDER BY global_position LIMIT ?"
        params.append(limit)
        return list(map(_event, self.conn.execute(sql, params)))

    def head(self) -> int:
        return self.conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()[0]

    def list_streams(self, category: str | None = None, limit: int | None = None) -> list[StreamInfo]:
        sql = (
            "SELECT stream_id, category, max(stream_version), min(global_position), max(global_position),"
            " min(recorded_at), max(recorded_at) FROM events"
        )
        params: list[Any] = []
        if category:
            sql += " WHERE category = ?"
            params.append(category)
        sql += " GROUP BY stream_id ORDER BY min(global_position)"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            StreamInfo(
                r[0], r[1], r[2], r[3], r[4], datetime.fromisoformat(r[5]), datetime.fromisoformat(r[6])
            )
            for r in self.conn.execute(sql, params)
        ]

    def counts(self) -> dict[str, int]:
        if self.schema_version() == 0:
            raise NotFoundError(f"store {self.path} is not initialised: run `cqrsctl init`")
        present = self.core_columns()
        tables = [t for t in CORE_COLUMNS if t in present and t != "cqrsctl_schema"]
        return {t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


# -- projections and the daemon: checkpoints, leases, read-model tables ----------------------
# (the interface and its rules are in tracking.py; services/projections.py uses them)

_RM_TYPES = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "decimal": "TEXT",  # exact: Decimal <-> text, never through a float
    "bool": "INTEGER",
    "json": "TEXT",
    "timestamp": "TEXT",
}

_CP_COLUMNS = "name, position, version, status, error, error_position, skipped, owner, lease_until, created_at, updated_at"


def _q(name: str) -> str:
    return f'"{name}"'


def _rm_in(kind: str) -> Any:
    """Python value -> SQLite value for a column type (None when no conversion is needed)."""
    if kind == "decimal":
        return lambda v: None if v is None else str(v)
    if kind == "bool":
        return lambda v: None if v is None else int(bool(v))
    if kind == "json":
        return lambda v: None if v is None else dumps(v)
    if kind == "timestamp":
        return lambda v: v if v is None or isinstance(v, str) else _ts(v)
    return None


def _rm_out(kind: str) -> Any:
    from decimal import Decimal

    if kind == "decimal":
        return lambda v: None if v is None else Decimal(v)
    if kind == "bool":
        return lambda v: None if v is None else bool(v)
    if kind == "json":
        return lambda v: None if v is None else orjson.loads(v)
    if kind == "timestamp":
        return lambda v: None if v is None else datetime.fromisoformat(v)
    return None


def _checkpoint(row: tuple[Any, ...], now: str) -> Checkpoint:
    return Checkpoint(
        row[0], row[1], row[2], row[3], row[4], row[5], orjson.loads(row[6]), row[7],
        None if row[8] is None else datetime.fromisoformat(row[8]),
        datetime.fromisoformat(row[9]), datetime.fromisoformat(row[10]),
        row[7] is not None and row[8] is not None and row[8] > now,
    )  # fmt: skip


# The window runs over three narrow columns; only the chosen rows are joined back for data.
_SAMPLE = (
    "SELECT e.global_position, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data, s.n"
    " FROM (SELECT global_position,"
    " row_number() OVER (PARTITION BY event_type, schema_version ORDER BY global_position) AS rn,"
    " count(*) OVER (PARTITION BY event_type, schema_version) AS n FROM events) s"
    " JOIN events e ON e.global_position = s.global_position"
    " WHERE s.rn <= ? OR s.rn > s.n - ? ORDER BY e.global_position"
)


class SQLiteTracking(Tracking):
    # A write transaction is BEGIN IMMEDIATE (a deferred one becomes it at its first write
    # or fence), so holding one already excludes every other writer: `lock=True` needs no
    # row lock here.

    def __init__(self, conn: sqlite3.Connection, outer: _WriteTransaction | None = None) -> None:
        self.conn, self.outer = conn, outer

    def now(self) -> datetime:
        return utcnow()

    def fence(
        self, name: str, *, wait: float | None = FENCE_WAIT, idle: float | None = FENCE_IDLE
    ) -> Checkpoint | None:
        self._writer()
        return self.get(name, lock=True)

    def _writer(self) -> None:
        """A deferred transaction that is still a reader becomes the writer: it ends its
        snapshot and begins again with BEGIN IMMEDIATE. (Upgrading in place would fail
        whenever anyone committed since the snapshot.) What it read before can have been
        changed only by a lease holder, whose token the caller compares when fencing."""
        outer = self.outer
        if outer is not None and outer.deferred and not outer.turn:
            self.conn.execute("COMMIT")
            outer.take_turn()
            try:
                outer.store._retry_locked(lambda: self.conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.DatabaseError as exc:
                raise DatabaseError(f"sqlite: {exc}") from None

    def head(self) -> int:
        return self.conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()[0]

    def scan(
        self,
        after: int,
        limit: int,
        types: Sequence[str] | None = None,
        until: int | None = None,
        lean: bool = False,
    ) -> list[EventTuple]:
        sql = (
            "SELECT global_position, stream_id, stream_version, event_type, schema_version, data"
            + ("" if lean else ", metadata, recorded_at, event_id")
            + " FROM events WHERE global_position > ?"
        )
        params: list[Any] = [after]
        if until is not None:
            sql += " AND global_position <= ?"
            params.append(until)
        if types:
            sql += f" AND event_type IN ({','.join('?' * len(types))})"
            params += types
        sql += " ORDER BY global_position LIMIT ?"
        params.append(limit)
        return self.conn.execute(sql, params).fetchall()

    def sample(self, first: int, last: int) -> tuple[list[EventTuple], dict[tuple[str, int], int]]:
        rows = self.conn.execute(_SAMPLE, (first, last)).fetchall()
        counts = {(r[3], r[4]): r[6] for r in rows}
        return [r[:6] for r in rows], counts

    def get(self, name: str, lock: bool = False) -> Checkpoint | None:
        row = self.conn.execute(f"SELECT {_CP_COLUMNS} FROM checkpoints WHERE name = ?", (name,)).fetchone()
        return None if row is None else _checkpoint(row, _ts(utcnow()))

    def begin_step(self, name: str) -> tuple[Checkpoint | None, int]:
        return self.get(name, lock=True), self.head()

    def put(self, cp: Checkpoint, lease: float | None = None) -> datetime:
        self._writer()
        from datetime import timedelta

        now = utcnow()
        if lease is not None:
            cp.lease_until = now + timedelta(seconds=lease)
        stamp = _ts(now)
        self.conn.execute(
            f"INSERT INTO checkpoints ({_CP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position, version = excluded.version,"
            " status = excluded.status, error = excluded.error, error_position = excluded.error_position,"
            " skipped = excluded.skipped, owner = excluded.owner, lease_until = excluded.lease_until,"
            " updated_at = excluded.updated_at",
            (
                cp.name, cp.position, cp.version, cp.status, cp.error, cp.error_position, dumps(cp.skipped),
                cp.owner, None if cp.lease_until is None else _ts(cp.lease_until), stamp, stamp,
            ),
        )  # fmt: skip
        return datetime.fromisoformat(stamp)

    def delete(self, name: str) -> None:
        self._writer()
        self.conn.execute("DELETE FROM checkpoints WHERE name = ?", (name,))

    def checkpoints(self, prefix: str | None = None) -> list[Checkpoint]:
        now = _ts(utcnow())
        if prefix is None:
            rows = self.conn.execute(f"SELECT {_CP_COLUMNS} FROM checkpoints ORDER BY name")
        else:
            rows = self.conn.execute(
                f"SELECT {_CP_COLUMNS} FROM checkpoints WHERE substr(name, 1, ?) = ? ORDER BY name",
                (len(prefix), prefix),
            )
        return [_checkpoint(r, now) for r in rows]

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        self._writer()
        from datetime import timedelta

        now = utcnow()
        cur = self.conn.execute(
            "UPDATE checkpoints SET owner = ?, lease_until = ? WHERE name = ?"
            " AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until <= ?)",
            (owner, _ts(now + timedelta(seconds=seconds)), name, owner, _ts(now)),
        )
        return cur.rowcount == 1

    def renew(self, names: Sequence[str], owner: str, seconds: float) -> list[str]:
        self._writer()
        from datetime import timedelta

        if not names:
            return []
        now = utcnow()
        marks = ",".join("?" * len(names))
        rows = self.conn.execute(
            f"UPDATE checkpoints SET lease_until = ? WHERE owner = ? AND lease_until > ? AND name IN ({marks})"
            " RETURNING name",
            (_ts(now + timedelta(seconds=seconds)), owner, _ts(now), *names),
        ).fetchall()
        return [r[0] for r in rows]

    def release(self, names: Sequence[str], owner: str) -> None:
        self._writer()
        if names:
            self.conn.execute(
                "UPDATE checkpoints SET owner = NULL, lease_until = NULL"
                f" WHERE owner = ? AND name IN ({','.join('?' * len(names))})",
                (owner, *names),
            )

    def table_exists(self, name: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return row.fetchone() is not None

    def create_table(self, name: str, table: Table) -> None:
        check_user_table(name)
        self._writer()
        cols = ", ".join(f"{_q(c)} {_RM_TYPES[k]}" for c, k in table.columns.items())
        key = ", ".join(_q(c) for c in table.key)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_q(name)} ({cols}, PRIMARY KEY ({key})) WITHOUT ROWID"
        )

    def create_indexes(self, name: str, table: Table) -> None:
        self._writer()
        for i, cols in enumerate(table.indexes):
            self.conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_q(f'{name}__ix{i}')} ON {_q(name)}"
                f" ({', '.join(_q(c) for c in cols)})"
            )

    def drop_table(self, name: str) -> None:
        check_user_table(name)
        self._writer()
        self.conn.execute(f"DROP TABLE IF EXISTS {_q(name)}")

    def rename_table(self, old: str, new: str) -> None:
        check_user_table(old), check_user_table(new)
        self._writer()
        # The primary key index is named after the table and follows it.
        self.conn.execute(f"ALTER TABLE {_q(old)} RENAME TO {_q(new)}")

    def _where_keys(self, table: Table, n: int) -> str:
        if len(table.key) == 1:
            return f"{_q(table.key[0])} IN ({','.join('?' * n)})"
        one = "(" + ",".join("?" * len(table.key)) + ")"
        return f"({', '.join(_q(c) for c in table.key)}) IN (VALUES {','.join([one] * n)})"

    def _rows_out(self, table: Table, cursor: Any) -> list[dict[str, Any]]:
        names = list(table.columns)
        convert = [(i, f) for i, f in enumerate(_rm_out(table.columns[c]) for c in names) if f is not None]
        out = []
        for row in cursor:
            values = list(row)
            for i, f in convert:
                values[i] = f(values[i])
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _key_params(self, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        kinds = [_rm_in(table.columns[c]) for c in table.key]
        return [v if f is None else f(v) for key in keys for v, f in zip(key, kinds, strict=True)]

    def fetch(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = ", ".join(_q(c) for c in table.columns)
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            cursor = self.conn.execute(
                f"SELECT {cols} FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                self._key_params(table, chunk),
            )
            out += self._rows_out(table, cursor)
        return out

    def write(self, name: str, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        self._writer()
        if not rows:
            return
        names = list(table.columns)
        convert = [_rm_in(table.columns[c]) for c in names]
        values = table.value_columns
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in values)
            if values
            else "DO NOTHING"
        )
        self.conn.executemany(
            f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in names)}) VALUES ({','.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(_q(c) for c in table.key)}) {conflict}",
            [
                [r.get(c) if f is None else f(r.get(c)) for c, f in zip(names, convert, strict=True)]
                for r in rows
            ],
        )

    def remove(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> None:
        self._writer()
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            self.conn.execute(
                f"DELETE FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                self._key_params(table, chunk),
            )

    def select(
        self,
        name: str,
        table: Table,
        where: dict[str, Any] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_q(c) for c in table.columns)} FROM {_q(name)}"
        params: list[Any] = []
        if where:
            sql += " WHERE " + " AND ".join(f"{_q(c)} = ?" for c in where)
            for c, v in where.items():
                f = _rm_in(table.columns[c])
                params.append(v if f is None else f(v))
        if order_by:
            sql += " ORDER BY " + ", ".join(
                f"{_q(c[1:])} DESC" if c.startswith("-") else _q(c) for c in order_by
            )
        if limit is not None:
            if int(limit) < 0:
                raise UsageError(f"limit must not be negative, got {limit}")
            sql += f" LIMIT {int(limit)}"
        return self._rows_out(table, self.conn.execute(sql, params))

    def execute(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if text.lstrip()[:6].upper() != "SELECT":
            self._writer()
        cursor = self.conn.execute(text, params or {})
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
