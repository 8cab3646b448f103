"""4. Projection rebuild: `rebuild_events` events over `rebuild_accounts` accounts folded
into a balances table (per event, add the amount to the account's balance).

Each contender's events are seeded once per backend through its own API into a template
(untimed), and each run rebuilds in a fresh copy of it. The rebuild runs in a child
process (bench/rebuild_child.py) that reports its own elapsed time and its peak RSS
(VmHWM), so one contender's memory never counts against another's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, Unavailable, needs_cqrsctl
from ..workload import account_id, ledger, ledger_total, stream_id

ROOT = Path(__file__).resolve().parents[2]


def _size(ctx: Ctx) -> tuple[int, int]:
    return ctx.sizes["rebuild_events"], ctx.sizes["rebuild_accounts"]


def run_child(job: dict[str, Any], expected: Decimal, events: int) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rebuild_child", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode == 3:  # the child's "not available" exit
            raise Unavailable(detail)
        raise RuntimeError(f"rebuild child failed ({proc.returncode}): {detail}")
    out = json.loads(lines[-1])
    if Decimal(out["total"]) != expected or out["events"] != events:
        raise RuntimeError(
            f"rebuild folded {out['events']} events to {out['total']}, expected {events} events and {expected}"
        )
    return {"rate": out["events"] / out["seconds"], "rss": out["peak_rss_mb"]}


def raw(ctx: Ctx) -> dict[str, float]:
    """sqlite3 cursor scan / psycopg named (server-side) cursor + orjson decode + fold."""
    events, accounts = _size(ctx)

    def seed(db: Any) -> None:
        conn = db.raw()
        rawdb.create_schema(conn, db.backend)
        versions: dict[int, int] = {}

        def rows() -> Any:
            for i, kind, amount in ledger(events, accounts):
                v = versions[i] = versions.get(i, 0) + 1
                data = {"owner": account_id(i)} if kind == "AccountOpened" else {"amount": str(amount)}
                yield stream_id(i), v, kind, orjson.dumps(data).decode()

        rawdb.insert_events(conn, db.backend, rows())

    template = ctx.seeded(("rebuild", "raw", events, accounts), seed)
    with ctx.fresh(template=template) as db:
        job = {
            "contender": "raw",
            "backend": ctx.backend,
            "path": str(db.path),
            "dsn": db.dsn,
            "schema": db.schema,
        }
        return run_child(job, ledger_total(events, accounts), events)


def eventsourcing(ctx: Ctx) -> dict[str, float]:
    """Page the notification log 500 at a time, decode with the app's mapper, fold."""
    from ..domain_es import Bank, StoredEvents

    events, accounts = _size(ctx)

    def seed(db: Any) -> None:
        app = db.closing(Bank(env=db.es_env()))
        make = StoredEvents(app)
        versions: dict[int, int] = {}
        batch = []
        for i, kind, amount in ledger(events, accounts):
            v = versions[i] = versions.get(i, 0) + 1
            batch.append(make.opened(i) if kind == "AccountOpened" else make.deposit(i, v, amount))
            if len(batch) >= 10_000:
                app.recorder.insert_events(batch)
                batch = []
        if batch:
            app.recorder.insert_events(batch)

    template = ctx.seeded(("rebuild", "eventsourcing", events, accounts), seed)
    with ctx.fresh(template=template) as db:
        job = {"contender": "eventsourcing", "backend": ctx.backend, "env": db.es_env(), "path": str(db.path),
               "dsn": db.dsn, "schema": db.schema}  # fmt: skip
        return run_child(job, ledger_total(events, accounts), events)


def cqrsctl(ctx: Ctx) -> dict[str, float]:
    """cqrsctl's `projections.rebuild(store, app, name)`: shadow tables filled in batches,
    each batch committed with the rebuild's checkpoint, then swapped in."""
    with needs_cqrsctl("projection rebuild"):
        from cqrsctl import open_store
        from cqrsctl.services import projections  # noqa: F401 - only to know whether it exists yet
        from cqrsctl.store import StoredEvent
        from cqrsctl.store.base import new_id, utcnow

    events, accounts = _size(ctx)

    def seed(db: Any) -> None:
        store = db.closing(open_store(db.cqrsctl_url()))
        versions: dict[int, int] = {}
        now = utcnow()
        batch: list[Any] = []
        # import_events keeps the given order, so positions follow the ledger exactly.
        for i, kind, amount in ledger(events, accounts):
            v = versions[i] = versions.get(i, 0) + 1
            data = {"owner": account_id(i)} if kind == "AccountOpened" else {"amount": str(amount)}
            batch.append(StoredEvent(0, stream_id(i), v, new_id(), kind, 1, data, {}, now))
            if len(batch) >= 20_000:
                with store.transaction() as tx:
                    tx.import_events(batch)
                batch = []
        if batch:
            with store.transaction() as tx:
                tx.import_events(batch)

    template = ctx.seeded(("rebuild", "cqrsctl", events, accounts), seed)
    with ctx.fresh(template=template) as db:
        job = {"contender": "cqrsctl", "backend": ctx.backend, "url": db.cqrsctl_url()}
        return run_child(job, ledger_total(events, accounts), events)


MEASUREMENT = Measurement(
    name="rebuild",
    title="Projection rebuild (balances)",
    contenders={"raw": raw, "eventsourcing": eventsourcing, "cqrsctl": cqrsctl},
    rows=[
        Row("projection rebuild", "rate", "events/s", "raw", "eventsourcing", "cqrsctl"),
        Row("projection rebuild, peak RSS", "rss", "MB", "raw", "eventsourcing", "cqrsctl", False),
    ],
)
