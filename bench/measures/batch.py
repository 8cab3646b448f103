"""8. Batch dispatch with group commit: the dispatch measurement's commands (accounts opened,
then deposited into in a fixed shuffled order) as one batch, the way `dispatch --file` runs
them: `Dispatcher.dispatch_many(items)` with the default grouping (up to 100 commands or
50 ms per transaction, each command in a savepoint), and with `group=1` (one transaction
per command). SQLite runs at synchronous=FULL, where a commit waits for the disk.

- raw, groups: per group of 100 commands one BEGIN … COMMIT, and per command SAVEPOINT,
  SELECT the stream head, INSERT one event, RELEASE (the savepoint is what lets one command
  fail alone, which the batch needs); one transaction per command: the dispatch
  measurement's raw contender.
- eventsourcing: the dispatch measurement's contender (Repository.get, the aggregate's
  method, Application.save: one transaction per command; it has no batch runner).
"""

from __future__ import annotations

import os
import time
from functools import partial

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, needs_cqrsctl
from ..workload import account_id, stream_id
from . import dispatch

GROUP = 100


def raw_groups(ctx: Ctx, synchronous: str | None = None) -> dict[str, float]:
    backend, plan = ctx.backend, dispatch._plan(ctx)
    head = rawdb.q(backend, "SELECT max(version) FROM events WHERE stream_id = ?")
    insert = rawdb.q(backend, rawdb.INSERT_EVENT)
    with ctx.fresh(synchronous) as db:
        conn = db.raw()
        rawdb.create_schema(conn, backend)
        cur = conn.cursor()
        begin = "BEGIN" if backend == "postgres" else "BEGIN IMMEDIATE"
        started = time.perf_counter()
        for g in range(0, len(plan), GROUP):
            cur.execute(begin)
            for kind, i, amount in plan[g : g + GROUP]:
                sid = stream_id(i)
                cur.execute("SAVEPOINT c")
                cur.execute(head, (sid,))
                version = cur.fetchone()[0] or 0
                if (kind == "open") == bool(version):
                    raise RuntimeError(f"{sid}: unexpected version {version} for {kind}")
                data = {"owner": account_id(i)} if kind == "open" else {"amount": str(amount)}
                command_id = os.urandom(16).hex()
                meta = {"command_id": command_id, "correlation_id": command_id, "causation_id": command_id}
                row = rawdb.event_row(
                    backend, sid, version + 1, "AccountOpened" if kind == "open" else "MoneyDeposited",
                    orjson.dumps(data).decode(), orjson.dumps(meta).decode(),
                )  # fmt: skip
                cur.execute(insert, row)
                cur.execute("RELEASE c")
            cur.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cur.execute("SELECT count(*) FROM events")
        dispatch._check(cur.fetchone()[0], len(plan))
    return {"rate": len(plan) / elapsed}


def cqrsctl_batch(ctx: Ctx, synchronous: str | None = None, group: int | None = None) -> dict[str, float]:
    """Dispatcher.dispatch_many(items): the batch `dispatch --file` runs."""
    with needs_cqrsctl("batch"):
        from cqrsctl import open_store
        from cqrsctl.services.dispatch import BatchItem, Dispatcher

        from ..domain_cq import app

    items = [
        BatchItem(n, "OpenAccount", {"account_id": account_id(i), "owner": account_id(i)})
        if kind == "open"
        else BatchItem(n, "Deposit", {"account_id": account_id(i), "amount": str(amount)})
        for n, (kind, i, amount) in enumerate(dispatch._plan(ctx), 1)
    ]
    grouping = {} if group is None else {"group": group}
    with ctx.fresh(synchronous) as db:
        store = db.closing(open_store(db.cqrsctl_url()))
        started = time.perf_counter()
        report = Dispatcher(app, store).dispatch_many(items, **grouping)
        elapsed = time.perf_counter() - started
        if report.failures:
            raise RuntimeError(f"{len(report.failures)} commands failed: {report.failures[0].message}")
        dispatch._check(store.head(), len(items))
    return {"rate": len(items) / elapsed}


MEASUREMENT = Measurement(
    name="batch",
    title="Batch dispatch (dispatch --file): group commit",
    contenders={
        "raw": dispatch.raw,
        "raw@FULL": partial(dispatch.raw, synchronous="FULL"),
        "raw groups": raw_groups,
        "raw groups@FULL": partial(raw_groups, synchronous="FULL"),
        "eventsourcing": dispatch.eventsourcing,
        "cqrsctl groups": cqrsctl_batch,
        "cqrsctl groups@FULL": partial(cqrsctl_batch, synchronous="FULL"),
        "cqrsctl group 1": partial(cqrsctl_batch, group=1),
        "cqrsctl group 1@FULL": partial(cqrsctl_batch, synchronous="FULL", group=1),
    },
    rows=[
        Row(
            "dispatch batch, default groups, synchronous=FULL",
            "rate",
            "commands/s",
            "raw groups@FULL",
            "eventsourcing",
            "cqrsctl groups@FULL",
            True,
            ("sqlite",),
        ),
        Row(
            "dispatch batch, --group 1, synchronous=FULL",
            "rate",
            "commands/s",
            "raw@FULL",
            "eventsourcing",
            "cqrsctl group 1@FULL",
            True,
            ("sqlite",),
        ),
        Row(
            "dispatch batch, default groups",
            "rate",
            "commands/s",
            "raw groups",
            "eventsourcing",
            "cqrsctl groups",
            True,
            ("postgres",),
        ),
        Row(
            "dispatch batch, --group 1",
            "rate",
            "commands/s",
            "raw",
            "eventsourcing",
            "cqrsctl group 1",
            True,
            ("postgres",),
        ),
    ],  # fmt: skip
)
