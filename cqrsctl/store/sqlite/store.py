"""SQLite backend: one file, WAL, one writer at a time.

Durability: WAL with `synchronous=NORMAL` (the default) survives a crash of the
process but may lose the last commits on power loss or an OS crash;
`?synchronous=FULL` in the URL fsyncs every commit and survives both.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...errors import DatabaseError, NotFoundError, UsageError
from ..base import CORE_COLUMNS, SCHEMA_VERSION, JournalEntry, Store, StreamInfo, utcnow
from .events import SQLiteTransaction
from .schema import _SCHEMA_TABLE, MIGRATIONS
from .sql import _ts, utils
from .wakeups import Polling

_SYNC_MODES = {"off", "normal", "full", "extra"}


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """`sqlite:///rel.db`, `sqlite:////abs.db`, `sqlite:///:memory:` -> (path, options)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise UsageError(f"not a sqlite URL: {url}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc:
        path = parts.netloc + "/" + path
    if not path:
        raise UsageError(f"sqlite URL has no file path: {url} (use sqlite:///file.db)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, options


class _Turns:
    """A first-come, first-served lock for the writers of one database file in this process.

    SQLite's own busy handler wakes waiting writers at random (one thread wrote 36 times
    while another wrote once); taking turns here first serves them in the order they came.
    Re-entrant per thread, so a thread that opens a second store on the same file inside a
    write transaction still gets SQLite's own "locked" answer rather than waiting on itself.
    Writers in other processes still meet SQLite's busy handler. `first` puts a waiter at
    the head of the line (the checkpointer's last step, which all of them wait for anyway)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        # Each waiter blocks on a lock of its own, so a release wakes exactly the next one
        # (a condition's notify_all would wake them all to find out whose turn it is).
        self._waiting: deque[tuple[int, threading.Lock]] = deque()

    def acquire(self, first: bool = False) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._owner is None or self._owner == me:
                self._owner = me
                self._depth += 1
                return
            wake = threading.Lock()
            wake.acquire()
            (self._waiting.appendleft if first else self._waiting.append)((me, wake))
        try:
            wake.acquire()  # the previous holder hands the turn over, then releases this
        except BaseException:  # interrupted (KeyboardInterrupt): leave the line, or pass the turn on
            with self._lock:
                if (me, wake) in self._waiting:
                    self._waiting.remove((me, wake))
                    raise
            self.release()
            raise

    def try_acquire(self) -> bool:
        """The turn if nobody has it, else False at once."""
        with self._lock:
            if self._owner is not None:
                return False
            self._owner, self._depth = threading.get_ident(), 1
            return True

    def release(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth:
                return
            if not self._waiting:
                self._owner = None
                return
            self._owner, wake = self._waiting.popleft()
            self._depth = 1
        wake.release()


class _Checkpointer:
    """Copies the log (the -wal file) into the database file beside the writers, not in their turn.

    Left to SQLite, the commit that takes the log past 1,000 pages copies them and syncs both
    files inside its writer's turn while every other writer of the file waits: 18-20 ms on a
    virtual disk, against a 2 ms median write under 8 threads. Here one thread per file and
    process copies what is new every `EVERY` commits of this process, syncing the log and the
    database as it goes, while writers go on appending. The log can only start over once
    everything in it is copied with no commit in between, so past `RESTART` pages the thread
    copies the last pages in a writer's turn (a few ms) and the next writer starts the log
    over: in a moment when no writer has the turn, or, past twice that, ahead of those in
    line. The thread ends after a few idle seconds, and when the last store of the file in
    this process is closed (so that a closed store's files no longer change); SQLite's own
    checkpoint, raised to `SAFETY` pages, still bounds the log if the thread cannot keep up."""

    EVERY = 250  # commits between copies (about 1,000 pages of log for one-event commits)
    RESTART = 4000  # pages of log (16 MB at 4 KiB) from which it starts over when no writer waits
    SAFETY = 12_000  # wal_autocheckpoint of every connection of the store (past 2 x RESTART)
    IDLE = 3.0  # seconds without a wake-up before the thread ends

    def __init__(self, path: str, synchronous: str, turns: _Turns) -> None:
        self.path, self.synchronous, self.turns = path, synchronous, turns
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._commits = 0
        self._failed_at = -1e9

    def committed(self) -> None:
        with self._lock:  # also so that a thread that is ending cannot miss this wake-up
            self._commits += 1
            if self._commits < self.EVERY:
                return
            self._commits = 0
            self._wake.set()
            if self._thread is None and time.monotonic() - self._failed_at > self.IDLE:
                self._thread = threading.Thread(target=self._run, name="cqrsctl-checkpoint", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._stop.clear()

    def _run(self) -> None:
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")  # the syncs a checkpoint makes
            while True:
                if not self._wake.wait(self.IDLE):
                    with self._lock:
                        if not self._wake.is_set():
                            self._thread = None
                            return
                if self._stop.is_set():
                    return
                self._wake.clear()
                pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                if pages < self.RESTART:
                    continue
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # what came during the first copy
                if pages >= 2 * self.RESTART:
                    # Ahead of the writers in line: every one of them waits for this step
                    # anyway, and it has fewer pages to copy when none wrote in between.
                    self.turns.acquire(first=True)
                elif not self.turns.try_acquire():
                    continue  # writers are at it: start the log over in a lull, or at twice the mark
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    self.turns.release()
        except sqlite3.Error:  # the file went away, say: SQLite's own checkpoint takes over a while
            self._failed_at = time.monotonic()
        finally:
            with self._lock:  # however it ends, the next wake-up starts another
                if self._thread is threading.current_thread():
                    self._thread = None
            if conn is not None:
                conn.close()

    def forget(self) -> None:
        """In a forked child: the thread did not come along, and a lock may have been held."""
        self._lock, self._thread, self._commits = threading.Lock(), None, 0
        self._wake, self._stop = threading.Event(), threading.Event()


class _File:
    """What the open stores of one database file in this process share."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.path, self.turns = path, _Turns()
        # With synchronous=full or extra every commit syncs the log anyway, and a copy beside
        # the writers made each of their syncs wait for its own (one command per
        # transaction: 5-26 % fewer commits); SQLite's own checkpoint serves them better.
        copies = path != ":memory:" and synchronous in ("normal", "off")
        self.checkpointer = _Checkpointer(path, synchronous, self.turns) if copies else None
        self.stores = 0


_FILES: dict[str, _File] = {}
_FILES_LOCK = threading.Lock()


def _file(path: str, synchronous: str) -> _File:
    key = path if path == ":memory:" else str(Path(path).resolve())
    with _FILES_LOCK:
        if key not in _FILES:
            _FILES[key] = _File(key, synchronous)
        _FILES[key].stores += 1
        return _FILES[key]


def _forget_threads() -> None:
    for shared in _FILES.values():
        if shared.checkpointer is not None:
            shared.checkpointer.forget()


os.register_at_fork(after_in_child=_forget_threads)


def _closed(shared: _File) -> None:
    with _FILES_LOCK:
        shared.stores -= 1
        last = shared.stores == 0
        if last:  # the next store of the file starts afresh, with its own durability
            _FILES.pop(shared.path, None)
    if last and shared.checkpointer is not None:
        shared.checkpointer.stop()


class _WriteTransaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on any exception). A class, not a generator:
    it is entered once per dispatched command.

    `deferred`: begin as a reader (a snapshot that blocks no writer) and become the writer
    only at `SQLiteTracking.fence()`, so slow work before that (projection handlers) never
    holds the database's write lock."""

    __slots__ = ("store", "conn", "deferred", "turn")

    def __init__(self, store: SQLiteStore, deferred: bool = False) -> None:
        self.store, self.conn, self.deferred = store, store.conn, deferred
        self.turn = False

    def __enter__(self) -> SQLiteTransaction:
        conn = self.conn
        if self.deferred:
            conn.execute("BEGIN")
            return SQLiteTransaction(conn, self)
        self.take_turn()
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                self.store._retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as exc:
            self.give_turn()
            raise DatabaseError(f"sqlite: {exc}") from None
        return SQLiteTransaction(conn, self)

    def take_turn(self) -> None:
        self.store.turns.acquire()
        self.turn = True

    def give_turn(self) -> None:
        if self.turn:
            self.turn = False
            self.store.turns.release()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        conn = self.conn
        try:
            if exc_type is not None:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise DatabaseError(f"sqlite commit failed: {error}") from None
        finally:
            wrote = self.turn  # a deferred transaction that never became the writer wrote nothing
            self.give_turn()
        if wrote and self.store.checkpointer is not None:
            self.store.checkpointer.committed()


class _Reader:
    """A read transaction (BEGIN … COMMIT), or with `consistent` False none at all. A class,
    not a generator: a replay from a snapshot enters one per call, and a generator's
    context manager cost it a tenth of its time."""

    __slots__ = ("store", "conn", "consistent", "shared", "began")

    def __init__(self, store: SQLiteStore, consistent: bool) -> None:
        self.store, self.conn, self.consistent = store, store.conn, consistent
        self.shared = self.began = False

    def __enter__(self) -> SQLiteTransaction:
        conn = self.conn
        if conn.in_transaction:  # nested inside a write transaction: share it
            return SQLiteTransaction(conn)
        if self.store._shared is not None:  # one connection for every thread: one of them at a time
            self.store.turns.acquire()
            self.shared = True
        if self.consistent:
            try:
                conn.execute("BEGIN")  # a read transaction: one snapshot from its first read on
            except BaseException:
                self._release()
                raise
            self.began = True
        return SQLiteTransaction(conn)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not (self.began or self.shared):
            return
        try:
            if self.began:
                self.conn.execute("COMMIT")
        finally:
            self._release()

    def _release(self) -> None:
        if self.shared:
            self.shared = False
            self.store.turns.release()


class SQLiteStore(Store):
    """A store on one SQLite file. Safe to share between threads: each thread gets a
    connection of its own (an in-memory database keeps one for all, used by one thread at a
    time), and writers of this process take turns in the order they came (see _Turns)."""

    backend = "sqlite"
    # SQLite cannot notify: followers look again this often.
    poll_interval = 0.15

    def __init__(self, url: str, *, migrate: bool = True, create: bool = True) -> None:
        self.url = url
        self.path, options = parse_sqlite_url(url)
        unknown = set(options) - {"synchronous", "busy_timeout"}
        if unknown:
            raise UsageError(f"unknown sqlite URL option(s): {', '.join(sorted(unknown))}")
        self.synchronous = options.get("synchronous", "normal").lower()
        if self.synchronous not in _SYNC_MODES:
            raise UsageError(f"synchronous must be one of {', '.join(sorted(_SYNC_MODES))}")
        try:
            self.busy_timeout_ms = int(options.get("busy_timeout", "60000"))
        except ValueError:
            raise UsageError("busy_timeout must be a number of milliseconds") from None
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise DatabaseError(
                    f"cannot open sqlite database {self.path}: directory {parent} does not exist"
                )
            if not create and not Path(self.path).exists():
                raise DatabaseError(f"no store at {self.path}; run `cqrsctl init`")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        self._file: _File | None = _file(self.path, self.synchronous)
        self.turns, self.checkpointer = self._file.turns, self._file.checkpointer
        try:
            first = self._connect()
            if self.path == ":memory:":
                self._shared = first  # another connection would be another, empty, database
            if migrate:
                self.migrate()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
            )
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal" and self.path != ":memory:":
                self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if self.checkpointer is not None:
                conn.execute(f"PRAGMA wal_autocheckpoint = {_Checkpointer.SAFETY}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot open sqlite database {self.path}: {exc}") from None
        self._local.conn = conn
        with self._all_lock:
            self._all.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        return conn if conn is not None else self._connect()

    def _retry_locked(self, fn: Any) -> Any:
        # The busy handler does not cover every path (switching journal mode, a
        # reader upgraded to writer); users must never see "database is locked".
        import time

        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def transaction(self, *, appending: bool = False, deferred: bool = False) -> _WriteTransaction:
        return _WriteTransaction(self, deferred)

    @contextmanager
    def lazy_transaction(self) -> Iterator[SQLiteTransaction]:
        # synchronous cannot change inside a transaction: around it, then. NORMAL in WAL
        # mode skips the fsync at commit; the next FULL commit or checkpoint syncs it.
        relax = self.synchronous in ("full", "extra") and not self.conn.in_transaction
        if relax:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self.transaction() as tx:
                yield tx
        finally:
            if relax:
                self.conn.execute(f"PRAGMA synchronous = {self.synchronous}")

    def reader(self, *, consistent: bool = True, snapshot: bool = False) -> _Reader | SQLiteTransaction:
        if consistent or snapshot or self._shared is not None:
            return _Reader(self, consistent or snapshot)
        # Nothing to begin, nor a turn to take: the transaction is its own context (a
        # replay from a snapshot enters a reader per call, and the _Reader cost it 5 %).
        return SQLiteTransaction(self.conn)

    def ddl(self) -> str:
        statements = [_SCHEMA_TABLE]
        for version in sorted(MIGRATIONS):
            statements += MIGRATIONS[version]
        return ";\n\n".join(statements) + ";\n"

    def schema_version(self) -> int:
        try:
            row = self.conn.execute("SELECT max(version) FROM cqrsctl_schema").fetchone()
        except sqlite3.OperationalError:
            return 0
        return row[0] or 0

    def _apply_ddl(self, entry: JournalEntry, everything: bool) -> None:
        with self.transaction() as tx:
            tx.conn.execute(_SCHEMA_TABLE)
            current = tx.conn.execute("SELECT coalesce(max(version), 0) FROM cqrsctl_schema").fetchone()[0]
            for version in sorted(MIGRATIONS):
                if version <= current and not everything:
                    continue
                for statement in MIGRATIONS[version]:
                    tx.conn.execute(statement)
                if version > current:
                    tx.conn.execute(
                        "INSERT INTO cqrsctl_schema (version, applied_at) VALUES (?, ?)",
                        (version, _ts(utcnow())),
                    )
            if everything or current < SCHEMA_VERSION:
                entry.result.setdefault("from_version", current)
                entry.result.setdefault("to_version", SCHEMA_VERSION)
                tx.journal.add(entry)

    def core_columns(self) -> dict[str, set[str]]:
        db = utils(self.conn)
        present = set(db.table_names())
        return {
            table: {c.name for c in db.table(table).columns} for table in CORE_COLUMNS if table in present
        }

    def durability(self) -> str:
        if self.synchronous in ("full", "extra"):
            return f"WAL, synchronous={self.synchronous}: commits survive process crash and power loss"
        return (
            f"WAL, synchronous={self.synchronous}: commits survive a process crash;"
            " the last ones may be lost on power loss"
        )

    def wakeups(self) -> Polling:
        return Polling()

    def guards(self) -> dict[str, bool]:
        names = [
            f"{table}_append_only_{op}"
            for table in ("events", "cqrsctl_journal")
            for op in ("update", "delete")
        ]
        present = {trigger.name for trigger in utils(self.conn).triggers}
        return {name: name in present for name in names}

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
            shared, self._file = self._file, None
        if shared is not None:  # first, so that the last connection closed folds the log in
            _closed(shared)
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def head(self) -> int:
        return self.conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()[0]

    def list_streams(self, category: str | None = None, limit: int | None = None) -> list[StreamInfo]:
        sql = (
            "SELECT stream_id, category, max(stream_version), min(global_position), max(global_position),"
            " min(recorded_at), max(recorded_at) FROM events"
        )
        params: list[Any] = []
        if category:
            sql += " WHERE category = ?"
            params.append(category)
        sql += " GROUP BY stream_id ORDER BY min(global_position)"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            StreamInfo(
                r[0], r[1], r[2], r[3], r[4], datetime.fromisoformat(r[5]), datetime.fromisoformat(r[6])
            )
            for r in self.conn.execute(sql, params)
        ]

    def counts(self) -> dict[str, int]:
        if self.schema_version() == 0:
            raise NotFoundError(f"store {self.path} is not initialised: run `cqrsctl init`")
        present = self.core_columns()
        tables = [t for t in CORE_COLUMNS if t in present and t != "cqrsctl_schema"]
        return {t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
