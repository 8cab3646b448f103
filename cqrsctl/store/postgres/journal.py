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
        query = Q.list_journal
        params: list[Any] = []
        if since is not None:
            query += " AND at >= %s"
            params.append(since)
        if kinds:
            query += " AND kind = ANY(%s)"
            params.append(list(kinds))
        query += " ORDER BY id"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        self.cur.execute(query, params)
        return [
            JournalEntry(r[3], orjson.loads(r[4]), orjson.loads(r[5]), r[2], r[1], r[0])
            for r in self.cur.fetchall()
        ]
