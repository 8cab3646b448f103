"""What the SQLite modules share: timestamps as text, event rows, quoting."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import DatabaseError
from ..base import StoredEvent, stored_event
from ..statements import SQLITE as Q

if TYPE_CHECKING:
    from .store import _WriteTransaction

_EVENT_COLUMNS = Q.event_columns


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


def _q(name: str) -> str:
    return f'"{name}"'


def become_writer(conn: sqlite3.Connection, outer: _WriteTransaction | None) -> None:
    """A deferred transaction that is still a reader becomes the writer: it ends its
    snapshot and begins again with BEGIN IMMEDIATE. (Upgrading in place would fail
    whenever anyone committed since the snapshot.) What it read before can have been
    changed only by a lease holder, whose token the caller compares when fencing."""
    if outer is not None and outer.deferred and not outer.turn:
        conn.execute("COMMIT")
        outer.take_turn()
        try:
            outer.store._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"sqlite: {exc}") from None


def utils(conn: sqlite3.Connection) -> Any:
    """sqlite-utils over a connection of the store, for introspection (doctor, init). Lent,
    not handed over: recursive triggers and plugins stay off.

    Only there: importing sqlite-utils costs a process about 3.5 MB and 0.1 s (it brings
    click, pluggy and dateutil), which a rebuild's peak memory would show; and its upsert
    is slower than the read models' own (bench/README.md, "sqlite-utils")."""
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
