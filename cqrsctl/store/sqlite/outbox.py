"""The outbox (SQLite)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from ..base import OUTBOX_COLUMNS, Lease, NewMessage, Outbox, OutboxFailure, OutboxMessage, dumps
from ..statements import SQLITE as Q
from .sql import _ints, _opt_ts, _ts


def _message(r: tuple[Any, ...]) -> OutboxMessage:
    # The payload text is orjson's own output (see `dumps`): sinks send it as it is.
    payload = r[5].encode()
    return OutboxMessage(
        r[0], r[1], r[2], r[3], r[4], None, orjson.loads(r[6]), r[7], r[8],
        datetime.fromisoformat(r[9]), r[10], None, None, datetime.fromisoformat(r[11]),
        _opt_ts(r[12]), payload,
    )  # fmt: skip


class SQLiteOutbox(Outbox):
    # Writes run in a write transaction (BEGIN IMMEDIATE): one writer at a time, so a
    # claim needs no locks to keep concurrent drains apart.

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
        # or backing off. Those few rows are found first (by the leases' seqs, by due
        # time), then the candidates are read in seq order past them.
        leases = self._leases()
        expired = [lease for lease in leases if lease.until < now]
        leased = _ints([s for lease in leases if lease.until >= now for s in lease.seqs])
        params: dict[str, Any] = {"now": _ts(now), "limit": limit}
        only = ""
        if topics:
            only = " AND o.topic IN (" + ",".join(f":t{i}" for i in range(len(topics))) + ")"
            params.update({f"t{i}": t for i, t in enumerate(topics)})
        rows = self.conn.execute(
            "WITH blocked AS MATERIALIZED (SELECT topic, key, min(seq) AS first FROM ("
            f" SELECT topic, key, seq FROM outbox WHERE seq IN ({leased}) AND status = 'pending'"
            " UNION ALL SELECT topic, key, seq FROM outbox INDEXED BY outbox_pending_due"
            "  WHERE status = 'pending' AND next_attempt_at > :now"
            " ) GROUP BY topic, key)"
            # INDEXED BY: left alone, the planner may sort every pending row by seq.
            f" SELECT {OUTBOX_COLUMNS} FROM outbox o INDEXED BY outbox_pending"
            f" WHERE o.status = 'pending' AND o.next_attempt_at <= :now AND o.seq NOT IN ({leased})"
            " AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND b.first < o.seq)"
            f"{only} ORDER BY o.seq LIMIT :limit",
            params,
        ).fetchall()
        if not rows:
            return []
        return self._claimed([_message(r) for r in rows], expired, owner, until)

    def _leases(self, owner: str | None = None, lock: bool = False) -> list[Lease]:
        # No locks: writers take turns.
        if owner is None:
            rows = self.conn.execute(Q.outbox_leases)
        else:
            rows = self.conn.execute(Q.outbox_leases + " WHERE owner = ?", (owner,))
        return [Lease(r[0], r[1], datetime.fromisoformat(r[2]), orjson.loads(r[3])) for r in rows]

    def _add_lease(self, owner: str, until: datetime, seqs: Sequence[int]) -> None:
        self.conn.execute(Q.add_outbox_lease, (owner, _ts(until), orjson.dumps(seqs).decode()))

    def _rewrite_leases(self, shrunk: Sequence[Lease], emptied: Sequence[int]) -> None:
        if shrunk:
            self.conn.executemany(
                Q.set_outbox_lease_seqs,
                [(orjson.dumps(lease.seqs).decode(), lease.lease_id) for lease in shrunk],
            )
        if emptied:
            self.conn.execute(f"DELETE FROM outbox_leases WHERE lease_id IN ({_ints(emptied)})")

    def _set_error(self, seqs: Sequence[int], error: str) -> None:
        self.conn.execute(
            f"UPDATE outbox SET last_error = ? WHERE seq IN ({_ints(seqs)}) AND status = 'pending'", (error,)
        )

    def _delivered(self, seqs: Sequence[int], now: datetime) -> int:
        # `+status`: a bare `status` term makes SQLite update the rows' index entries the
        # slow way (over twice the CPU per row); the rows are found by seq either way.
        return self.conn.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1"
            f" WHERE seq IN ({_ints(seqs)}) AND +status = 'pending'",
            (_ts(now),),
        ).rowcount

    def _failed(self, failures: Sequence[OutboxFailure]) -> int:
        return self.conn.executemany(
            Q.mark_failed,
            [
                ("dead" if f.dead else "pending", f.attempts, _ts(f.next_attempt_at), f.error, f.seq)
                for f in failures
            ],
        ).rowcount

    def count_due(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        sql = Q.count_due_outbox
        params: list[Any] = [_ts(now)]
        if topics:
            sql += f" AND topic IN ({','.join('?' * len(topics))})"
            params += topics
        return int(self.conn.execute(sql, params).fetchone()[0])

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
        return self._show_leases([_message(r) for r in self.conn.execute(sql, params)])

    def get(self, ident: str) -> OutboxMessage | None:
        if ident.isdigit():
            row = self.conn.execute(Q.outbox_by_seq, (int(ident),)).fetchone()
        else:
            row = self.conn.execute(Q.outbox_by_id, (ident,)).fetchone()
        return None if row is None else self._show_leases([_message(row)])[0]

    def requeue(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        if seq is not None:
            self._unlease(None, [seq])
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
