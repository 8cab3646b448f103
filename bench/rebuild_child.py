"""One projection rebuild in its own process, so that its peak RSS is its own.

``python -m bench.rebuild_child '<json job>'`` prints one JSON line: seconds, events,
total (the sum of all balances, checked by the parent) and peak_rss_mb. Exit code 3
means the contender is not available (a cqrsctl module not written yet).
"""

from __future__ import annotations

import importlib
import json
import resource
import sqlite3
import sys
import time
from decimal import Decimal
from typing import Any

import orjson

ZERO = Decimal(0)


def _account(stream: str) -> str:
    return stream.split("-", 1)[1]


def raw(job: dict[str, Any]) -> tuple[int, Decimal]:
    from . import raw as rawdb

    balances: dict[str, Decimal] = {}
    n = 0
    loads = orjson.loads
    conn: Any
    if job["backend"] == "postgres":
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(job["dsn"])
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(job["schema"])))
        # A named cursor streams from the server in pages instead of loading every row.
        with conn.cursor(name="rebuild") as cur:
            cur.itersize = 2000
            cur.execute("SELECT stream_id, type, data::text FROM events ORDER BY position")
            for stream, kind, data in cur:
                d = loads(data)
                n += 1
                key = _account(stream)
                if kind == "MoneyDeposited":
                    balances[key] = balances.get(key, ZERO) + Decimal(d["amount"])
                elif kind == "AccountOpened":
                    balances.setdefault(key, ZERO)
        conn.commit()
        conn.autocommit = True
    else:
        conn = sqlite3.connect(job["path"], isolation_level=None)
        for stream, kind, data in conn.execute("SELECT stream_id, type, data FROM events ORDER BY position"):
            d = loads(data)
            n += 1
            key = _account(stream)
            if kind == "MoneyDeposited":
                balances[key] = balances.get(key, ZERO) + Decimal(d["amount"])
            elif kind == "AccountOpened":
                balances.setdefault(key, ZERO)
    rawdb.write_balances(conn, job["backend"], balances)
    conn.close()
    return n, sum(balances.values(), ZERO)


def eventsourcing(job: dict[str, Any]) -> tuple[int, Decimal]:
    from . import raw as rawdb
    from .domain_es import Bank, fold

    app = Bank(env=job["env"])
    balances: dict[Any, Decimal] = {}
    n, start = 0, 1
    to_domain_event = app.mapper.to_domain_event
    while True:
        page = app.recorder.select_notifications(start, 500)
        if not page:
            break
        for note in page:
            fold(balances, to_domain_event(note))
        n += len(page)
        start = page[-1].id + 1
    app.close()
    # eventsourcing has no read-model tables; the balances go in with the bare driver.
    if job["backend"] == "postgres":
        import psycopg
        from psycopg import sql

        conn: Any = psycopg.connect(job["dsn"], autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(job["schema"])))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS balances (account_id text PRIMARY KEY, balance numeric NOT NULL)"
        )
    else:
        conn = sqlite3.connect(job["path"], isolation_level=None)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS balances (account_id TEXT PRIMARY KEY, balance TEXT NOT NULL)"
        )
    rawdb.write_balances(conn, job["backend"], {str(k): v for k, v in balances.items()})
    conn.close()
    return n, sum(balances.values(), ZERO)


def cqrsctl(job: dict[str, Any]) -> tuple[int, Decimal]:
    try:
        from cqrsctl import open_store
        from cqrsctl.services import projections

        from .domain_cq_projection import Balances as balances
        from .domain_cq_projection import app
    except ImportError as exc:
        print(f"cqrsctl projections: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    store = open_store(job["url"])
    try:
        n = projections.rebuild(store, app, balances.name).events
        with store.reader() as tx:
            rows = tx.read_models.select("balances", balances.tables["balances"])
    finally:
        store.close()
    return n, sum((Decimal(r["balance"]) for r in rows), ZERO)


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM belongs to the process image, while
    ru_maxrss also counts the parent's memory at fork, which would hide small peaks."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    job = json.loads(sys.argv[1])
    run = {"raw": raw, "eventsourcing": eventsourcing, "cqrsctl": cqrsctl}[job["contender"]]
    # Imports happen before the clock starts: the rebuild is timed, not the interpreter.
    from . import raw as _  # noqa: F401

    if job["backend"] == "postgres":
        import psycopg  # noqa: F401
    if job["contender"] == "eventsourcing":
        from . import domain_es  # noqa: F401

        importlib.import_module(f"eventsourcing.{job['backend']}")
    elif job["contender"] == "cqrsctl":
        try:
            from cqrsctl.services import projections  # noqa: F401

            from . import domain_cq_projection  # noqa: F401

            # open_store imports its backend when it first opens one.
            importlib.import_module(f"cqrsctl.store.{job['backend']}")
        except ImportError:
            pass  # reported by the contender itself
    started = time.perf_counter()
    events, total = run(job)
    seconds = time.perf_counter() - started
    print(
        json.dumps({"seconds": seconds, "events": events, "total": str(total), "peak_rss_mb": peak_rss_mb()})
    )


if __name__ == "__main__":
    main()
