"""The outbox (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from ..base import OUTBOX_COLUMNS, Lease, NewMessage, Outbox, OutboxFailure, OutboxMessage, dumps
from ..statements import POSTGRES as Q

if TYPE_CHECKING:
    from .store import PostgresStore


def _array(seqs: Iterable[int]) -> str:
    """Row numbers as one array literal: the driver adapts a list of ints element by
    element, about 1 µs of client CPU per message."""
    return "{" + ",".join(str(int(s)) for s in seqs) + "}"


def _message(r: tuple[Any, ...]) -> OutboxMessage:
    return OutboxMessage(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], None, None, r[11], r[12]
    )


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
        # Claims take turns under an advisory lock: the "earlier message of this key is
        # leased" test reads committed leases, so a claim still in flight elsewhere would be
        # invisible to it, and two claimers could split one key between them. Claims are
        # short, so serialising them costs little.
        # The planner settings pin the plan that stops after `limit` rows: walk the pending
        # index in seq order. Without table statistics it would sort every pending row.
        # (No JIT: a disabled plan's cost would make the server compile the query.)
        self.cur.execute(
            "SELECT pg_advisory_xact_lock(%s), set_config('enable_sort', 'off', true),"
            " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true),"
            " set_config('jit', 'off', true)",
            (self.store.outbox_lock,),
        )
        leases, expired = self._held_and_expired(now)
        leased = _array(s for lease in leases for s in lease.seqs)
        # Order per key: a message waits while an earlier pending one of its key is leased
        # or backing off. Those few rows are found first (by the leases' seqs, by due
        # time), then the candidates are read in seq order past them.
        query = (
            f"SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE o.status = 'pending' AND o.next_attempt_at <= %(now)s"
            " AND o.seq <> ALL(%(leased)s::bigint[])"
            " AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.topic = o.topic AND b.key = o.key AND b.first < o.seq)"
        )
        params: dict[str, Any] = {"now": now, "limit": limit, "leased": leased}
        if topics:
            query += " AND o.topic = ANY(%(topics)s)"
            params["topics"] = list(topics)
        blocked = (
            "SELECT topic, key, min(seq) AS first FROM ("
            " SELECT topic, key, seq FROM outbox WHERE seq = ANY(%(leased)s::bigint[]) AND status = 'pending'"
            " UNION ALL SELECT topic, key, seq FROM outbox WHERE status = 'pending' AND next_attempt_at > %(now)s"
            ") w GROUP BY topic, key"
        )
        self.cur.execute(
            f"WITH blocked AS MATERIALIZED ({blocked}) {query} ORDER BY o.seq LIMIT %(limit)s", params
        )
        rows = self.cur.fetchall()
        if not rows:
            return []
        return self._claimed([_message(r) for r in rows], expired, owner, until)

    def _held_and_expired(self, now: datetime) -> tuple[list[Lease], list[Lease]]:
        """The leases that hold their messages at `now`, and those that ran out, locked.
        Messages are taken over only from leases locked here: one whose holder is recording
        right now stays its holder's (its messages still count as leased)."""
        leases = self._leases()
        expired = [lease for lease in leases if lease.until < now]
        if not expired:
            return leases, []
        taken = self._leases(lock=True, among=[lease.lease_id for lease in expired])
        ids = {lease.lease_id for lease in taken}
        return [lease for lease in leases if lease.lease_id not in ids], taken

    def _leases(
        self, owner: str | None = None, lock: bool = False, among: Sequence[int] | None = None
    ) -> list[Lease]:
        query = Q.outbox_leases
        params: list[Any] = []
        if owner is not None:
            query += " WHERE owner = %s"
            params.append(owner)
        elif among is not None:
            query += " WHERE lease_id = ANY(%s)"
            params.append(list(among))
        if among is not None:
            # Only the leases no one else holds locked (see claim).
            query += " FOR UPDATE SKIP LOCKED"
        elif lock:
            query += " FOR UPDATE"
        self.cur.execute(query, params)
        return [Lease(r[0], r[1], r[2], orjson.loads(r[3])) for r in self.cur.fetchall()]

    def _add_lease(self, owner: str, until: datetime, seqs: Sequence[int]) -> None:
        self.cur.execute(Q.add_outbox_lease, (owner, until, orjson.dumps(seqs).decode()))

    def _rewrite_leases(self, shrunk: Sequence[Lease], emptied: Sequence[int]) -> None:
        if shrunk:
            self.cur.executemany(
                Q.set_outbox_lease_seqs,
                [(orjson.dumps(lease.seqs).decode(), lease.lease_id) for lease in shrunk],
            )
        if emptied:
            self.cur.execute(
                "DELETE FROM outbox_leases WHERE lease_id = ANY(%s::bigint[])", (_array(emptied),)
            )

    def _set_error(self, seqs: Sequence[int], error: str) -> None:
        self.cur.execute(
            "UPDATE outbox SET last_error = %s WHERE seq = ANY(%s::bigint[]) AND status = 'pending'",
            (error, _array(seqs)),
        )

    def _delivered(self, seqs: Sequence[int], now: datetime) -> int:
        self.cur.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = %s, attempts = attempts + 1"
            " WHERE seq = ANY(%s::bigint[]) AND status = 'pending'",
            (now, _array(seqs)),
        )
        return self.cur.rowcount

    def _failed(self, failures: Sequence[OutboxFailure]) -> int:
        done = 0
        for f in failures:
            self.cur.execute(
                Q.mark_failed,
                ("dead" if f.dead else "pending", f.attempts, f.next_attempt_at, f.error, f.seq),
            )
            done += self.cur.rowcount
        return done

    def count_due(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        query = Q.count_due_outbox
        params: list[Any] = [now]
        if topics:
            query += " AND topic = ANY(%s)"
            params.append(list(topics))
        self.cur.execute(query, params)
        row = self.cur.fetchone()
        return int(row[0]) if row else 0

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
        return self._show_leases([_message(r) for r in self.cur.fetchall()])

    def get(self, ident: str) -> OutboxMessage | None:
        if ident.isdigit():
            self.cur.execute(Q.outbox_by_seq, (int(ident),))
        else:
            self.cur.execute(Q.outbox_by_id, (ident,))
        row = self.cur.fetchone()
        return None if row is None else self._show_leases([_message(row)])[0]

    def requeue(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        if seq is not None:
            self._unlease(None, [seq])
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
