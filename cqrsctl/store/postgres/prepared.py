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
import weakref
from contextlib import suppress
from typing import Any

import psycopg

from .sql import _APPEND_ONE

NAMES = ("cqrsctl_register", "cqrsctl_lock", "cqrsctl_append_one")
BEGIN_APPENDING = "BEGIN; EXECUTE cqrsctl_register"

# What makes psycopg deallocate every prepared statement (psycopg's own rule, by command
# status; a multi-statement query is judged by its text).
_CLEARS_STATUS = re.compile(r"^(?:DROP|ALTER|ROLLBACK|DISCARD ALL|DEALLOCATE ALL)\b")
_CLEARS_TEXT = re.compile(r"\b(?:DROP|ALTER|ROLLBACK|DISCARD|DEALLOCATE)\b", re.IGNORECASE)


def literal(text: str) -> str:
    """`text` as an SQL string literal, whatever standard_conforming_strings says. Callers
    pass only text without NUL (validated ids and types, JSON from orjson, which escapes it)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class Prepared:
    """Which connections of a store hold the statements."""

    def __init__(self, register_sql: str, stream_tag: int) -> None:
        append = _APPEND_ONE
        for n, name in enumerate(("s", "c", "r", "lo", "hi", "i", "t", "sv", "d", "m"), 1):
            append = append.replace(f"%({name})s", f"${n}")
        self.sql = "; ".join(
            [
                f"PREPARE cqrsctl_register AS {register_sql}",
                f"PREPARE cqrsctl_lock(text) AS SELECT pg_advisory_xact_lock({stream_tag}, hashtext($1))",
                "PREPARE cqrsctl_append_one(text, text, timestamptz, bigint, bigint, text, text, int, text,"
                f" text) AS {append}",
            ]
        )
        self._conns: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Prepare on `conn` (idle) unless done since its last rollback; not when it
        connects: the events table may not exist yet then."""
        if conn in self._conns:
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
        self._conns.add(conn)

    def forget(self, conn: psycopg.Connection[Any]) -> None:
        self._conns.discard(conn)

    def begin_appending(self, conn: psycopg.Connection[Any]) -> None:
        """BEGIN and the registration, in one round trip, through the prepared statement
        (which shows the statements are there for the rest of the transaction)."""
        self.ensure(conn)
        try:
            conn.execute(BEGIN_APPENDING)
        except psycopg.errors.InvalidSqlStatementName:  # deallocated unnoticed: prepare again
            self.rollback(conn)
            self.ensure(conn)
            conn.execute(BEGIN_APPENDING)

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("ROLLBACK")
        self.forget(conn)


class PreparedCursor(psycopg.Cursor[Any]):
    """A transaction's cursor: `fast` (the statements are there) until it runs a statement
    after which psycopg may have deallocated them; the store then prepares them again."""

    def __init__(self, conn: psycopg.Connection[Any], prepared: Prepared, fast: bool) -> None:
        super().__init__(conn)
        self.prepared, self.fast = prepared, fast

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> PreparedCursor:
        super().execute(query, params, prepare=prepare, binary=binary)
        if _CLEARS_STATUS.match(self.statusmessage or "") or (
            params is None and isinstance(query, str) and ";" in query and _CLEARS_TEXT.search(query)
        ):
            self.fast = False
            self.prepared.forget(self.connection)
        return self

    def run(self, query: str) -> None:
        """A query of the simple protocol made only of the prepared statements (it cannot
        clear them)."""
        super().execute(query)
