"""Sagas and their deadlines (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ..base import Deadline, SagaRecord, Sagas, dumps
from ..tracking import LOCK_IDLE
from .sql import _lock_key

if TYPE_CHECKING:
    from .store import PostgresStore

_SAGA_COLUMNS = (
    "saga_id, saga_type, status, current_step, steps, results, compensations, state,"
    " correlation_id, error_message, created_at, updated_at, version"
)
_DEADLINE_COLUMNS = "deadline_id, saga_id, name, due_at, payload, status, fired_at"


class PostgresSagas(Sagas):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def try_lock(self, name: str) -> bool:
        self.cur.execute(
            "SELECT pg_try_advisory_xact_lock(%s), set_config('idle_in_transaction_session_timeout', %s, true)",
            (_lock_key(f"cqrsctl.{name}.{self.store.schema}"), f"{int(LOCK_IDLE * 1000)}ms"),
        )
        return bool(self.cur.fetchone()[0])  # type: ignore[index]

    def get(self, saga_id: str) -> SagaRecord | None:
        self.cur.execute(f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id = %s", (saga_id,))
        row = self.cur.fetchone()
        return None if row is None else SagaRecord(*row)

    def save(self, saga: SagaRecord) -> None:
        saga.version += 1
        self.cur.execute(
            f"INSERT INTO sagas ({_SAGA_COLUMNS}) VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb,"
            " %s::jsonb, %s, %s, %s, %s, %s)"
            " ON CONFLICT (saga_id) DO UPDATE SET status = excluded.status, current_step = excluded.current_step,"
            " steps = excluded.steps, results = excluded.results, compensations = excluded.compensations,"
            " state = excluded.state, error_message = excluded.error_message, updated_at = excluded.updated_at,"
            " version = excluded.version",
            (
                saga.saga_id, saga.saga_type, saga.status, saga.current_step, dumps(saga.steps),
                dumps(saga.results), dumps(saga.compensations), dumps(saga.state), saga.correlation_id,
                saga.error_message, saga.created_at, saga.updated_at, saga.version,
            ),
        )  # fmt: skip

    def select(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]:
        self.cur.execute(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE (%(s)s::text IS NULL OR status = %(s)s)"
            " AND (%(t)s::text IS NULL OR saga_type = %(t)s) ORDER BY created_at, saga_id LIMIT %(n)s",
            {"s": status, "t": saga_type, "n": limit},
        )
        return [SagaRecord(*r) for r in self.cur.fetchall()]

    def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        if statuses is None:
            self.cur.execute("SELECT status, count(*) FROM sagas GROUP BY status")
        else:
            self.cur.execute(
                "SELECT status, count(*) FROM sagas WHERE status = ANY(%s) GROUP BY status", (list(statuses),)
            )
        return {r[0]: int(r[1]) for r in self.cur.fetchall()}

    def add_deadline(self, deadline: Deadline) -> None:
        self.cur.execute(
            "INSERT INTO deadlines (deadline_id, saga_id, name, due_at, payload, status)"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (deadline_id) DO NOTHING",
            (deadline.deadline_id, deadline.saga_id, deadline.name, deadline.due_at,
             dumps(deadline.payload), deadline.status),
        )  # fmt: skip

    def due_deadlines(self, now: datetime, limit: int) -> list[Deadline]:
        self.cur.execute(
            f"SELECT {_DEADLINE_COLUMNS} FROM deadlines WHERE status = 'pending' AND due_at <= %s"
            " ORDER BY due_at, deadline_id LIMIT %s",
            (now, limit),
        )
        return [Deadline(*r) for r in self.cur.fetchall()]

    def deadlines(self, saga_id: str) -> list[Deadline]:
        self.cur.execute(
            f"SELECT {_DEADLINE_COLUMNS} FROM deadlines WHERE saga_id = %s ORDER BY due_at", (saga_id,)
        )
        return [Deadline(*r) for r in self.cur.fetchall()]

    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None:
        self.cur.execute(
            "UPDATE deadlines SET status = %s, fired_at = %s WHERE deadline_id = %s",
            (status, fired_at, deadline_id),
        )
