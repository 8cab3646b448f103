"""9. Shared store, 8 threads: 8 threads of one process share one store object and write
without pause for `writer_ms` milliseconds, one event per transaction, each to a stream of
its own. Every write's latency is recorded; the figures are its median, p99 and worst,
the worst over the median, and writes per second over all threads.

- raw: a connection per thread; SQLite `BEGIN IMMEDIATE`, INSERT, `COMMIT` (busy timeout
  60 s), PostgreSQL one autocommitted INSERT (bench/raw.py's event row).
- eventsourcing: one application shared by the threads; each thread triggers one event
  of its own aggregate and calls `app.save` per write.
- cqrsctl: one `open_store(url)`; per write `store.transaction()`, `stream_version`, and
  `append` with that expected version.

Each thread writes once untimed (its connection opened, its aggregate created), then all
start together. A full collection is done before the threads start, so that one falling
due on the bench's own objects does not stall every thread inside the window; the
collector stays on.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable
from decimal import Decimal

from .. import raw as rawdb
from ..core import Ctx, Measurement, durability_contenders, durability_rows, needs_cqrsctl
from .latency import percentile

THREADS = 8
START_TIMEOUT = 60.0
Write = Callable[[int], None]


def _measure(ctx: Ctx, writers: list[Write], stored: Callable[[], int]) -> dict[str, float]:
    """Runs `writers[i](n)` in thread i (n = 0 untimed, then 1, 2, ...) for `writer_ms`."""
    seconds = ctx.sizes["writer_ms"] / 1000
    latencies: list[list[float]] = [[] for _ in writers]
    errors: list[BaseException] = []
    start: list[float] = []
    barrier = threading.Barrier(len(writers), action=lambda: start.append(time.perf_counter()))

    def work(write: Write, mine: list[float]) -> None:
        try:
            write(0)
            barrier.wait(START_TIMEOUT)
            end, n = start[0] + seconds, 1
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                write(n)
                mine.append(time.perf_counter() - t0)
                n += 1
        except BaseException as exc:  # reported below; the others stop at the barrier
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=work, args=(w, mine)) for w, mine in zip(writers, latencies, strict=True)
    ]
    gc.collect()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start[0] if start else 0.0
    if errors:
        first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        raise RuntimeError(f"a writer failed: {first!r}")
    ms = sorted(x * 1000 for mine in latencies for x in mine)
    found, written = stored(), len(ms) + len(writers)
    if found != written:
        raise RuntimeError(f"{written} writes counted, {found} events stored")
    median = statistics.median(ms)
    worst = ms[-1]
    return {
        "median": median,
        "p99": percentile(ms, 99),
        "worst": worst,
        "spread": worst / median,
        "rate": len(ms) / elapsed,
    }


def raw(ctx: Ctx, synchronous: str | None = None) -> dict[str, float]:
    backend = ctx.backend
    insert = rawdb.q(backend, rawdb.INSERT_EVENT)
    with ctx.fresh(synchronous) as db:
        rawdb.create_schema(db.raw(), backend)

        def writer(i: int) -> Write:
            cur = db.raw().cursor()
            if backend == "sqlite":
                cur.execute("PRAGMA busy_timeout = 60000")

            def write(n: int) -> None:
                row = rawdb.event_row(backend, f"Thread-{i}", n + 1, "Written", f'{{"n": {n}}}')
                if backend == "postgres":
                    cur.execute(insert, row)
                else:
                    cur.execute("BEGIN IMMEDIATE")
                    cur.execute(insert, row)
                    cur.execute("COMMIT")

            return write

        def stored() -> int:
            return int(db.raw().execute("SELECT count(*) FROM events").fetchone()[0])

        return _measure(ctx, [writer(i) for i in range(THREADS)], stored)


def eventsourcing(ctx: Ctx) -> dict[str, float]:
    from ..domain_es import Account, Bank

    with ctx.fresh() as db:
        app = db.closing(Bank(env=db.es_env()))

        def writer(i: int) -> Write:
            account = Account(owner=f"thread-{i}")

            def write(n: int) -> None:
                if n:  # n = 0 saves the aggregate's creation
                    account.deposit(Decimal(1))
                app.save(account)

            return write

        return _measure(
            ctx, [writer(i) for i in range(THREADS)], lambda: app.recorder.max_notification_id() or 0
        )


def cqrsctl(ctx: Ctx, synchronous: str | None = None) -> dict[str, float]:
    with needs_cqrsctl("shared"):
        from cqrsctl import open_store
        from cqrsctl.store import NewEvent

    with ctx.fresh(synchronous) as db:
        store = db.closing(open_store(db.cqrsctl_url()))

        def writer(i: int) -> Write:
            stream = f"Thread-{i}"

            def write(n: int) -> None:
                with store.transaction() as tx:
                    v = tx.stream_version(stream)
                    tx.append(stream, [NewEvent("Written", {"n": n})], expected=v)

            return write

        return _measure(ctx, [writer(i) for i in range(THREADS)], store.head)


MEASUREMENT = Measurement(
    name="shared",
    title=f"Shared store, {THREADS} threads (one process, one event per transaction, a stream each)",
    contenders=durability_contenders(raw, eventsourcing, cqrsctl),
    rows=[
        row
        for metric, label, unit, higher in [
            ("median", "median write", "ms", False),
            ("p99", "p99 write", "ms", False),
            ("worst", "worst write", "ms", False),
            ("spread", "worst / median", "×", False),
            ("rate", "writes", "writes/s", True),
        ]
        for row in durability_rows(f"{THREADS} threads, {label}", metric, unit, higher)
    ],
)
