"""The outbox (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from ..base import OUTBOX_COLUMNS, NewMessage, Outbox, OutboxFailure, OutboxMessage, dumps
from ..statements import SQLITE as Q
from .sql import _ints, _opt_ts, _ts


def _message(r: tuple[Any, ...]) -> OutboxMessage:
    # The payload text is orjson's own output (see `dumps`): sinks send it as it is.
    payload = r[5].encode()
    return OutboxMessage(
        r[0], r[1], r[2], r[3], r[4], orjson.loads(payload), orjson.loads(r[6]), r[7], r[8],
        datetime.fromisoformat(r[9]), r[10], r[11], _opt_ts(r[12]), datetime.fromisoformat(r[13]),
        _opt_ts(r[14]), payload,
    )  # fmt: skip


class SQLiteOutbox(Outbox):
    # Claims run in a write transaction (BEGIN IMMEDIATE): one claimer at a time, so the
    # lease columns alone keep concurrent drains apart.

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, messages: Sequence[NewMessage]) -> None:
        self.conn.executemany(
            Q.add_outbox,
            [
                (
                    m.message_id, m.event_position, m.topic, m.key, dumps(m.payload), dumps(m.headers),
                    _ts(m.created_at), _ts(m.created_at),
                )
                for m in messages
            ],
        )  # fmt: skip

    def claim(
        self,
        owner: str,
        limit: int,
        now: datetime,
        until: datetime,
        topics: Sequence[str] | None = None,
    ) -> list[OutboxMessage]:
        # Order per key: a message waits while an earlier pending one of its key is leased
        # or backing off. Those few rows are found first (by lease, by due time), then the
        # candidates are read in seq order past them.
        params: dict[str, Any] = {"owner": owner, "until": _ts(until), "now": _ts(now), "limit": limit}
        only = ""
        if topics:
            only = " AND o.topic IN (" + ",".join(f":t{i}" for i in range(len(topics))) + ")"
            params.update({f"t{i}": t for i, t in enumerate(topics)})
        rows = self.conn.execute(
            "UPDATE outbox SET claimed_by = :owner, claimed_until = :until WHERE seq IN ("
            " WITH blocked AS MATERIALIZED (SELECT topic, key, min(seq) AS first FROM ("
            "  SELECT topic, key, seq FROM outbox INDEXED BY outbox_leased"
            "   WHERE claimed_until >= :now AND status = 'pending'"
            "  UNION ALL SELECT topic, key, seq FROM outbox INDEXED BY outbox_due"
            "   WHERE status = 'pending' AND next_attempt_at > :now"
            " ) GROUP BY topic, key)"
            # INDEXED BY: left alone, the planner picks outbox_due and sorts every pending row.
            " SELECT o.seq FROM outbox o INDEXED BY outbox_pending"
            " WHERE o.status = 'pending' AND o.next_attempt_at <= :now"
            " AND (o.claimed_until IS NULL OR o.claimed_until < :now)"
            " AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND b.first < o.seq)"
            f"{only} ORDER BY o.seq LIMIT :limit"
            f") RETURNING {OUTBOX_COLUMNS}",
            params,
        ).fetchall()
        # RETURNING gives no order.
        rows.sort(key=lambda r: r[0])
        return [_message(r) for r in rows]

    def claimers(self, now: datetime) -> list[str]:
        rows = self.conn.execute(Q.outbox_claimers, (_ts(now),))
        return [r[0] for r in rows]

    def renew(self, owner: str, seqs: Sequence[int], until: datetime) -> int:
        return self.conn.execute(
            f"UPDATE outbox SET claimed_until = ? WHERE seq IN ({_ints(seqs)}) AND claimed_by = ?"
            " AND status = 'pending'",
            (_ts(until), owner),
        ).rowcount

    def release(self, owner: str, seqs: Sequence[int] | None = None, error: str | None = None) -> int:
        sql = Q.release_outbox
        if seqs is None:
            return self.conn.execute(sql, (error, owner)).rowcount
        return self.conn.execute(sql + f" AND seq IN ({_ints(seqs)})", (error, owner)).rowcount

    def mark_delivered(self, seqs: Sequence[int], now: datetime, owner: str | None = None) -> int:
        # `+status`: a bare `status` term makes SQLite update the rows' index entries the
        # slow way (over twice the CPU per row); the rows are found by seq either way.
        t = _ts(now)
        sql = (
            "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1,"
            f" claimed_by = NULL, claimed_until = NULL WHERE seq IN ({_ints(seqs)}) AND +status = 'pending'"
        )
        if owner is None:
            return self.conn.execute(sql, (t,)).rowcount
        return self.conn.execute(sql + " AND claimed_by = ?", (t, owner)).rowcount

    def count_due(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        sql = Q.count_due_outbox
        params: list[Any] = [_ts(now)]
        if topics:
            sql += f" AND topic IN ({','.join('?' * len(topics))})"
            params += topics
        return int(self.conn.execute(sql, params).fetchone()[0])

    def mark_failed(self, owner: str, failures: Sequence[OutboxFailure]) -> int:
        return self.conn.executemany(
            Q.mark_failed,
            [
                ("dead" if f.dead else "pending", f.attempts, _ts(f.next_attempt_at), f.error, f.seq, owner)
                for f in failures
            ],
        ).rowcount

    def backlog(self, now: datetime) -> tuple[int, int, int, datetime | None, int]:
        pending = self.conn.execute(
            "SELECT count(*), coalesce(sum(next_attempt_at <= ?), 0), min(created_at) FROM outbox"
            " WHERE status = 'pending'",
            (_ts(now),),
        ).fetchone()
        dead = self.conn.execute(Q.dead_outbox).fetchone()[0]
        top = self.conn.execute(Q.top_outbox).fetchone()[0]
        return pending[0], pending[1], dead, _opt_ts(pending[2]), top

    def summary(self, now: datetime) -> list[tuple[str, str, int, int, datetime | None]]:
        rows = self.conn.execute(
            "SELECT topic, status, count(*), sum(next_attempt_at <= ?), min(created_at) FROM outbox"
            " GROUP BY topic, status ORDER BY topic, status",
            (_ts(now),),
        )
        return [(r[0], r[1], r[2], r[3], _opt_ts(r[4])) for r in rows]

    def select(
        self,
        status: str | None = None,
        topic: str | None = None,
        limit: int | None = None,
        key: str | None = None,
    ) -> list[OutboxMessage]:
        sql, params = Q.outbox_listing(status, topic, key, limit)
        return [_message(r) for r in self.conn.execute(sql, params)]

    def get(self, ident: str) -> OutboxMessage | None:
        if ident.isdigit():
            row = self.conn.execute(Q.outbox_by_seq, (int(ident),)).fetchone()
        else:
            row = self.conn.execute(Q.outbox_by_id, (ident,)).fetchone()
        return None if row is None else _message(row)

    def requeue(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        if seq is not None:
            return self.conn.execute(Q.requeue_outbox, (_ts(now), seq)).rowcount
        if not dead:
            return 0
        return self.conn.execute(Q.requeue_dead_outbox, (_ts(now),)).rowcount

    def purge(self, statuses: Sequence[str], before: datetime) -> int:
        if not statuses:
            return 0
        return self.conn.execute(
            f"DELETE FROM outbox WHERE status IN ({','.join('?' * len(statuses))})"
            " AND coalesce(delivered_at, created_at) < ?",
            (*statuses, _ts(before)),
        ).rowcount
