"""Appending and reading events in a transaction (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import DuplicateEventError
from ..base import (
    ANY,
    EXISTS,
    NO_STREAM,
    EventRow,
    ExpectedVersion,
    FoldRow,
    StoredEvent,
    StreamBusy,
    Transaction,
    check_expected,
)
from ..statements import POSTGRES as Q
from ..statements import split_snapshot
from .commands import PostgresCommands, PostgresSnapshots
from .journal import PostgresJournal
from .outbox import PostgresOutbox
from .prepared import NOTIFY_ALONE, StoreConnection, literal
from .read_models import PostgresReadModels
from .sagas import PostgresSagas
from .sql import _APPEND_MANY, _APPEND_ONE, _CONFLICTS, _EVENT_COLUMNS, _conflict, _event
from .tracking import PostgresTracking

if TYPE_CHECKING:
    from .store import PostgresStore


_NO_LIMIT = 2**62
# Per-stream locks (two-key form: schema tag, hash of the stream id), held to commit:
# appends to one stream queue, so the head an append reads is the one it inserts after.
# Distinct streams sharing a hash only queue too.
_STREAM_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_TRY_STREAM_LOCK = "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))"

# Gap-free reading without serialising writers. Identity values are handed out at INSERT
# and become visible at COMMIT, in any order, so a reader following global_position must
# not read past a position that a transaction still in flight may hold. Each appending
# transaction therefore first *registers*: it takes a shared advisory lock whose key
# carries k, the identity's last value at that moment (every position it allocates later
# is above k). Registrations are visible to everyone at once in pg_locks, and go with the
# transaction (commit, rollback, a crashed client). A reader takes the bound
#   B = min(the identity's last value, read first; every registered k, read after that)
# and reads `global_position <= B` in a later statement. That is safe: a position p <= B
# was allocated before the identity was read, so its writer had registered before pg_locks
# was read; it was then either still registered (B <= k < p) or finished, and a
# transaction's locks are released only after its commit is visible to new snapshots.
# A lock key is bit 62 (set), 15 bits of schema tag, then k in the low 47 bits.
_SEQUENCE_LAST = "(SELECT last_value - (NOT is_called)::int FROM events_global_position_seq)"


def _bound_sql(tag: int) -> str:
    # The pg_locks subquery refers to the sequence's row, so it runs after that row is read.
    return (
        "(SELECT least(s.l, (SELECT min(((l.classid::bigint & 32767) << 32) | l.objid::bigint) FROM pg_locks l"
        f" WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.classid::bigint >> 15 = {tag}"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" AND s.l IS NOT NULL)) FROM {_SEQUENCE_LAST} AS s(l))"
    )


def _head_range(expected: ExpectedVersion) -> tuple[int, int]:
    """The heads `expected` accepts, as an inclusive range (what check_expected tests)."""
    if expected == ANY:
        return 0, _NO_LIMIT
    if expected == NO_STREAM:
        return 0, 0
    if expected == EXISTS:
        return 1, _NO_LIMIT
    return expected, expected  # type: ignore[return-value]


def _stream_range(
    stream_id: str, from_version: int, to_version: int | None, as_of: datetime | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a stream read from `from_version` on."""
    where, params = Q.stream_from, [stream_id, from_version]
    if to_version is not None:
        where += Q.stream_to
        params.append(to_version)
    if as_of is not None:
        where += Q.stream_as_of
        params.append(as_of)
    return where, params


class PostgresTransaction(Transaction):
    def __init__(
        self,
        conn: StoreConnection,
        store: PostgresStore,
        registered: bool = False,
        fast: bool = False,
    ) -> None:
        self.conn = conn
        self.store = store
        # `fast`: BEGIN's round trip ran a prepared statement (see prepared.py).
        self.cur = conn.cursor_for(fast)
        self._registered = registered
        # Streams this transaction holds (their lock is until commit, or until the
        # savepoint it was taken in rolls back).
        self._streams: set[str] = set()
        self._all_streams = False  # lock_all_streams() was called
        self.nowait = False
        self.appended = False  # listeners get a NOTIFY after the commit
        self.one_shot = False  # the transaction is one append, begun and ended with it
        self.savepoints = 0  # open savepoints (a group's commands)

    @property
    def commands(self) -> PostgresCommands:
        return PostgresCommands(self.cur, self.store)

    @property
    def snapshots(self) -> PostgresSnapshots:
        return PostgresSnapshots(self.cur, self.store)

    @property
    def outbox(self) -> PostgresOutbox:
        return PostgresOutbox(self.cur, self.store)

    @property
    def sagas(self) -> PostgresSagas:
        return PostgresSagas(self.cur, self.store)

    @property
    def journal(self) -> PostgresJournal:
        return PostgresJournal(self.cur, self.store)

    @property
    def tracking(self) -> PostgresTracking:
        return PostgresTracking(self.cur, self.store.head_sql)

    @property
    def read_models(self) -> PostgresReadModels:
        return PostgresReadModels(self.cur)

    def _lock_for_append(self) -> None:
        # Register before allocating any position (see _bound_sql).
        if not self._registered:
            self.cur.execute(self.store.register_sql)
            self._registered = True

    def lock_stream(self, stream_id: str) -> None:
        self._lock_for_append()
        if stream_id in self._streams or self._all_streams:
            return
        if self.nowait:
            self.cur.execute(_TRY_STREAM_LOCK, (self.store.stream_tag, stream_id))
            if not self.cur.fetchone()[0]:  # type: ignore[index]
                raise StreamBusy(stream_id)
        else:
            self.cur.execute(_STREAM_LOCK, (self.store.stream_tag, stream_id))
        self._streams.add(stream_id)

    def lock_all_streams(self) -> None:
        # Advisory locks per stream would fill the server's lock table on a large import;
        # this one lock makes every other appender wait for the commit instead.
        self._lock_for_append()
        if not self._all_streams:
            self.cur.execute("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
            self._all_streams = True

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        streams = set(self._streams)
        self.cur.execute("SAVEPOINT cqrsctl_sp")
        self.savepoints += 1
        try:
            yield
        except BaseException as exc:
            if not self.conn.broken:
                self.cur.execute("ROLLBACK TO SAVEPOINT cqrsctl_sp; RELEASE SAVEPOINT cqrsctl_sp")
            # Locks taken under a savepoint go with its rollback.
            self._streams = streams
            if isinstance(exc, _CONFLICTS):  # the whole transaction has to go, not the savepoint
                raise _conflict(exc) from None
            raise
        finally:
            self.savepoints -= 1
        self.cur.execute("RELEASE SAVEPOINT cqrsctl_sp")

    def _stream_version(self, stream_id: str) -> int:
        self.cur.execute(Q.stream_version, (stream_id,))
        row = self.cur.fetchone()
        return (row[0] or 0) if row else 0

    stream_version = _stream_version

    def _events_by_id(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        self.cur.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ANY(%s)", (list(event_ids),))
        return list(map(_event, self.cur.fetchall()))

    def _insert_at_head(
        self, stream_id: str, expected: ExpectedVersion, rows: list[EventRow]
    ) -> tuple[int, list[int]]:
        # One statement reads the head, checks it and inserts (nothing when the check fails).
        self._lock_for_append()
        lo, hi = _head_range(expected)
        try:
            # A group's commands (in savepoints) repeat one parameterised append, which the
            # driver prepares after a few uses: binding costs its client less than literals.
            if len(rows) == 1 and self.cur.fast and not self.savepoints:
                head, positions = self._append_one(stream_id, rows[0], lo, hi)
            else:
                head, positions = self._append_rows(stream_id, rows, lo, hi)
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateEventError(
                f"append rejected by a uniqueness rule: {exc.diag.message_detail}"
            ) from None
        check_expected(stream_id, expected, head)
        self.appended = True
        return head, positions

    def _append_rows(self, stream_id: str, rows: list[EventRow], lo: int, hi: int) -> tuple[int, list[int]]:
        first = rows[0]
        params: dict[str, Any] = {
            "s": stream_id, "c": first[5], "r": first[8], "lo": lo, "hi": hi,
        }  # fmt: skip
        if len(rows) == 1:
            query = _APPEND_ONE
            params.update(i=first[2], t=first[3], sv=first[4], d=first[6], m=first[7])
        else:
            query = _APPEND_MANY
            params.update(
                i=[r[2] for r in rows], t=[r[3] for r in rows], sv=[r[4] for r in rows],
                d=[r[6] for r in rows], m=[r[7] for r in rows],
            )  # fmt: skip
        if stream_id in self._streams or self.nowait:
            self.lock_stream(stream_id)
            self.cur.execute(query, params)
            return self.cur.fetchone()  # type: ignore[return-value]
        return self._lock_and_append(stream_id, query, params)

    def _lock_and_append(self, stream_id: str, query: str, params: dict[str, Any]) -> tuple[int, list[int]]:
        """The stream's lock, then the append in a statement of its own (whose snapshot,
        taken once the lock is held, sees every earlier append to the stream), in one round
        trip. `one_shot` (a transaction that is only this append, see PostgresStore.append):
        BEGIN and the registration go before them and COMMIT and the wake-up after them, in
        the same round trip: the statements and their order are those of docs/ordering.md,
        only nobody waits between them."""
        append = self.conn.cursor() if self.one_shot else self.cur
        commit = self.conn.cursor() if self.one_shot else None
        try:
            with self.conn.pipeline():
                if self.one_shot:
                    self.cur.execute("BEGIN")
                    self.cur.execute(self.store.register_sql)
                self.cur.execute(_STREAM_LOCK, (self.store.stream_tag, stream_id))
                append.execute(query, params)
                if commit is not None:
                    commit.execute("COMMIT")
                    for statement in self.store.notify_statements:
                        self.cur.execute(statement)
        except psycopg.Error:
            if commit is None or commit.statusmessage != "COMMIT":
                raise
            # Committed; only the wake-up failed (a listener then waits one poll interval).
            if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                self.conn.execute("ROLLBACK")
        self._streams.add(stream_id)
        return append.fetchone()  # type: ignore[return-value]

    def _append_one(self, stream_id: str, row: EventRow, lo: int, hi: int) -> tuple[int, list[int]]:
        """One event through the statements prepared on the connection (prepared.py), its
        values as literals, in one query of the simple protocol: the lock (unless held) and
        the append, in that order as in `_lock_and_append`."""
        stream = literal(stream_id)
        append = (
            f"EXECUTE cqrsctl_append_one({stream}, {literal(row[5])}, '{row[8].isoformat()}', {int(lo)},"
            f" {int(hi)}, {literal(row[2])}, {literal(row[3])}, {int(row[4])}, {literal(row[6])},"
            f" {literal(row[7])})"
        )
        if self.one_shot:
            return self._append_in_one_query(stream_id, stream, append, row[2])
        skip = 0
        if stream_id in self._streams or self._all_streams:
            pass
        elif self.nowait:
            self.lock_stream(stream_id)
        else:
            append, skip = f"EXECUTE cqrsctl_lock({stream}); {append}", 1
        self.cur.run(append)
        for _ in range(skip):
            self.cur.nextset()
        self._streams.add(stream_id)
        return self.cur.fetchone()  # type: ignore[return-value]

    def _append_in_one_query(
        self, stream_id: str, stream: str, append: str, event_id: str, again: bool = True
    ) -> tuple[int, list[int]]:
        """`_append_one` as a whole transaction: the registration and the lock, the append,
        COMMIT, then the wake-up, in one query. Its statements before COMMIT form one
        implicit transaction (no BEGIN), and so does the wake-up after it."""
        try:
            self.cur.run(f"EXECUTE cqrsctl_register_lock({stream}); {append}; COMMIT; {NOTIFY_ALONE}")
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            if again and isinstance(exc, psycopg.errors.InvalidSqlStatementName):
                self.conn.prepared = False  # deallocated unnoticed (prepared.py): nothing ran
                self.store.prepared.ensure(self.conn)
                return self._append_in_one_query(stream_id, stream, append, event_id, False)
            # Failed in the append's transaction, or (after its COMMIT) in the wake-up's.
            found = self.conn.execute(
                "SELECT stream_version, global_position FROM events WHERE event_id = %s", (event_id,)
            ).fetchone()
            if found is None:
                raise
            self._streams.add(stream_id)
            return found[0] - 1, [found[1]]
        self.cur.nextset()  # the registration and the lock: then the append's row
        self._streams.add(stream_id)
        return self.cur.fetchone()  # type: ignore[return-value]

    def _insert_events(self, rows: list[EventRow]) -> list[int]:
        insert = (
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, category,"
            " data, metadata, recorded_at)"
        )
        try:
            if len(rows) == 1:
                self.cur.execute(
                    insert
                    + " VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s) RETURNING global_position",
                    rows[0],
                )
                positions = [self.cur.fetchone()[0]]  # type: ignore[index]
            else:
                cols = list(zip(*rows, strict=True))
                self.cur.execute(
                    insert + " SELECT s, v, i, t, sv, c, d::jsonb, m::jsonb, r FROM unnest("
                    "%b::text[], %b::bigint[], %b::text[], %b::text[], %b::int[], %b::text[],"
                    " %b::text[], %b::text[], %b::timestamptz[]) WITH ORDINALITY AS x(s, v, i, t, sv, c, d, m, r, o)"
                    " ORDER BY o RETURNING global_position",
                    [list(c) for c in cols],
                )
                positions = sorted(r[0] for r in self.cur.fetchall())
            self.appended = True
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateEventError(
                f"append rejected by a uniqueness rule: {exc.diag.message_detail}"
            ) from None
        return positions

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> list[StoredEvent]:
        where, params = _stream_range(stream_id, from_version, to_version, as_of)
        query = f"{Q.read_stream}{where} ORDER BY stream_version"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        self.cur.execute(query, params)
        return list(map(_event, self.cur.fetchall()))

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        query = Q.read_all
        params: list[Any] = [after]
        if categories:
            query += " AND category = ANY(%s)"
            params.append(list(categories))
        if types:
            query += " AND event_type = ANY(%s)"
            params.append(list(types))
        query += " AND global_position <= %s ORDER BY global_position LIMIT %s"
        # The bound first, the page in a later statement (see _bound_sql).
        self.cur.execute(self.store.bound_sql)
        bound = self.cur.fetchone()[0]  # type: ignore[index]
        if bound is None or bound <= after:
            return []
        self.cur.execute(query, [*params, bound, limit])
        return list(map(_event, self.cur.fetchall()))

    def read_stream_data(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
    ) -> list[FoldRow]:
        where, params = _stream_range(stream_id, from_version, to_version, as_of)
        self.cur.execute(f"{Q.read_stream_data}{where} ORDER BY stream_version", params, binary=True)
        return self.cur.fetchall()

    def read_from_snapshot(
        self, stream_id: str, schema_version: str, to_version: int | None = None
    ) -> tuple[int, Any, list[FoldRow]]:
        params = Q.snapshot_and_tail_params(stream_id, schema_version, to_version)
        self.cur.execute(Q.snapshot_and_tail, params, binary=True)
        return split_snapshot(self.cur.fetchall())
