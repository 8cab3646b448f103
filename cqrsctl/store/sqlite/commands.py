"""Processed commands and snapshots (SQLite)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import orjson

from ...errors import CommandRaceError
from ..base import Commands, Snapshot, Snapshots, dumps, utcnow
from ..statements import SQLITE as Q
from .sql import _ts


class SQLiteCommands(Commands):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def processed(self, command_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(Q.processed_command, (command_id,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def record(self, command_id: str, stream_id: str, result: dict[str, Any]) -> None:
        cur = self.conn.execute(Q.record_command, (command_id, stream_id, dumps(result), _ts(utcnow())))
        if cur.rowcount == 0:
            raise CommandRaceError(command_id, stream_id)


class SQLiteSnapshots(Snapshots):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def load(self, stream_id: str) -> Snapshot | None:
        row = self.conn.execute(Q.load_snapshot, (stream_id,)).fetchone()
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], row[3], orjson.loads(row[4]), datetime.fromisoformat(row[5]))

    def save(self, snapshot: Snapshot) -> None:
        self.conn.execute(
            Q.save_snapshot,
            (
                snapshot.stream_id,
                snapshot.aggregate_type,
                snapshot.version,
                snapshot.schema_version,
                dumps(snapshot.state),
                _ts(snapshot.taken_at),
            ),
        )

    def select(self, limit: int | None = None) -> list[Snapshot]:
        rows = self.conn.execute(Q.list_snapshots, (-1 if limit is None else limit,))
        return [
            Snapshot(r[0], r[1], r[2], r[3], orjson.loads(r[4]), datetime.fromisoformat(r[5])) for r in rows
        ]

    def delete(self, stream_id: str | None = None) -> int:
        if stream_id is None:
            return self.conn.execute(Q.delete_snapshots).rowcount
        return self.conn.execute(Q.delete_snapshot, (stream_id,)).rowcount
