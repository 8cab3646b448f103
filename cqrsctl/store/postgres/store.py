"""PostgreSQL backend (psycopg 3 + psycopg-pool).

Durability: a commit returns after the WAL is flushed (with the server's default
`synchronous_commit = on`), so it survives a crash of the server or the machine.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import DatabaseError, NotFoundError, UsageError
from ...redaction import redact, scrub
from ..base import (
    ANY,
    CORE_COLUMNS,
    SCHEMA_VERSION,
    AppendResult,
    ExpectedVersion,
    JournalEntry,
    NewEvent,
    Store,
    StreamInfo,
)
from .events import _SEQUENCE_LAST, PostgresTransaction, _bound_sql
from .prepared import NOTIFY, Prepared, StoreConnection
from .schema import _SCHEMA_TABLE, MIGRATIONS
from .sql import _CONFLICTS, _IDENT, _conflict, _lock_key
from .wakeups import Listener


def parse_postgres_url(url: str) -> tuple[str, str]:
    """Split our `?schema=` option off a libpq URL: (conninfo, schema)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"not a postgresql URL: {redact(url)}")
    query = parse_qsl(parts.query)
    schema = "public"
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _IDENT.match(schema):
        raise UsageError(f"invalid schema name {schema!r}: letters, digits and _ only")
    if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
        raise UsageError(f"schema {schema!r} belongs to PostgreSQL itself: name a schema of your own")
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    return conninfo, schema


class PostgresStore(Store):
    backend = "postgres"
    # NOTIFY wakes followers at once; this is only how long a lost wake-up costs them.
    poll_interval = 1.0

    def __init__(
        self, url: str, *, migrate: bool = True, max_connections: int = 4, connect_timeout: float = 10
    ) -> None:
        self.url = url
        self.conninfo, self.schema = parse_postgres_url(url)
        tag = (1 << 15) | (zlib.crc32(f"cqrsctl.appenders.{self.schema}".encode()) & 0x7FFF)
        register = f"pg_advisory_xact_lock_shared({tag << 47} | {_SEQUENCE_LAST})"
        self.register_sql = f"SELECT {register}"
        bound = _bound_sql(tag)
        self.bound_sql = f"SELECT {bound}"
        # The head a follower may read up to: in the statement that computes the bound, the
        # highest position at most B that this statement's snapshot sees (maybe lower than
        # what a later statement sees below B, never higher).
        self.head_sql = (
            f"(SELECT coalesce(max(global_position), 0) FROM events WHERE global_position <= {bound})"
        )
        self.stream_tag = _lock_key(f"cqrsctl.stream.{self.schema}")
        self.outbox_lock = _lock_key(f"cqrsctl.outbox.{self.schema}")
        self.channel = f"cqrsctl_{self.schema}"[:63]
        self.notify_sql = (
            f"BEGIN; SET LOCAL synchronous_commit TO off; SELECT pg_notify('{self.channel}', ''); COMMIT"
        )
        self.notify_statements = tuple(self.notify_sql.split("; "))  # for a pipeline
        self.prepared = Prepared(register, self.stream_tag, self.channel)
        self._check_connect(connect_timeout)
        self.pool: ConnectionPool[StoreConnection] = ConnectionPool(
            self.conninfo,
            connection_class=StoreConnection,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
            name="cqrsctl",
        )
        self._spare: StoreConnection | None = None
        self._spare_lock = threading.Lock()
        self._keeps_spare = max_connections > 1
        self._spare_wanted = False  # another thread found the spare taken
        self.pool.open(wait=False)
        try:
            self.pool.wait(timeout=connect_timeout)
        except PoolTimeout:
            self.pool.close()
            raise DatabaseError(f"cannot connect to {redact(url)}: timed out") from None
        if migrate:
            self.migrate()

    def _check_connect(self, timeout: float) -> None:
        # One direct attempt first, so a bad URL fails fast with the server's own reason.
        try:
            psycopg.connect(self.conninfo, connect_timeout=max(1, int(timeout))).close()
        except psycopg.Error as exc:
            reason = scrub(" ".join(str(exc).split()) or type(exc).__name__, self.url)
            raise DatabaseError(f"cannot connect to {redact(self.url)}: {reason}") from None

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        set_json_loads(orjson.loads, conn)
        conn.execute("SET timezone TO 'UTC'")
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    @contextmanager
    def _connection(self) -> Iterator[StoreConnection]:
        """A connection of the pool, lent without psycopg's `with conn:` (a commit or a
        rollback through the driver): whoever borrows it ends its transaction. The store
        keeps one connection out of the pool for whoever asks while it is free (a lock tried,
        never waited for; not with a pool of one, whose waiters it would starve): a checkout
        and return cost a tenth of a one-event append's client CPU. Once another thread finds
        it taken, it goes back to the pool, whose waiters are served in the order they came
        (kept, one thread would write twice as often as the others). A connection left in a
        transaction, or broken, goes back to the pool, which rolls it back or replaces it.
        The driver's connection errors, whoever meets them, come out as DatabaseError with
        the URL's secrets scrubbed."""
        try:
            if not (self._keeps_spare and self._spare_lock.acquire(blocking=False)):
                self._spare_wanted = True
                conn = self.pool.getconn()
                try:
                    yield conn
                finally:
                    self.pool.putconn(conn)
                return
            conn = self._spare or self.pool.getconn()
            try:
                yield conn
            finally:
                if (
                    self._spare_wanted
                    or conn.closed
                    or conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    self._spare, self._spare_wanted = None, False
                    self.pool.putconn(conn)
                else:
                    self._spare = conn
                self._spare_lock.release()
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"postgresql: {scrub(str(exc).strip(), self.url)}") from None

    def connect(self) -> psycopg.Connection[Any]:
        """A new, unpooled autocommit connection on this store's schema (for LISTEN)."""
        conn = psycopg.connect(self.conninfo, autocommit=True)
        self._configure(conn)
        return conn

    @contextmanager
    def transaction(
        self, *, appending: bool = False, deferred: bool = False
    ) -> Iterator[PostgresTransaction]:
        with self._connection() as conn:
            tx = PostgresTransaction(conn, self, registered=appending, fast=appending)
            # BEGIN and the registration in one round trip (the simple query protocol,
            # used when there are no parameters, takes both statements).
            if appending:
                self.prepared.begin_appending(conn, tx.cur)
            else:
                tx.cur.run("BEGIN")
            try:
                yield tx
            except BaseException as exc:
                if not conn.broken:
                    self.prepared.rollback(conn)
                if isinstance(exc, _CONFLICTS):
                    raise _conflict(exc) from None
                raise
            if not tx.appended:
                try:
                    tx.cur.run("COMMIT")
                except _CONFLICTS as exc:
                    raise _conflict(exc) from None
                return
            # Why the NOTIFY is not in the appending transaction: PostgreSQL holds one
            # database-wide lock from queueing a notification until the end of the commit,
            # WAL flush included, so notifying transactions commit one at a time. In a
            # transaction of its own, after the commit, with no flush to wait for (a lost
            # wake-up costs a listener one poll interval, never an event), the lock is brief.
            try:
                tx.cur.run(f"COMMIT; {NOTIFY if tx.cur.fast else self.notify_sql}")
            except _CONFLICTS as exc:
                raise _conflict(exc) from None  # the COMMIT failed: nothing was committed
            except psycopg.Error:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                    raise  # the COMMIT failed
                self.prepared.rollback(conn)  # only the wake-up failed

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion = ANY
    ) -> AppendResult:
        if any(e.event_id for e in events):  # ids given: look them up first (idempotency)
            return super().append(stream_id, events, expected)
        # The whole transaction in one round trip (see PostgresTransaction._lock_and_append).
        with self._connection() as conn:
            self.prepared.ensure(conn)
            tx = PostgresTransaction(conn, self, registered=True, fast=True)
            tx.one_shot = True
            try:
                return tx.append(stream_id, events, expected)
            except _CONFLICTS as exc:
                raise _conflict(exc) from None
            finally:
                if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.prepared.rollback(conn)

    @contextmanager
    def reader(self, *, consistent: bool = True, snapshot: bool = False) -> Iterator[PostgresTransaction]:
        if snapshot:
            with self._connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                try:
                    yield PostgresTransaction(conn, self)
                finally:
                    if not conn.broken:
                        self.prepared.rollback(conn)
            return
        if consistent:
            with self.transaction() as tx:
                yield tx
            return
        with self._connection() as conn:  # autocommit: each statement on its own
            yield PostgresTransaction(conn, self)

    @contextmanager
    def lazy_transaction(self) -> Iterator[PostgresTransaction]:
        with self._connection() as conn:
            conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
            try:
                yield PostgresTransaction(conn, self)
            except BaseException:
                if not conn.broken:
                    self.prepared.rollback(conn)
                raise
            conn.execute("COMMIT")

    def ddl(self) -> str:
        statements = [
            f"CREATE SCHEMA IF NOT EXISTS {self.schema}",
            f"SET search_path TO {self.schema}",
            _SCHEMA_TABLE,
        ]
        for version in sorted(MIGRATIONS):
            statements += MIGRATIONS[version]
        return ";\n\n".join(statements) + ";\n"

    def schema_version(self) -> int:
        with self.transaction() as tx:
            tx.cur.execute("SELECT to_regclass('cqrsctl_schema') IS NOT NULL")
            if not tx.cur.fetchone()[0]:  # type: ignore[index]
                return 0
            tx.cur.execute("SELECT coalesce(max(version), 0) FROM cqrsctl_schema")
            return tx.cur.fetchone()[0]  # type: ignore[index,no-any-return]

    def _apply_ddl(self, entry: JournalEntry, everything: bool) -> None:
        with self.transaction() as tx:
            # Concurrent first runs must not race each other through the DDL.
            tx.cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(f"cqrsctl.migrate.{self.schema}"),))
            tx.cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            tx.cur.execute(_SCHEMA_TABLE)
            tx.cur.execute("SELECT coalesce(max(version), 0) FROM cqrsctl_schema")
            current = tx.cur.fetchone()[0]  # type: ignore[index]
            if current >= SCHEMA_VERSION and not everything:
                return  # a concurrent first run did it while this one waited for the lock
            for version in sorted(MIGRATIONS):
                if version <= current and not everything:
                    continue
                for statement in MIGRATIONS[version]:
                    tx.cur.execute(statement)
                if version > current:
                    tx.cur.execute(
                        "INSERT INTO cqrsctl_schema (version, applied_at) VALUES (%s, now())", (version,)
                    )
            entry.result.setdefault("from_version", current)
            entry.result.setdefault("to_version", SCHEMA_VERSION)
            tx.journal.add(entry)

    def core_columns(self) -> dict[str, set[str]]:
        with self.reader() as tx:
            tx.cur.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = ANY(%s)",
                (self.schema, list(CORE_COLUMNS)),
            )
            found: dict[str, set[str]] = {}
            for table, column in tx.cur.fetchall():
                found.setdefault(table, set()).add(column)
            return found

    def durability(self) -> str:
        return "PostgreSQL: commits survive a server or machine crash (synchronous_commit as configured on the server)"

    def wakeups(self) -> Listener:
        return Listener(self)

    def guards(self) -> dict[str, bool]:
        names = [f"{t}_{g}" for t in ("events", "cqrsctl_journal") for g in ("append_only", "no_truncate")]
        with self.reader() as tx:
            tx.cur.execute(
                "SELECT t.tgname, t.tgenabled <> 'D' FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
                (self.schema,),
            )
            present = dict(tx.cur.fetchall())
        return {name: bool(present.get(name)) for name in names}

    def close(self) -> None:
        with self._spare_lock:
            if self._spare is not None:
                self.pool.putconn(self._spare)
                self._spare = None
        self.pool.close()

    def head(self) -> int:
        with self.reader() as tx:
            tx.cur.execute(f"SELECT {self.head_sql}")
            return tx.cur.fetchone()[0]  # type: ignore[index,no-any-return]

    def list_streams(self, category: str | None = None, limit: int | None = None) -> list[StreamInfo]:
        query = (
            "SELECT stream_id, min(category), max(stream_version), min(global_position), max(global_position),"
            " min(recorded_at), max(recorded_at) FROM events"
        )
        params: list[Any] = []
        if category:
            query += " WHERE category = %s"
            params.append(category)
        query += " GROUP BY stream_id ORDER BY min(global_position)"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        with self.reader() as tx:
            tx.cur.execute(query, params)
            return [StreamInfo(*r) for r in tx.cur.fetchall()]

    def counts(self) -> dict[str, int]:
        if self.schema_version() == 0:
            raise NotFoundError(f"store {redact(self.url)} is not initialised: run `cqrsctl init`")
        present = self.core_columns()
        tables = [t for t in CORE_COLUMNS if t in present and t != "cqrsctl_schema"]
        with self.reader() as tx:
            out = {}
            for t in tables:
                tx.cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                out[t] = tx.cur.fetchone()[0]  # type: ignore[index]
            return out
