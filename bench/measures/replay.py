"""3. Replay of one long aggregate (`replay_events` events: opened, then deposits).

Each run seeds a fresh database, times the replay from the events, then takes a snapshot
at the head and times the replay from it. Every timing warms up (see _timed), then
times at least `replay_reps` replays (and at least 20 ms of them) and reports their mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, needs_cqrsctl
from ..workload import account_id, amount

STREAM = "Account-A-REPLAY"


def _events(ctx: Ctx) -> int:
    return max(2, ctx.sizes["replay_events"])


def _expected(n: int) -> Decimal:
    return Decimal(sum(amount(v) for v in range(2, n + 1)))


# A replay of a few microseconds (from a snapshot at the head) timed once right after one
# warm-up measures the warm-up: Python specialises a function's bytecode only after its
# first calls, and the second call of a replay from a snapshot took 2-4 times as long as
# the tenth. So every contender warms up with up to WARMUP_CALLS replays (at most
# WARMUP_SECONDS of them), and is timed over at least `replay_reps` replays and MIN_SECONDS.
WARMUP_CALLS = 10
WARMUP_SECONDS = 0.2
MIN_SECONDS = 0.02


def _timed(ctx: Ctx, replay: Callable[[], Decimal], expected: Decimal) -> float:
    """Milliseconds per replay."""
    started, calls = time.perf_counter(), 0
    while calls < WARMUP_CALLS and (calls == 0 or time.perf_counter() - started < WARMUP_SECONDS):
        if replay() != expected:
            raise RuntimeError("replay folded to the wrong balance")
        calls += 1
    reps = max(1, ctx.sizes["replay_reps"])
    started, calls = time.perf_counter(), 0
    while calls < reps or time.perf_counter() - started < MIN_SECONDS:
        balance = replay()
        calls += 1
    elapsed = time.perf_counter() - started
    if balance != expected:
        raise RuntimeError("replay folded to the wrong balance")
    return elapsed / calls * 1000


# -- raw ------------------------------------------------------------------------------------


def raw(ctx: Ctx) -> dict[str, float]:
    """SELECT the stream (after the snapshot's version, if any) + orjson decode + fold."""
    backend, n = ctx.backend, _events(ctx)
    data_col = "data::text" if backend == "postgres" else "data"
    select = rawdb.q(
        backend, f"SELECT type, {data_col} FROM events WHERE stream_id = ? AND version > ? ORDER BY version"
    )
    state_col = "state::text" if backend == "postgres" else "state"
    select_snapshot = rawdb.q(backend, f"SELECT version, {state_col} FROM snapshots WHERE stream_id = ?")
    with ctx.fresh() as db:
        conn = db.raw()
        rawdb.create_schema(conn, backend)
        rows = [(STREAM, 1, "AccountOpened", orjson.dumps({"owner": account_id(0)}).decode())]
        rows += [
            (STREAM, v, "MoneyDeposited", orjson.dumps({"amount": str(amount(v))}).decode())
            for v in range(2, n + 1)
        ]
        rawdb.insert_events(conn, backend, rows)

        def replay(snapshot: bool) -> Decimal:
            balance, after = Decimal(0), 0
            if snapshot:
                found = conn.execute(select_snapshot, (STREAM,)).fetchone()
                if found is not None:
                    after = found[0]
                    balance = Decimal(orjson.loads(found[1])["balance"])
            for kind, data in conn.execute(select, (STREAM, after)).fetchall():
                d = orjson.loads(data)
                if kind == "MoneyDeposited":
                    balance += Decimal(d["amount"])
            return balance

        plain = _timed(ctx, lambda: replay(False), _expected(n))
        state = orjson.dumps({"owner": account_id(0), "balance": str(replay(False))}).decode()
        conn.execute(rawdb.q(backend, "INSERT INTO snapshots VALUES (?, ?, ?)"), (STREAM, n, state))
        snap = _timed(ctx, lambda: replay(True), _expected(n))
    # The raw contender has one way to replay, so it is also the store-level figure.
    return {"ms": plain, "ms_store": plain, "ms_snapshot": snap}


# -- eventsourcing --------------------------------------------------------------------------


def eventsourcing(ctx: Ctx) -> dict[str, float]:
    """Application.repository.get(id); then with snapshotting enabled and a snapshot taken."""
    from ..domain_es import Account, Bank

    n = _events(ctx)
    with ctx.fresh() as db:
        app = db.closing(Bank(env=db.es_env()))
        acc = Account(owner=account_id(0))
        for v in range(2, n + 1):
            acc.deposit(Decimal(amount(v)))
            if v % 500 == 0:
                app.save(acc)
        app.save(acc)
        # Fresh apps for reading, so nothing read back comes from the writer's memory.
        reader = db.closing(Bank(env=db.es_env()))
        plain = _timed(ctx, lambda: reader.repository.get(acc.id).balance, _expected(n))
        snapshots = db.closing(Bank(env=db.es_env(IS_SNAPSHOTTING_ENABLED="y")))
        snapshots.take_snapshot(acc.id)
        snap = _timed(ctx, lambda: snapshots.repository.get(acc.id).balance, _expected(n))
    return {"ms": plain, "ms_snapshot": snap}


# -- cqrsctl --------------------------------------------------------------------------------


def cqrsctl(ctx: Ctx) -> dict[str, float]:
    """App level: services.replay.replay(store, app, stream) folds into the app's pydantic
    aggregate (then from a snapshot taken with take_snapshot). Store level:
    store.read_stream(stream) and a fold over the decoded event data."""
    with needs_cqrsctl("replay"):
        from cqrsctl import NewEvent, open_store
        from cqrsctl.services.replay import replay as replay_stream
        from cqrsctl.services.replay import take_snapshot

        from ..domain_cq import app, snapshot_app

    n = _events(ctx)
    with ctx.fresh() as db:
        store = db.closing(open_store(db.cqrsctl_url()))
        events = [NewEvent("AccountOpened", {"owner": account_id(0)})]
        events += [NewEvent("MoneyDeposited", {"amount": str(amount(v))}) for v in range(2, n + 1)]
        for i in range(0, n, 500):
            store.append(STREAM, events[i : i + 500])

        def store_level() -> Decimal:
            balance = Decimal(0)
            for e in store.read_stream(STREAM):
                if e.event_type == "MoneyDeposited":
                    balance += Decimal(e.data["amount"])
            return balance

        def app_level(the_app: Any, snapshot: bool) -> Decimal:
            return Decimal(replay_stream(store, the_app, STREAM, use_snapshot=snapshot).state["balance"])

        figures = {
            "ms": _timed(ctx, lambda: app_level(app, False), _expected(n)),
            "ms_store": _timed(ctx, store_level, _expected(n)),
        }
        take_snapshot(store, snapshot_app, STREAM)
        figures["ms_snapshot"] = _timed(ctx, lambda: app_level(snapshot_app, True), _expected(n))
    return figures


MEASUREMENT = Measurement(
    name="replay",
    title="Replay of one long aggregate",
    contenders={"raw": raw, "eventsourcing": eventsourcing, "cqrsctl": cqrsctl},
    rows=[
        Row("replay (app aggregate)", "ms", "ms", "raw", "eventsourcing", "cqrsctl", False),
        Row("replay, store level (read_stream + fold)", "ms_store", "ms", "raw", None, "cqrsctl", False),
        Row("replay from a snapshot at head", "ms_snapshot", "ms", "raw", "eventsourcing", "cqrsctl", False),
    ],
)
