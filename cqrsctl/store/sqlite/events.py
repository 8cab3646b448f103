"""Appending and reading events in a transaction (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ...errors import DuplicateEventError
from ..base import EventRow, FoldRow, StoredEvent, Transaction
from ..statements import SQLITE as Q
from ..statements import split_snapshot
from .commands import SQLiteCommands, SQLiteSnapshots
from .journal import SQLiteJournal
from .outbox import SQLiteOutbox
from .read_models import SQLiteReadModels
from .sagas import SQLiteSagas
from .sql import _EVENT_COLUMNS, _event, _ts
from .tracking import SQLiteTracking

if TYPE_CHECKING:
    from .store import _WriteTransaction


def _stream_range(
    stream_id: str, from_version: int, to_version: int | None, as_of: datetime | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a stream read from `from_version` on."""
    where, params = Q.stream_from, [stream_id, from_version]
    if to_version is not None:
        where += Q.stream_to
        params.append(to_version)
    if as_of is not None:
        where += Q.stream_as_of
        params.append(_ts(as_of))
    return where, params


_CATCH_UP = f"{Q.read_stream_data}{Q.stream_from} ORDER BY stream_version"
_INSERT = (
    "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,"
    " category, data, metadata, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class _Savepoint:
    """SAVEPOINT … RELEASE (ROLLBACK TO on any exception). A class, not a generator: a
    group enters one per dispatched command."""

    __slots__ = ("tx",)

    def __init__(self, tx: SQLiteTransaction) -> None:
        self.tx = tx

    def __enter__(self) -> None:
        self.tx.cur.execute("SAVEPOINT cqrsctl_sp")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        cur = self.tx.cur
        if exc_type is not None:
            cur.execute("ROLLBACK TO cqrsctl_sp")
            cur.execute("RELEASE cqrsctl_sp")
            # Versions read inside may have been of rows now gone.
            self.tx._known.clear()
            return
        cur.execute("RELEASE cqrsctl_sp")


class SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection, outer: _WriteTransaction | None = None) -> None:
        self.conn, self.outer = conn, outer
        # Under BEGIN IMMEDIATE nobody else writes, so a version seen by a full read
        # of a stream in this transaction stays true; append need not ask again.
        self._known: dict[str, int] = {}

    @cached_property
    def cur(self) -> sqlite3.Cursor:
        """A cursor for the statements a dispatched command repeats, each run to its end:
        Connection.execute makes a new cursor each time."""
        return self.conn.cursor()

    @cached_property
    def _savepoint(self) -> _Savepoint:
        return _Savepoint(self)

    # A reader that neither begins nor takes turns (see SQLiteStore.reader).
    def __enter__(self) -> SQLiteTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @property
    def commands(self) -> SQLiteCommands:
        return SQLiteCommands(self.conn)

    @property
    def snapshots(self) -> SQLiteSnapshots:
        return SQLiteSnapshots(self.conn)

    @property
    def outbox(self) -> SQLiteOutbox:
        return SQLiteOutbox(self.conn)

    @property
    def sagas(self) -> SQLiteSagas:
        return SQLiteSagas(self.conn)

    @property
    def journal(self) -> SQLiteJournal:
        return SQLiteJournal(self.conn)

    @property
    def tracking(self) -> SQLiteTracking:
        return SQLiteTracking(self.conn, self.outer)

    @property
    def read_models(self) -> SQLiteReadModels:
        return SQLiteReadModels(self.conn, self.outer)

    def _lock_for_append(self) -> None:
        # Writers run under BEGIN IMMEDIATE: one at a time, so positions commit in order.
        pass

    def savepoint(self) -> _Savepoint:
        return self._savepoint  # it keeps no state: savepoints of one name nest

    def _stream_version(self, stream_id: str) -> int:
        known = self._known.get(stream_id)
        if known is not None:
            return known
        row = self.conn.execute(Q.stream_version, (stream_id,)).fetchone()
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
        try:
            if len(rows) == 1:
                r = rows[0]
                cur = self.cur
                cur.execute(_INSERT, (*r[:8], _ts(r[8])))
                # Under BEGIN IMMEDIATE, the stream's head until a savepoint rolls back.
                self._known[r[0]] = r[1]
                return [cur.lastrowid]  # type: ignore[list-item]
            self._known.clear()
            params = []
            at, stamp = None, ""
            for r in rows:
                if r[8] is not at:  # the rows of one append share their timestamp
                    at, stamp = r[8], _ts(r[8])
                params.append((*r[:8], stamp))
            self.conn.executemany(_INSERT, params)
        except sqlite3.IntegrityError as exc:
            self._known.clear()
            raise DuplicateEventError(f"append rejected by a uniqueness rule: {exc}") from None
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
        sql = f"{Q.read_stream}{where} ORDER BY stream_version"
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

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        sql = Q.read_all
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

    def read_stream_data(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
    ) -> list[FoldRow]:
        if to_version is not None or as_of is not None:
            where, params = _stream_range(stream_id, from_version, to_version, as_of)
            return self.conn.execute(
                f"{Q.read_stream_data}{where} ORDER BY stream_version", params
            ).fetchall()
        # From the version before too: when it is there, the rows end at the head (versions
        # have no gaps), and an append after this catch-up need not ask for the head.
        before = max(from_version - 1, 0)
        rows = self.cur.execute(_CATCH_UP, (stream_id, before)).fetchall()
        if rows and rows[0][1] == before:
            self._known[stream_id] = rows[-1][1]
            return rows[1:]
        if before == 0:
            self._known[stream_id] = rows[-1][1] if rows else 0
        return rows

    def read_from_snapshot(
        self, stream_id: str, schema_version: str, to_version: int | None = None
    ) -> tuple[int, Any, list[FoldRow]]:
        params = Q.snapshot_and_tail_params(stream_id, schema_version, to_version)
        version, state, rows = split_snapshot(self.conn.execute(Q.snapshot_and_tail, params).fetchall())
        if to_version is None and (rows or version == 0):  # without a snapshot, rows start at 1
            self._known[stream_id] = rows[-1][1] if rows else 0
        return version, state, rows
