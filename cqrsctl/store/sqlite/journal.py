"""The operations journal (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

import orjson

from ..base import Journal, JournalEntry, default_actor, dumps, utcnow
from ..statements import SQLITE as Q
from .sql import _ts


class SQLiteJournal(Journal):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, entry: JournalEntry) -> int:
        entry.at = entry.at or utcnow()
        entry.actor = entry.actor or default_actor()
        cur = self.conn.execute(
            Q.add_journal,
            (_ts(entry.at), entry.actor, entry.kind, dumps(entry.args), dumps(entry.result)),
        )
        entry.id = cur.lastrowid or 0
        return entry.id

    def select(
        self, since: datetime | None = None, kinds: Sequence[str] | None = None, limit: int | None = None
    ) -> list[JournalEntry]:
        sql, params = Q.filtered(
            Q.list_journal,
            [],
            ("at >= ?", None if since is None else _ts(since)),
            ("kind IN ?", kinds),
            order="id",
            limit=limit,
        )
        return [
            JournalEntry(
                r[3], orjson.loads(r[4]), orjson.loads(r[5]), r[2], datetime.fromisoformat(r[1]), r[0]
            )
            for r in self.conn.execute(sql, params)
        ]
