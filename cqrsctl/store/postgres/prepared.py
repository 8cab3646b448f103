"""Statements prepared on each connection for appends of one event (PostgreSQL).

Parsing and planning the append each time cost the server twice what running it does, so
a connection prepares the registration, the stream lock and the append once (PREPARE,
by name) and appends run them with EXECUTE and literal values, in one query of the simple
protocol. psycopg runs `DEALLOCATE ALL` on a connection after a rollback or DDL when it
holds prepared statements of its own, which drops these too: a transaction uses them only
once it has run one (BEGIN's round trip does) and until it runs such a statement
(PreparedCursor notes that), and a store prepares them again after any rollback.
"""

from __future__ import annotations

import re
from contextlib import suppress
from typing import Any

import psycopg

from .sql import _APPEND_ONE

NAMES = ("cqrsctl_register", "cqrsctl_lock", "cqrsctl_register_lock", "cqrsctl_append_one", "cqrsctl_notify")
BEGIN_APPENDING = "BEGIN; EXECUTE cqrsctl_register"
NOTIFY = "BEGIN; EXECUTE cqrsctl_notify; COMMIT"
NOTIFY_ALONE = "EXECUTE cqrsctl_notify"  # last in a query: a transaction of its own

# What makes psycopg deallocate every prepared statement (psycopg's own rule, by command
# status; a multi-statement query is judged by its text).
_CLEARS_STATUS = re.compile(r"^(?:DROP|ALTER|ROLLBACK|DISCARD ALL|DEALLOCATE ALL)\b")
_CLEARS_TEXT = re.compile(r"\b(?:DROP|ALTER|ROLLBACK|DISCARD|DEALLOCATE)\b", re.IGNORECASE)


def literal(text: str) -> str:
    """`text` as an SQL string literal, whatever standard_conforming_strings says. Callers
    pass only text without NUL (validated ids and types, JSON from orjson, which escapes it)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class StoreConnection(psycopg.Connection[Any]):
    """A connection of a store's pool: whether the statements are prepared on it, and the
    cursor its transactions share (making a cursor costs the client as much as a third
    of an append)."""

    prepared = False
    tx_cursor: PreparedCursor | None = None

    def rollback(self) -> None:  # the pool's, for a connection returned mid-transaction
        if self.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.prepared = False  # psycopg deallocates after a ROLLBACK
        super().rollback()

    def cursor_for(self, fast: bool) -> PreparedCursor:
        cur = self.tx_cursor
        if cur is None:
            cur = self.tx_cursor = PreparedCursor(self)
        cur.fast = fast
        return cur


class Prepared:
    """The statements, and preparing them on a store's connections."""

    def __init__(self, register: str, stream_tag: int, channel: str) -> None:
        """`register`: the registration's expression (docs/ordering.md)."""
        append = _APPEND_ONE
        for n, name in enumerate(("s", "c", "r", "lo", "hi", "i", "t", "sv", "d", "m"), 1):
            append = append.replace(f"%({name})s", f"${n}")
        lock = f"pg_advisory_xact_lock({stream_tag}, hashtext($1))"
        self.sql = "; ".join(
            [
                f"PREPARE cqrsctl_register AS SELECT {register}",
                f"PREPARE cqrsctl_lock(text) AS SELECT {lock}",
                # A one-event Store.append registers, then locks its stream, in one statement.
                f"PREPARE cqrsctl_register_lock(text) AS SELECT {register}, {lock}",
                "PREPARE cqrsctl_append_one(text, text, timestamptz, bigint, bigint, text, text, int, text,"
                f" text) AS {append}",
                # The wake-up's transaction commits without waiting for the disk (store.py).
                "PREPARE cqrsctl_notify AS SELECT set_config('synchronous_commit', 'off', true),"
                f" pg_notify('{channel}', '')",
            ]
        )

    def ensure(self, conn: StoreConnection) -> None:
        """Prepare on `conn` (idle) unless done since its last rollback; not when it
        connects: the events table may not exist yet then."""
        if conn.prepared:
            return
        try:
            conn.execute(self.sql)
        except psycopg.errors.DuplicatePreparedStatement:
            pass  # still there (they go all together): psycopg had nothing to deallocate
        except psycopg.Error:
            for name in NAMES:
                with suppress(psycopg.Error):  # those prepared before the failure
                    conn.execute(f"DEALLOCATE {name}")
            raise
        conn.prepared = True

    def begin_appending(self, conn: StoreConnection, cur: PreparedCursor) -> None:
        """BEGIN and the registration, in one round trip, through the prepared statement
        (which shows the statements are there for the rest of the transaction)."""
        self.ensure(conn)
        try:
            cur.run(BEGIN_APPENDING)
        except psycopg.errors.InvalidSqlStatementName:  # deallocated unnoticed: prepare again
            self.rollback(conn)
            self.ensure(conn)
            cur.run(BEGIN_APPENDING)

    def rollback(self, conn: StoreConnection) -> None:
        conn.execute("ROLLBACK")
        conn.prepared = False


class PreparedCursor(psycopg.Cursor[Any]):
    """A transaction's cursor: `fast` (the statements are there) until it runs a statement
    after which psycopg may have deallocated them; the store then prepares them again."""

    fast = False

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> PreparedCursor:
        super().execute(query, params, prepare=prepare, binary=binary)
        if _CLEARS_STATUS.match(self.statusmessage or "") or (
            params is None and isinstance(query, str) and ";" in query and _CLEARS_TEXT.search(query)
        ):
            self.fast = False
            self.connection.prepared = False  # type: ignore[attr-defined]
        return self

    def run(self, query: str) -> None:
        """A query of the simple protocol made only of the prepared statements (it cannot
        clear them)."""
        super().execute(query)
