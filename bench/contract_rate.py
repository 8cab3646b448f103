"""`contract check` against a projection rebuild over the same store: events/s of each.

    python -m bench.contract_rate --events 1000000 [--backend sqlite|postgres] [--pg-dsn URL]

Seeds the bench ledger (accounts opened, then deposits; see workload.py) once through
the store's import, then runs, in this process and on the same store, a full
`contract.check` with the bank sample's app and a `rebuild` of its `balances`
projection, `--runs` times each in turns, and prints the median rate of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from cqrsctl.loader import load_app
from cqrsctl.services import contract
from cqrsctl.services.projections import rebuild
from cqrsctl.services.transfer import import_events
from cqrsctl.store import StoredEvent, open_store

from .workload import account_id, ledger, stream_id

ROOT = Path(__file__).resolve().parents[1]


def events(n: int, accounts: int) -> Iterator[StoredEvent]:
    versions: dict[int, int] = {}
    now = datetime.now(UTC)
    for pos, (i, kind, amount) in enumerate(ledger(n, accounts), 1):
        v = versions[i] = versions.get(i, 0) + 1
        data = {"owner": account_id(i)} if kind == "AccountOpened" else {"amount": str(amount)}
        yield StoredEvent(pos, stream_id(i), v, str(uuid.uuid4()), kind, 1, data, {}, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    app = load_app(str(ROOT / "samples" / "bank" / "app.py"))
    with tempfile.TemporaryDirectory() as tmp:
        schema = f"bench_contract_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{tmp}/c.db" if args.backend == "sqlite" else f"{args.pg_dsn}?schema={schema}"
        store = open_store(url)
        try:
            t = time.perf_counter()
            import_events(store, enumerate(events(args.events, args.accounts), 1))
            print(f"seeded {args.events:,} events in {time.perf_counter() - t:.1f} s")
            check_rates, rebuild_rates = [], []
            for _ in range(args.runs):
                report = contract.check(app, store)
                assert report.ok and report.checked == args.events, report.failures()
                check_rates.append(report.checked / report.seconds)
                t = time.perf_counter()
                result = rebuild(store, app, "balances")
                rebuild_rates.append(result.events / (time.perf_counter() - t))
            check, rb = statistics.median(check_rates), statistics.median(rebuild_rates)
            print(
                f"{args.backend}: contract check {check:,.0f} events/s; rebuild balances {rb:,.0f} events/s;"
                f" ratio {check / rb:.2f}"
            )
        finally:
            if args.backend == "postgres":
                import psycopg

                with psycopg.connect(args.pg_dsn, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            store.close()


if __name__ == "__main__":
    main()
