"""The outbox (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ..base import OUTBOX_COLUMNS, NewMessage, Outbox, OutboxFailure, OutboxMessage, dumps
from ..statements import POSTGRES as Q

if TYPE_CHECKING:
    from .store import PostgresStore


class PostgresOutbox(Outbox):
    def __init__(self, cur: psycopg.Cursor[Any], store: PostgresStore) -> None:
        self.cur, self.store = cur, store

    def add(self, messages: Sequence[NewMessage]) -> None:
        self.cur.executemany(
            Q.add_outbox,
            [
                (
                    m.message_id, m.event_position, m.topic, m.key, dumps(m.payload), dumps(m.headers),
                    m.created_at, m.created_at,
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
        # Why a lock as well as SKIP LOCKED: the "earlier message of this key is leased"
        # test reads committed rows, so a claim still in flight elsewhere is invisible to
        # it, and two claimers could split one key between them. Claims are short, so
        # serialising them costs little; SKIP LOCKED still keeps a claim from waiting on
        # rows other runs are marking delivered.
        # The planner settings pin the plan that stops after `limit` rows: walk the pending
        # index in seq order, and find leased rows by the lease index. Without table
        # statistics it would sort every pending row, or scan the table for leases.
        self.cur.execute(
            "SELECT pg_advisory_xact_lock(%s), set_config('enable_sort', 'off', true),"
            " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)",
            (self.store.outbox_lock,),
        )
        # Order per key: a message waits while an earlier pending one of its key is leased
        # or backing off. Those few rows are found first (by lease, by due time), then the
        # candidates are read in seq order past them.
        query = (
            "SELECT o.seq AS picked FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= %(now)s"
            " AND (o.claimed_until IS NULL OR o.claimed_until < %(now)s)"
            " AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND b.first < o.seq)"
        )
        params: dict[str, Any] = {"now": now, "limit": limit, "owner": owner, "until": until}
        if topics:
            query += " AND o.topic = ANY(%(topics)s)"
            params["topics"] = list(topics)
        query += " ORDER BY o.seq LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED"
        # One statement picks and leases; RETURNING gives no order, so sort here.
        blocked = (
            "SELECT topic, key, min(seq) AS first FROM ("
            # OFFSET 0 keeps `status` out of the scan, so it walks the lease index, not every pending row.
            " SELECT topic, key, seq FROM (SELECT topic, key, seq, status FROM outbox"
            "  WHERE claimed_until >= %(now)s OFFSET 0) l WHERE status = 'pending'"
            " UNION ALL SELECT topic, key, seq FROM outbox WHERE status = 'pending' AND next_attempt_at > %(now)s"
            ") w GROUP BY topic, key"
        )
        self.cur.execute(
            f"WITH blocked AS MATERIALIZED ({blocked}), c AS ({query}) UPDATE outbox SET claimed_by = %(owner)s, claimed_until = %(until)s"
            f" FROM c WHERE outbox.seq = c.picked RETURNING {OUTBOX_COLUMNS}",
            params,
        )
        rows = self.cur.fetchall()
        rows.sort(key=lambda r: r[0])
        return [OutboxMessage(*r) for r in rows]

    def claimers(self, now: datetime) -> list[str]:
        self.cur.execute(Q.outbox_claimers, (now,))
        return [r[0] for r in self.cur.fetchall()]

    def renew(self, owner: str, seqs: Sequence[int], until: datetime) -> int:
        self.cur.execute(
            "UPDATE outbox SET claimed_until = %s WHERE seq = ANY(%s) AND claimed_by = %s AND status = 'pending'",
            (until, list(seqs), owner),
        )
        return self.cur.rowcount

    def release(self, owner: str, seqs: Sequence[int] | None = None, error: str | None = None) -> int:
        query = Q.release_outbox
        if seqs is None:
            self.cur.execute(query, (error, owner))
        else:
            self.cur.execute(query + " AND seq = ANY(%s)", (error, owner, list(seqs)))
        return self.cur.rowcount

    def mark_delivered(self, seqs: Sequence[int], now: datetime, owner: str | None = None) -> int:
        query = (
            "UPDATE outbox SET status = 'delivered', delivered_at = %s, attempts = attempts + 1,"
            " claimed_by = NULL, claimed_until = NULL WHERE seq = ANY(%s::bigint[]) AND status = 'pending'"
        )
        # The batch's row numbers as one array literal: the driver adapts a list of ints
        # element by element, about 1 µs of client CPU per message.
        array = "{" + ",".join(str(int(s)) for s in seqs) + "}"
        if owner is None:
            self.cur.execute(query, (now, array))
        else:
            self.cur.execute(query + " AND claimed_by = %s", (now, array, owner))
        return self.cur.rowcount

    def count_due(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        query = Q.count_due_outbox
        params: list[Any] = [now]
        if topics:
            query += " AND topic = ANY(%s)"
            params.append(list(topics))
        self.cur.execute(query, params)
        row = self.cur.fetchone()
        return int(row[0]) if row else 0

    def mark_failed(self, owner: str, failures: Sequence[OutboxFailure]) -> int:
        done = 0
        for f in failures:
            self.cur.execute(
                Q.mark_failed,
                ("dead" if f.dead else "pending", f.attempts, f.next_attempt_at, f.error, f.seq, owner),
            )
            done += self.cur.rowcount
        return done

    def backlog(self, now: datetime) -> tuple[int, int, int, datetime | None, int]:
        self.cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= %s), min(created_at) FROM outbox"
            " WHERE status = 'pending'",
            (now,),
        )
        pending = self.cur.fetchone()
        assert pending is not None
        self.cur.execute(Q.dead_outbox)
        dead = self.cur.fetchone()
        self.cur.execute(Q.top_outbox)
        top = self.cur.fetchone()
        assert dead is not None and top is not None
        return int(pending[0]), int(pending[1]), int(dead[0]), pending[2], int(top[0])

    def summary(self, now: datetime) -> list[tuple[str, str, int, int, datetime | None]]:
        self.cur.execute(
            "SELECT topic, status, count(*), count(*) FILTER (WHERE next_attempt_at <= %s), min(created_at)"
            " FROM outbox GROUP BY topic, status ORDER BY topic, status",
            (now,),
        )
        return [tuple(r) for r in self.cur.fetchall()]  # type: ignore[misc]

    def select(
        self,
        status: str | None = None,
        topic: str | None = None,
        limit: int | None = None,
        key: str | None = None,
    ) -> list[OutboxMessage]:
        self.cur.execute(*Q.outbox_listing(status, topic, key, limit))
        return [OutboxMessage(*r) for r in self.cur.fetchall()]

    def get(self, ident: str) -> OutboxMessage | None:
        if ident.isdigit():
            self.cur.execute(Q.outbox_by_seq, (int(ident),))
        else:
            self.cur.execute(Q.outbox_by_id, (ident,))
        row = self.cur.fetchone()
        return None if row is None else OutboxMessage(*row)

    def requeue(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        if seq is not None:
            self.cur.execute(Q.requeue_outbox, (now, seq))
        elif dead:
            self.cur.execute(Q.requeue_dead_outbox, (now,))
        else:
            return 0
        return self.cur.rowcount

    def purge(self, statuses: Sequence[str], before: datetime) -> int:
        self.cur.execute(
            "DELETE FROM outbox WHERE status = ANY(%s) AND coalesce(delivered_at, created_at) < %s",
            (list(statuses), before),
        )
        return self.cur.rowcount
