"""Sagas and their deadlines (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from ..base import Deadline, SagaRecord, Sagas, dumps
from ..statements import SQLITE as Q
from .sql import _ts


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


class SQLiteSagas(Sagas):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def try_lock(self, name: str) -> bool:
        return True  # BEGIN IMMEDIATE already made this transaction the only writer

    def get(self, saga_id: str) -> SagaRecord | None:
        row = self.conn.execute(Q.get_saga, (saga_id,)).fetchone()
        return None if row is None else _saga(row)

    def save(self, saga: SagaRecord) -> None:
        saga.version += 1
        self.conn.execute(
            Q.save_saga,
            (
                saga.saga_id, saga.saga_type, saga.status, saga.current_step, dumps(saga.steps),
                dumps(saga.results), dumps(saga.compensations), dumps(saga.state), saga.correlation_id,
                saga.error_message, _ts(saga.created_at), _ts(saga.updated_at), saga.version,
            ),
        )  # fmt: skip

    def select(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]:
        rows = self.conn.execute(
            Q.list_sagas, (status, status, saga_type, saga_type, -1 if limit is None else limit)
        )
        return [_saga(r) for r in rows]

    def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        if statuses is None:
            return dict(self.conn.execute(Q.saga_counts).fetchall())
        sql = f"SELECT status, count(*) FROM sagas WHERE status IN ({','.join('?' * len(statuses))}) GROUP BY status"
        return dict(self.conn.execute(sql, list(statuses)).fetchall())

    def add_deadline(self, deadline: Deadline) -> None:
        self.conn.execute(
            Q.add_deadline,
            (deadline.deadline_id, deadline.saga_id, deadline.name, _ts(deadline.due_at),
             dumps(deadline.payload), deadline.status),
        )  # fmt: skip

    def due_deadlines(self, now: datetime, limit: int) -> list[Deadline]:
        rows = self.conn.execute(Q.due_deadlines, (_ts(now), limit))
        return [_deadline(r) for r in rows]

    def deadlines(self, saga_id: str) -> list[Deadline]:
        rows = self.conn.execute(Q.saga_deadlines, (saga_id,))
        return [_deadline(r) for r in rows]

    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None:
        self.conn.execute(
            Q.set_deadline_status, (status, None if fired_at is None else _ts(fired_at), deadline_id)
        )
