"""7. Writer scaling: N writer processes (1, 2, 4, 8, 16) append one event per transaction,
each to a stream of its own, for `writer_ms` milliseconds; the figure is commits per second
over all of them.

- raw: each process INSERTs rows of the event shape (bench/raw.py) into an identity-keyed
  table, one autocommitted statement per event (PostgreSQL: one round trip; SQLite: its
  implicit transaction, waiting on the busy timeout for the write lock).
- cqrsctl: each process calls `store.append(stream, [event])` (expected version `any`):
  on PostgreSQL the writer registers, locks its stream, appends and commits (docs/ordering.md).

Processes are forked from the bench (no imports to pay), each opens its own connection,
and all start together; only commits that return inside the window count. SQLite runs at
synchronous=NORMAL (cqrsctl's default) for both: it has one writer at a time whatever N is.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from functools import partial
from typing import Any

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, needs_cqrsctl

WRITERS = (1, 2, 4, 8, 16)
START_TIMEOUT = 120.0


def _raw_writer(backend: str, target: dict[str, str], worker: int) -> Any:
    if backend == "postgres":
        import psycopg
        from psycopg import sql

        conn: Any = psycopg.connect(target["dsn"], autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(target["schema"])))
        cur = conn.cursor()
    else:
        import sqlite3

        conn = sqlite3.connect(target["path"], isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA synchronous = NORMAL")
        cur = conn.cursor()
    insert = rawdb.q(backend, rawdb.INSERT_EVENT)
    stream, version = f"Writer-{worker}", 0

    def append() -> None:
        nonlocal version
        version += 1
        cur.execute(insert, rawdb.event_row(backend, stream, version, "Written", f'{{"n": {version}}}'))

    return append


def _cqrsctl_writer(url: str, worker: int) -> Any:
    from cqrsctl import open_store
    from cqrsctl.store import NewEvent

    store = open_store(url, migrate=False)
    stream, n = f"Writer-{worker}", 0

    def append() -> None:
        nonlocal n
        n += 1
        store.append(stream, [NewEvent("Written", {"n": n})])

    return append


def _child(make: Any, worker: int, seconds: float, barrier: Any, counts: Any) -> None:
    try:
        append = make(worker)
        append()  # connected and warm: not counted
        barrier.wait(START_TIMEOUT)
        end = time.perf_counter() + seconds
        n = 0
        while True:
            append()
            if time.perf_counter() > end:
                break
            n += 1
        counts.put((worker, n))
    except BaseException as exc:  # the parent reports it
        counts.put((worker, f"{type(exc).__name__}: {exc}"))
    finally:
        counts.close()
        counts.join_thread()  # the count is in the pipe
        os._exit(0)  # no finalizers of what the bench process held when it forked


def writers(ctx: Ctx, kind: str, n: int) -> dict[str, float]:
    seconds = ctx.sizes["writer_ms"] / 1000
    backend = ctx.backend
    with ctx.fresh("NORMAL") as db:
        if kind == "raw":
            rawdb.create_schema(db.raw(), backend)
            target = {"dsn": db.dsn, "schema": db.schema, "path": str(db.path)}
            make: Any = partial(_raw_writer, backend, target)
        else:
            with needs_cqrsctl("writers"):
                from cqrsctl import open_store
            db.closing(open_store(db.cqrsctl_url())).close()  # create the schema once
            make = partial(_cqrsctl_writer, db.cqrsctl_url())
        fork = multiprocessing.get_context("fork")
        barrier, counts = fork.Barrier(n), fork.Queue()
        procs = [fork.Process(target=_child, args=(make, i, seconds, barrier, counts)) for i in range(n)]
        for p in procs:
            p.start()
        try:
            found = [counts.get(timeout=START_TIMEOUT + seconds) for _ in procs]
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        errors = [c for _, c in found if isinstance(c, str)]
        if errors:
            raise RuntimeError(f"a writer failed: {errors[0]}")
        total = sum(int(c) for _, c in found)
        stored = int(db.raw().execute("SELECT count(*) FROM events").fetchone()[0])
        if stored < total + n:
            raise RuntimeError(f"{total + n} commits reported, {stored} events stored")
    return {"rate": total / seconds}


MEASUREMENT = Measurement(
    name="writers",
    title="Writer scaling (N processes, one event per transaction, a stream each)",
    contenders={
        **{f"raw×{n}": partial(writers, kind="raw", n=n) for n in WRITERS},
        **{f"cqrsctl×{n}": partial(writers, kind="cqrsctl", n=n) for n in WRITERS},
    },
    rows=[
        Row(
            f"{n} writer{'s' if n > 1 else ''}, one event per commit",
            "rate",
            "commits/s",
            f"raw×{n}",
            None,
            f"cqrsctl×{n}",
        )
        for n in WRITERS
    ],  # fmt: skip
)
