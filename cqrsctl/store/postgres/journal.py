"""The operations journal (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from ..base import Journal, JournalEntry, default_actor, dumps, utcnow
from ..statements import POSTGRES as Q

if TYPE_CHECKING:
    from .store import PostgresStore


class PostgresJournal(Journal):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def add(self, entry: JournalEntry) -> int:
        entry.at = entry.at or utcnow()
        entry.actor = entry.actor or default_actor()
        self.cur.execute(
            Q.add_journal + " RETURNING id",
            (entry.at, entry.actor, entry.kind, dumps(entry.args), dumps(entry.result)),
        )
        entry.id = self.cur.fetchone()[0]  # type: ignore[index]
        return entry.id

    def select(
        self, since: datetime | None = None, kinds: Sequence[str] | None = None, limit: int | None = None
    ) -> list[JournalEntry]:
        self.cur.execute(
            *Q.filtered(Q.list_journal, [], ("at >= ?", since), ("kind IN ?", kinds), order="id", limit=limit)
        )
        return [
            JournalEntry(r[3], orjson.loads(r[4]), orjson.loads(r[5]), r[2], r[1], r[0])
            for r in self.cur.fetchall()
        ]
