"""Checkpoints and leases of projections and the daemon (SQLite; the interface and its
rules are in ../tracking.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from ..base import dumps, utcnow
from ..statements import SQLITE as Q
from ..tracking import FENCE_IDLE, FENCE_WAIT, Checkpoint, EventTuple, Tracking
from .sql import _ts, become_writer

if TYPE_CHECKING:
    from .store import _WriteTransaction

_CP_COLUMNS = "name, position, version, status, error, error_position, skipped, owner, lease_until, created_at, updated_at"


def _checkpoint(row: tuple[Any, ...], now: str) -> Checkpoint:
    return Checkpoint(
        row[0], row[1], row[2], row[3], row[4], row[5], orjson.loads(row[6]), row[7],
        None if row[8] is None else datetime.fromisoformat(row[8]),
        datetime.fromisoformat(row[9]), datetime.fromisoformat(row[10]),
        row[7] is not None and row[8] is not None and row[8] > now,
    )  # fmt: skip


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
        become_writer(self.conn, self.outer)

    def head(self) -> int:
        return self.conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()[0]

    def scan(
        self,
        after: int,
        limit: int,
        types: Sequence[str] | None = None,
        until: int | None = None,
        lean: bool = False,
        bare: bool = False,
    ) -> list[EventTuple]:
        sql, params = Q.scan_page(after, limit, types, until, lean, bare)
        return self.conn.execute(sql, params).fetchall()

    def sample(self, first: int, last: int) -> tuple[list[EventTuple], dict[tuple[str, int], int]]:
        rows = self.conn.execute(Q.sample, (first, last)).fetchall()
        counts = {(r[2], r[5]): r[6] for r in rows}
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
