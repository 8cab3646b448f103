"""Sagas and their deadlines (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ..base import Deadline, SagaRecord, Sagas, dumps
from ..statements import POSTGRES as Q
from ..tracking import LOCK_IDLE
from .sql import _lock_key

if TYPE_CHECKING:
    from .store import PostgresStore


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
        self.cur.execute(Q.get_saga, (saga_id,))
        row = self.cur.fetchone()
        return None if row is None else SagaRecord(*row)

    def save(self, saga: SagaRecord) -> None:
        saga.version += 1
        self.cur.execute(
            Q.save_saga,
            (
                saga.saga_id, saga.saga_type, saga.status, saga.current_step, dumps(saga.steps),
                dumps(saga.results), dumps(saga.compensations), dumps(saga.state), saga.correlation_id,
                saga.error_message, saga.created_at, saga.updated_at, saga.version,
            ),
        )  # fmt: skip

    def select(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]:
        self.cur.execute(Q.list_sagas, (status, status, saga_type, saga_type, limit))
        return [SagaRecord(*r) for r in self.cur.fetchall()]

    def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        if statuses is None:
            self.cur.execute(Q.saga_counts)
        else:
            self.cur.execute(
                "SELECT status, count(*) FROM sagas WHERE status = ANY(%s) GROUP BY status", (list(statuses),)
            )
        return {r[0]: int(r[1]) for r in self.cur.fetchall()}

    def add_deadline(self, deadline: Deadline) -> None:
        self.cur.execute(
            Q.add_deadline,
            (deadline.deadline_id, deadline.saga_id, deadline.name, deadline.due_at,
             dumps(deadline.payload), deadline.status),
        )  # fmt: skip

    def due_deadlines(self, now: datetime, limit: int) -> list[Deadline]:
        self.cur.execute(Q.due_deadlines, (now, limit))
        return [Deadline(*r) for r in self.cur.fetchall()]

    def deadlines(self, saga_id: str) -> list[Deadline]:
        self.cur.execute(Q.saga_deadlines, (saga_id,))
        return [Deadline(*r) for r in self.cur.fetchall()]

    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None:
        self.cur.execute(Q.set_deadline_status, (status, fired_at, deadline_id))
