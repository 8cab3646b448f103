"""Sagas and their deadlines (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from ..base import Deadline, SagaRecord, Sagas, dumps
from .sql import _ts

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


class SQLiteSagas(Sagas):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def try_lock(self, name: str) -> bool:
        return True  # BEGIN IMMEDIATE already made this transaction the only writer

    def get(self, saga_id: str) -> SagaRecord | None:
        row = self.conn.execute(f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
        return None if row is None else _saga(row)

    def save(self, saga: SagaRecord) -> None:
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

    def select(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]:
        sql = f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE (? IS NULL OR status = ?) AND (? IS NULL OR saga_type = ?)"
        sql += " ORDER BY created_at, saga_id LIMIT ?"
        rows = self.conn.execute(sql, (status, status, saga_type, saga_type, -1 if limit is None else limit))
        return [_saga(r) for r in rows]

    def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
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

    def deadlines(self, saga_id: str) -> list[Deadline]:
        rows = self.conn.execute(
            f"SELECT {_DEADLINE_COLUMNS} FROM deadlines WHERE saga_id = ? ORDER BY due_at", (saga_id,)
        )
        return [_deadline(r) for r in rows]

    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None:
        self.conn.execute(
            "UPDATE deadlines SET status = ?, fired_at = ? WHERE deadline_id = ?",
            (status, None if fired_at is None else _ts(fired_at), deadline_id),
        )
