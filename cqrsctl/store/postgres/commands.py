"""Processed commands and snapshots (PostgreSQL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import CommandRaceError
from ..base import Commands, Snapshot, Snapshots, dumps, utcnow

if TYPE_CHECKING:
    from .store import PostgresStore


class PostgresCommands(Commands):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def processed(self, command_id: str) -> dict[str, Any] | None:
        self.cur.execute("SELECT result FROM processed_commands WHERE command_id = %s", (command_id,))
        row = self.cur.fetchone()
        return None if row is None else row[0]

    def record(self, command_id: str, stream_id: str, result: dict[str, Any]) -> None:
        self.cur.execute(
            "INSERT INTO processed_commands (command_id, stream_id, result, processed_at)"
            " VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (command_id) DO NOTHING",
            (command_id, stream_id, dumps(result), utcnow()),
        )
        if self.cur.rowcount == 0:
            raise CommandRaceError(command_id, stream_id)


class PostgresSnapshots(Snapshots):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def load(self, stream_id: str) -> Snapshot | None:
        self.cur.execute(
            "SELECT stream_id, aggregate_type, version, schema_version, state, taken_at"
            " FROM snapshots WHERE stream_id = %s",
            (stream_id,),
        )
        row = self.cur.fetchone()
        return None if row is None else Snapshot(*row)

    def save(self, snapshot: Snapshot) -> None:
        self.cur.execute(
            "INSERT INTO snapshots (stream_id, aggregate_type, version, schema_version, state, taken_at)"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (stream_id) DO UPDATE SET"
            " aggregate_type = excluded.aggregate_type, version = excluded.version,"
            " schema_version = excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at",
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
        self.cur.execute(
            "SELECT stream_id, aggregate_type, version, schema_version, state, taken_at"
            " FROM snapshots ORDER BY stream_id LIMIT %s",
            (limit,),
        )
        return [Snapshot(*r) for r in self.cur.fetchall()]

    def delete(self, stream_id: str | None = None) -> int:
        if stream_id is None:
            self.cur.execute("DELETE FROM snapshots")
        else:
            self.cur.execute("DELETE FROM snapshots WHERE stream_id = %s", (stream_id,))
        return self.cur.rowcount
