"""Writer wait during a projection rebuild: how long `dispatch` takes while another process
rebuilds a projection whose handler is slow, side by side with no rebuild.

    python -m bench.writer_wait                          # SQLite, 2,000 events, 15 ms per event
    python -m bench.writer_wait --backend postgres --events 1000 --handler-ms 5

Each phase dispatches `Deposit` commands of the bank sample one after another
(`--pause-ms` apart: slower than the handler, or the rebuild never catches up) into a fresh database holding `--events` deposits; in the second phase
`cqrsctl projections rebuild slow_balances` runs meanwhile in a child process, its
handler sleeping `--handler-ms` per event. It prints p50, p99 and the worst dispatch
latency of each phase (the goal on SQLite: p99 and worst under 250 ms while rebuilding).
The module is also the app the child loads (`--app bench/writer_wait.py:app`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from cqrsctl.loader import load_app
from cqrsctl.projection import Projection, Table

ROOT = Path(__file__).resolve().parents[1]
app = load_app(str(ROOT / "samples" / "bank" / "app.py"))


class SlowBalances(Projection, name="slow_balances", version=1):
    """The sample's balances, with a handler that takes CQRSCTL_BENCH_HANDLER_MS per event."""

    tables = {"slow_balances": Table({"account_id": "text", "balance": "decimal"}, key=["account_id"])}

    def on_MoneyDeposited(self, event: Any, rm: Any) -> None:
        time.sleep(float(os.environ.get("CQRSCTL_BENCH_HANDLER_MS", "0")) / 1000)
        row = rm.get("slow_balances", account_id=event.aggregate_id) or {"balance": Decimal(0)}
        rm.upsert("slow_balances", {"account_id": event.aggregate_id, "balance": row["balance"] + Decimal(1)})


if "slow_balances" not in app.projections:
    app.projection(SlowBalances)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def _dispatches(url: str, until: Any, limit: int, pause: float) -> list[float]:
    from cqrsctl.services.dispatch import Dispatcher
    from cqrsctl.store import open_store

    with open_store(url) as store:
        d = Dispatcher(app, store)
        waits = []
        while until() and len(waits) < limit:
            began = time.perf_counter()
            d.dispatch("Deposit", {"account_id": "W", "amount": "1.00"})
            waits.append(time.perf_counter() - began)
            time.sleep(pause)
    return waits


def measure(url: str, events: int, handler_ms: float, pause: float) -> dict[str, list[float]]:
    from cqrsctl.services.dispatch import Dispatcher
    from cqrsctl.store import open_store

    with open_store(url) as store:
        d = Dispatcher(app, store)
        for account in ("W", *(f"A{i}" for i in range(10))):
            d.dispatch("OpenAccount", {"account_id": account, "owner": account})
        from cqrsctl.store import NewEvent

        for i in range(0, events, 100):
            store.append(
                f"Account-A{i % 10}", [NewEvent("MoneyDeposited", {"amount": "1.00"})] * min(100, events - i)
            )
    env = {**os.environ, "CQRSCTL_BENCH_HANDLER_MS": str(handler_ms)}
    child = subprocess.Popen(
        [sys.executable, "-m", "cqrsctl", "--db", url, "--app", f"{__file__}:app", "projections", "rebuild",
         "slow_balances"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    time.sleep(1.0)  # let it load the app and begin
    rebuilding = _dispatches(url, lambda: child.poll() is None, 100_000, pause)
    _, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"the rebuild failed ({child.returncode}): {err.decode().strip()}")
    idle = _dispatches(url, lambda: True, len(rebuilding), pause)
    return {"no rebuild": idle, "while rebuilding": rebuilding}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=2000, help="deposits the rebuild replays")
    parser.add_argument("--handler-ms", type=float, default=15.0, help="handler time per event")
    parser.add_argument("--pause-ms", type=float, default=30.0, help="pause between dispatches")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("CQRSCTL_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/writer_wait.db"
        else:
            url = f"{args.pg_dsn}{'&' if '?' in args.pg_dsn else '?'}schema=bench_{uuid.uuid4().hex[:12]}"
        phases = measure(url, args.events, args.handler_ms, args.pause_ms / 1000)
        if args.backend == "postgres":
            import psycopg

            with psycopg.connect(args.pg_dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {url.rsplit('schema=', 1)[1]} CASCADE")
    print(f"dispatch latency, {args.backend}, rebuild of {args.events} events at {args.handler_ms:g} ms each")
    print(f"{'':18} {'dispatches':>10} {'p50 ms':>8} {'p99 ms':>8} {'worst ms':>9}")
    for name, waits in phases.items():
        print(f"{name:18} {len(waits):>10} {_percentile(waits, 0.5) * 1000:>8.1f} "
              f"{_percentile(waits, 0.99) * 1000:>8.1f} {max(waits) * 1000:>9.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
