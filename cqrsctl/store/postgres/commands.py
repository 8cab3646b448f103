"""Processed commands and snapshots (PostgreSQL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import CommandRaceError
from ..base import Commands, Snapshot, Snapshots, dumps, utcnow
from ..statements import POSTGRES as Q

if TYPE_CHECKING:
    from .store import PostgresStore


class PostgresCommands(Commands):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def processed(self, command_id: str) -> dict[str, Any] | None:
        self.cur.execute(Q.processed_command, (command_id,))
        row = self.cur.fetchone()
        return None if row is None else row[0]

    def record(self, command_id: str, stream_id: str, result: dict[str, Any]) -> None:
        self.cur.execute(Q.record_command, (command_id, stream_id, dumps(result), utcnow()))
        if self.cur.rowcount == 0:
            raise CommandRaceError(command_id, stream_id)


class PostgresSnapshots(Snapshots):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def load(self, stream_id: str) -> Snapshot | None:
        self.cur.execute(Q.load_snapshot, (stream_id,))
        row = self.cur.fetchone()
        return None if row is None else Snapshot(*row)

    def save(self, snapshot: Snapshot) -> None:
        self.cur.execute(
            Q.save_snapshot,
            (
                snapshot.stream_id,
                snapshot.aggregate_type,
                snapshot.version,
                snapshot.schema_version,
                dumps(snapshot.state),
                snapshot.taken_at,
            ),
        )

    def select(self, limit: int | None = None) -> list[Snapshot]:
        self.cur.execute(Q.list_snapshots, (limit,))
        return [Snapshot(*r) for r in self.cur.fetchall()]

    def delete(self, stream_id: str | None = None) -> int:
        if stream_id is None:
            self.cur.execute(Q.delete_snapshots)
        else:
            self.cur.execute(Q.delete_snapshot, (stream_id,))
        return self.cur.rowcount
