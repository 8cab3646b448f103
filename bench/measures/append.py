"""2. Batch append throughput: appends of `append_batch` events per transaction, each to a
new stream (one AccountOpened, then deposits), `append_events` events in all."""

from __future__ import annotations

import time
from decimal import Decimal

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, durability_contenders, durability_rows, needs_cqrsctl
from ..workload import amount


def _shape(ctx: Ctx) -> tuple[int, int]:
    batch = ctx.sizes["append_batch"]
    return max(1, ctx.sizes["append_events"] // batch), batch


def raw(ctx: Ctx, synchronous: str | None = None) -> dict[str, float]:
    """Per batch: BEGIN; executemany INSERT; COMMIT (new streams: no head to read)."""
    backend = ctx.backend
    batches, size = _shape(ctx)
    insert = rawdb.q(backend, rawdb.INSERT_EVENT)
    with ctx.fresh(synchronous) as db:
        conn = db.raw()
        rawdb.create_schema(conn, backend)
        cur = conn.cursor()
        begin = "BEGIN" if backend == "postgres" else "BEGIN IMMEDIATE"
        started = time.perf_counter()
        for b in range(batches):
            sid = f"Account-B{b:07d}"
            rows = [rawdb.event_row(backend, sid, 1, "AccountOpened", orjson.dumps({"owner": sid}).decode())]
            rows += [
                rawdb.event_row(
                    backend, sid, v, "MoneyDeposited", orjson.dumps({"amount": str(amount(v))}).decode()
                )
                for v in range(2, size + 1)
            ]
            cur.execute(begin)
            cur.executemany(insert, rows)
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cur.execute("SELECT count(*) FROM events")
        _check(cur.fetchone()[0], batches * size)
    return {"rate": batches * size / elapsed}


def eventsourcing(ctx: Ctx) -> dict[str, float]:
    """Create an aggregate, call its method for each further event, save once."""
    from ..domain_es import Account, Bank

    batches, size = _shape(ctx)
    with ctx.fresh() as db:
        app = db.closing(Bank(env=db.es_env()))
        started = time.perf_counter()
        for b in range(batches):
            acc = Account(owner=f"B{b:07d}")
            for v in range(2, size + 1):
                acc.deposit(Decimal(amount(v)))
            app.save(acc)
        elapsed = time.perf_counter() - started
        _check(app.recorder.max_notification_id() or 0, batches * size)
    return {"rate": batches * size / elapsed}


def cqrsctl(ctx: Ctx, synchronous: str | None = None) -> dict[str, float]:
    """store.append(stream, [NewEvent, ...]) with expected version no-stream."""
    with needs_cqrsctl("append"):
        from cqrsctl import NO_STREAM, NewEvent, open_store

    batches, size = _shape(ctx)
    with ctx.fresh(synchronous) as db:
        store = db.closing(open_store(db.cqrsctl_url()))
        started = time.perf_counter()
        for b in range(batches):
            sid = f"Account-B{b:07d}"
            events = [NewEvent("AccountOpened", {"owner": sid})]
            events += [NewEvent("MoneyDeposited", {"amount": str(amount(v))}) for v in range(2, size + 1)]
            store.append(sid, events, NO_STREAM)
        elapsed = time.perf_counter() - started
        _check(store.head(), batches * size)
    return {"rate": batches * size / elapsed}


def _check(found: int, expected: int) -> None:
    if found != expected:
        raise RuntimeError(f"expected {expected} events, found {found}")


MEASUREMENT = Measurement(
    name="append",
    title="Batch append throughput",
    contenders=durability_contenders(raw, eventsourcing, cqrsctl),
    rows=durability_rows("batch append", "rate", "events/s"),
)
