"""1. Dispatch throughput: one transaction per command (load the aggregate, decide, append
one event). Accounts are opened, then deposited into in a fixed shuffled order."""

from __future__ import annotations

import os
import time
from decimal import Decimal
from functools import partial

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, durability_contenders, durability_rows, needs_cqrsctl
from ..workload import account_id, dispatch_plan, stream_id


def _plan(ctx: Ctx) -> list[tuple[str, int, int]]:
    return dispatch_plan(ctx.sizes["dispatch_commands"], ctx.sizes["dispatch_accounts"])


def raw(ctx: Ctx, synchronous: str | None = None, publish: bool = False) -> dict[str, float]:
    """Per command: BEGIN; SELECT the stream head; check; INSERT one event (and, publishing,
    one outbox row carrying it); COMMIT."""
    backend, plan = ctx.backend, _plan(ctx)
    head = rawdb.q(backend, "SELECT max(version) FROM events WHERE stream_id = ?")
    insert = rawdb.q(backend, rawdb.INSERT_EVENT)
    outbox = rawdb.q(backend, "INSERT INTO outbox (topic, key, payload) VALUES (?, ?, ?)")
    with ctx.fresh(synchronous) as db:
        conn = db.raw()
        rawdb.create_schema(conn, backend)
        cur = conn.cursor()
        begin = "BEGIN" if backend == "postgres" else "BEGIN IMMEDIATE"
        started = time.perf_counter()
        for kind, i, amount in plan:
            sid = stream_id(i)
            cur.execute(begin)
            cur.execute(head, (sid,))
            version = cur.fetchone()[0] or 0
            if kind == "open":
                if version:
                    raise RuntimeError(f"{sid} already open")
                kind_, version_, data = "AccountOpened", 1, {"owner": account_id(i)}
            else:
                if not version:
                    raise RuntimeError(f"{sid} is not open")
                kind_, version_, data = "MoneyDeposited", version + 1, {"amount": str(amount)}
            # Metadata of the shape a dispatched event carries: the command's id as its
            # correlation and causation.
            command_id = os.urandom(16).hex()
            meta = {"command_id": command_id, "correlation_id": command_id, "causation_id": command_id}
            row = rawdb.event_row(
                backend, sid, version_, kind_, orjson.dumps(data).decode(), orjson.dumps(meta).decode()
            )
            cur.execute(insert, row)
            if publish:
                message = {
                    "event_id": row[2],
                    "type": kind_,
                    "stream_id": sid,
                    "version": version_,
                    "data": data,
                }
                cur.execute(outbox, ("Account.events", sid, orjson.dumps(message).decode()))
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cur.execute("SELECT count(*) FROM events")
        _check(cur.fetchone()[0], len(plan))
    return {"rate": len(plan) / elapsed}


def eventsourcing(ctx: Ctx) -> dict[str, float]:
    """Repository.get, call the aggregate's method, Application.save. The aggregate cache
    is on (the size of cqrsctl's), so both libraries read only new events of a stream."""
    from ..domain_es import Account, Bank

    plan = _plan(ctx)
    with ctx.fresh() as db:
        app = db.closing(Bank(env=db.es_env(AGGREGATE_CACHE_MAXSIZE="10000")))
        ids = {}
        started = time.perf_counter()
        for kind, i, amount in plan:
            if kind == "open":
                acc = Account(owner=account_id(i))
                app.save(acc)
                ids[i] = acc.id
            else:
                acc = app.repository.get(ids[i])
                acc.deposit(Decimal(str(amount)))
                app.save(acc)
        elapsed = time.perf_counter() - started
        _check(app.recorder.max_notification_id() or 0, len(plan))
    return {"rate": len(plan) / elapsed}


def cqrsctl(ctx: Ctx, synchronous: str | None = None, publish: bool = False) -> dict[str, float]:
    """Dispatcher.dispatch(name, data): validate, load, handle, append — one transaction each
    (publishing: the app publishes its account events, so each also writes an outbox row)."""
    with needs_cqrsctl("dispatch"):
        from cqrsctl import open_store
        from cqrsctl.services.dispatch import Dispatcher

        from ..domain_cq import app as plain_app
        from ..domain_cq import publishing_app

    app = publishing_app if publish else plain_app
    plan = _plan(ctx)
    with ctx.fresh(synchronous) as db:
        store = db.closing(open_store(db.cqrsctl_url()))
        dispatcher = Dispatcher(app, store)
        started = time.perf_counter()
        for kind, i, amount in plan:
            if kind == "open":
                dispatcher.dispatch("OpenAccount", {"account_id": account_id(i), "owner": account_id(i)})
            else:
                dispatcher.dispatch("Deposit", {"account_id": account_id(i), "amount": str(amount)})
        elapsed = time.perf_counter() - started
        _check(store.head(), len(plan))
    return {"rate": len(plan) / elapsed}


def _check(found: int, expected: int) -> None:
    if found != expected:
        raise RuntimeError(f"expected {expected} events, found {found}")


MEASUREMENT = Measurement(
    name="dispatch",
    title="Dispatch throughput (one transaction per command)",
    contenders={
        **durability_contenders(raw, eventsourcing, cqrsctl),
        "raw+outbox": partial(raw, publish=True),
        "raw+outbox@NORMAL": partial(raw, synchronous="NORMAL", publish=True),
        "cqrsctl+outbox": partial(cqrsctl, publish=True),
        "cqrsctl+outbox@NORMAL": partial(cqrsctl, synchronous="NORMAL", publish=True),
    },
    rows=[
        *durability_rows("dispatch", "rate", "commands/s"),
        # What publishing costs: compare with the plain dispatch rows above.
        Row(
            "dispatch + outbox row, synchronous=NORMAL",
            "rate",
            "commands/s",
            "raw+outbox@NORMAL",
            None,
            "cqrsctl+outbox@NORMAL",
            True,
            ("sqlite",),
        ),
        Row(
            "dispatch + outbox row",
            "rate",
            "commands/s",
            "raw+outbox",
            None,
            "cqrsctl+outbox",
            True,
            ("postgres",),
        ),
    ],  # fmt: skip
)
