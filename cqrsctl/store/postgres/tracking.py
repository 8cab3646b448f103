"""Checkpoints and leases of projections and the daemon (PostgreSQL; the interface and
its rules are in ../tracking.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from ...errors import LockedError
from ..base import dumps
from ..statements import POSTGRES as Q
from ..tracking import FENCE_IDLE, FENCE_WAIT, Checkpoint, EventTuple, Tracking

_CP_COLUMNS = "name, position, version, status, error, error_position, skipped, owner, lease_until, created_at, updated_at"
_CP_SELECT = f"SELECT {_CP_COLUMNS}, owner IS NOT NULL AND lease_until > clock_timestamp() FROM checkpoints"


class PostgresTracking(Tracking):
    def __init__(self, cur: psycopg.Cursor[Any], head_sql: str) -> None:
        self.cur = cur
        self.head_sql = head_sql

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(query, params)
        return self.cur.fetchone()[0]  # type: ignore[index]

    def now(self) -> datetime:
        return self._one("SELECT clock_timestamp()")  # type: ignore[no-any-return]

    def head(self) -> int:
        return self._one(f"SELECT {self.head_sql}")  # type: ignore[no-any-return]

    def scan(
        self,
        after: int,
        limit: int,
        types: Sequence[str] | None = None,
        until: int | None = None,
        lean: bool = False,
        bare: bool = False,
    ) -> list[EventTuple]:
        # JSON as text: EventView decodes it only if a handler reads it.
        query, params = Q.scan_page(after, limit, types, until, lean, bare)
        # Lean and bare rows are numbers and text, which psycopg reads faster in binary (a
        # fifth of its CPU per row).
        self.cur.execute(query, params, binary=lean or bare)
        return self.cur.fetchall()

    def sample(self, first: int, last: int) -> tuple[list[EventTuple], dict[tuple[str, int], int]]:
        self.cur.execute(Q.sample, (first, last))
        rows = self.cur.fetchall()
        counts = {(r[2], r[5]): r[6] for r in rows}
        return [r[:6] for r in rows], counts

    def get(self, name: str, lock: bool = False) -> Checkpoint | None:
        self.cur.execute(_CP_SELECT + " WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,))
        row = self.cur.fetchone()
        return None if row is None else Checkpoint(*row)

    def fence(
        self, name: str, *, wait: float | None = FENCE_WAIT, idle: float | None = FENCE_IDLE
    ) -> Checkpoint | None:
        # Both timeouts end with the transaction. The idle one ends the session of a process
        # stopped (SIGSTOP, a hung VM) while it holds the row: its locks go, and its commit fails.
        if wait is not None or idle is not None:
            self.cur.execute(
                "SELECT set_config('lock_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true)",
                (f"{int((wait or 0) * 1000)}ms", f"{int((idle or 0) * 1000)}ms"),
            )
        try:
            return self.get(name, lock=True)
        except psycopg.errors.LockNotAvailable:
            raise LockedError(f"checkpoint {name} is locked by another transaction") from None

    def begin_step(self, name: str) -> tuple[Checkpoint | None, int]:
        # The head is read in the same statement, before the page of events that follows.
        self.cur.execute(
            _CP_SELECT.replace(" FROM checkpoints", f", {self.head_sql} FROM checkpoints") + " WHERE name = %s FOR UPDATE",
            (name,),
        )  # fmt: skip
        row = self.cur.fetchone()
        if row is None:
            return None, self.head()
        return Checkpoint(*row[:-1]), row[-1]

    def put(self, cp: Checkpoint, lease: float | None = None) -> datetime:
        self.cur.execute(
            f"INSERT INTO checkpoints ({_CP_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s,"
            " CASE WHEN %s::float8 IS NULL THEN %s ELSE clock_timestamp() + make_interval(secs => %s) END,"
            " now(), clock_timestamp())"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position, version = excluded.version,"
            " status = excluded.status, error = excluded.error, error_position = excluded.error_position,"
            " skipped = excluded.skipped, owner = excluded.owner, lease_until = excluded.lease_until,"
            " updated_at = excluded.updated_at RETURNING updated_at, lease_until",
            (
                cp.name, cp.position, cp.version, cp.status, cp.error, cp.error_position, dumps(cp.skipped),
                cp.owner, lease, cp.lease_until, lease,
            ),
        )  # fmt: skip
        updated_at, cp.lease_until = self.cur.fetchone()  # type: ignore[misc]
        return updated_at  # type: ignore[no-any-return]

    def delete(self, name: str) -> None:
        self.cur.execute("DELETE FROM checkpoints WHERE name = %s", (name,))

    def checkpoints(self, prefix: str | None = None) -> list[Checkpoint]:
        if prefix is None:
            self.cur.execute(_CP_SELECT + " ORDER BY name")
        else:
            self.cur.execute(_CP_SELECT + " WHERE left(name, %s) = %s ORDER BY name", (len(prefix), prefix))
        return [Checkpoint(*r) for r in self.cur.fetchall()]

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        self.cur.execute(
            "UPDATE checkpoints SET owner = %s, lease_until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE name = %s AND (owner IS NULL OR owner = %s OR lease_until IS NULL"
            " OR lease_until <= clock_timestamp())",
            (owner, seconds, name, owner),
        )
        return self.cur.rowcount == 1

    def renew(self, names: Sequence[str], owner: str, seconds: float) -> list[str]:
        if not names:
            return []
        self.cur.execute(
            "UPDATE checkpoints SET lease_until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE owner = %s AND lease_until > clock_timestamp() AND name = ANY(%s) RETURNING name",
            (seconds, owner, list(names)),
        )
        return [r[0] for r in self.cur.fetchall()]

    def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            self.cur.execute(
                "UPDATE checkpoints SET owner = NULL, lease_until = NULL WHERE owner = %s AND name = ANY(%s)",
                (owner, list(names)),
            )
