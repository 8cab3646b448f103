"""5. Daemon latency: from an append's commit returning to the balances read model showing
it (its checkpoint at or past the event), p50 and p99 over `latency_appends` appends.

The appender waits for each event to become visible before the next append (a closed
loop, so no queue builds up; the first WARMUP appends are not counted), then pauses a random 0..2×poll interval so appends do not
fall in step with a poller. Visibility is observed the same way for every contender: a
separate connection reads the checkpoint every 0.5 ms, which adds up to 0.5 ms.

The raw limit: on PostgreSQL a projector thread LISTENs, wakes on the NOTIFY sent in the
append's transaction, reads the new events, and commits the balances and its checkpoint
in one transaction; on SQLite it polls every `poll_ms`. SQLite runs at synchronous=NORMAL
(cqrsctl's default). eventsourcing has no daemon to compare with.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, needs_cqrsctl
from ..workload import account_id, amount, stream_id

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 10
OBSERVE_EVERY = 0.0005
TIMEOUT = 30.0
# Appends not counted: the first ones wait for a projector to start and warm up.
WARMUP = 2


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _figures(latencies: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}


def _closed_loop(ctx: Ctx, append: Callable[[int], int], visible: Callable[[], int]) -> list[float]:
    rng = random.Random(3)
    pause = ctx.sizes["poll_ms"] / 1000 * 2
    latencies = []
    for k in range(ctx.sizes["latency_appends"] + WARMUP):
        position = append(k)
        t0 = time.perf_counter()
        while visible() < position:
            if time.perf_counter() - t0 > TIMEOUT:
                raise RuntimeError(f"event at position {position} not visible after {TIMEOUT:.0f}s")
            time.sleep(OBSERVE_EVERY)
        if k >= WARMUP:
            latencies.append(time.perf_counter() - t0)
        time.sleep(rng.uniform(0, pause))
    return latencies


# -- raw ------------------------------------------------------------------------------------


class RawProjector(threading.Thread):
    """Folds new events into balances and moves the checkpoint, in one transaction."""

    def __init__(self, backend: str, conn: Any, wait: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.backend, self.conn, self.wait = backend, conn, wait
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.last = 0
        self.balances: dict[str, Decimal] = {}
        data = "data::text" if backend == "postgres" else "data"
        self.select = rawdb.q(
            backend,
            f"SELECT position, stream_id, type, {data} FROM events WHERE position > ? ORDER BY position",
        )
        self.upsert = rawdb.q(
            backend,
            "INSERT INTO balances (account_id, balance) VALUES (?, ?)"
            " ON CONFLICT (account_id) DO UPDATE SET balance = excluded.balance",
        )
        self.checkpoint = rawdb.q(
            backend,
            "INSERT INTO checkpoints (name, position) VALUES ('balances', ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.wait()
                self.catch_up()
        except BaseException as exc:  # reported by the appender, which would otherwise time out
            self.error = exc

    def catch_up(self) -> None:
        conn, backend = self.conn, self.backend
        rows = conn.execute(self.select, (self.last,)).fetchall()
        if not rows:
            return
        changed: dict[str, Decimal] = {}
        for _position, stream, kind, data in rows:
            d = orjson.loads(data)
            key = stream.split("-", 1)[1]
            balance = self.balances.get(key, Decimal(0))
            if kind == "MoneyDeposited":
                balance += Decimal(d["amount"])
            self.balances[key] = changed[key] = balance
        rawdb.begin(conn, backend)
        for key, balance in changed.items():
            conn.execute(self.upsert, (key, str(balance) if backend == "sqlite" else balance))
        conn.execute(self.checkpoint, (rows[-1][0],))
        conn.execute("COMMIT")
        self.last = rows[-1][0]


def raw(ctx: Ctx) -> dict[str, float]:
    backend = ctx.backend
    poll = ctx.sizes["poll_ms"] / 1000
    with ctx.fresh("NORMAL") as db:
        writer, observer, projecting = db.raw(), db.raw(), db.raw()
        rawdb.create_schema(writer, backend)
        channel = f"bench_{db.token}"
        if backend == "postgres":
            listener = db.raw()
            listener.execute(f"LISTEN {channel}")

            def wait() -> None:
                # The NOTIFY is the wake-up; the timeout only lets the thread see `stop`.
                for _ in listener.notifies(timeout=0.2, stop_after=1):
                    pass

        else:

            def wait() -> None:
                time.sleep(poll)

        projector = RawProjector(backend, projecting, wait)
        head = rawdb.q(backend, "SELECT max(version) FROM events WHERE stream_id = ?")
        insert = rawdb.q(
            backend,
            rawdb.INSERT_EVENT + " RETURNING position",
        )
        seen = rawdb.q(backend, "SELECT position FROM checkpoints WHERE name = 'balances'")

        def append(k: int) -> int:
            i = k % ACCOUNTS
            sid = stream_id(i)
            rawdb.begin(writer, backend)
            version = writer.execute(head, (sid,)).fetchone()[0] or 0
            data = {"owner": account_id(i)} if version == 0 else {"amount": str(amount(k))}
            kind = "AccountOpened" if version == 0 else "MoneyDeposited"
            row = rawdb.event_row(backend, sid, version + 1, kind, orjson.dumps(data).decode())
            position = writer.execute(insert, row).fetchone()[0]
            if backend == "postgres":
                writer.execute("SELECT pg_notify(%s, %s)", (channel, str(position)))
            writer.execute("COMMIT")
            return int(position)

        def visible() -> int:
            if projector.error is not None:
                raise RuntimeError(f"projector failed: {projector.error!r}")
            row = observer.execute(seen).fetchone()
            return row[0] if row else 0

        projector.start()
        try:
            latencies = _closed_loop(ctx, append, visible)
        finally:
            projector.stop.set()
            projector.join(timeout=5)
    return _figures(latencies)


# -- cqrsctl --------------------------------------------------------------------------------


def cqrsctl(ctx: Ctx) -> dict[str, float]:
    """`cqrsctl daemon` in its own process, projecting the balances; appends via store.append."""
    with needs_cqrsctl("daemon"):
        import cqrsctl.services.daemon  # noqa: F401 - only to know whether it exists yet
        from cqrsctl import NewEvent, open_store

        from ..domain_cq_projection import PROJECTION

    with ctx.fresh() as db:
        url = db.cqrsctl_url()
        store = db.closing(open_store(url))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-m", "cqrsctl", "--db", url, "--app", "bench.domain_cq_projection:app",
                   "daemon", "--projections", PROJECTION]  # fmt: skip
        if ctx.backend == "sqlite":
            # The same poll interval as the raw poller; PostgreSQL wakes on NOTIFY.
            command += ["--poll-interval", str(ctx.sizes["poll_ms"] / 1000)]
        log = db.file(".daemon.log")
        with open(log, "wb") as err:
            daemon = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            opened: set[int] = set()

            def append(k: int) -> int:
                i = k % ACCOUNTS
                if i not in opened:
                    opened.add(i)
                    event = NewEvent("AccountOpened", {"owner": account_id(i)})
                else:
                    event = NewEvent("MoneyDeposited", {"amount": str(amount(k))})
                return store.append(stream_id(i), [event]).positions[-1]

            def visible() -> int:
                if daemon.poll() is not None:
                    tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                    raise RuntimeError(f"the daemon exited ({daemon.returncode}): {' '.join(tail)}")
                with store.reader() as tx:
                    cp = tx.tracking.get(PROJECTION)
                return cp.position if cp is not None else 0

            latencies = _closed_loop(ctx, append, visible)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    return _figures(latencies)


MEASUREMENT = Measurement(
    name="latency",
    title="Daemon latency, append → read model visible",
    contenders={"raw": raw, "cqrsctl": cqrsctl},
    rows=[
        Row("append → read model visible, p50", "p50", "ms", "raw", None, "cqrsctl", False),
        Row("append → read model visible, p99", "p99", "ms", "raw", None, "cqrsctl", False),
    ],
)
