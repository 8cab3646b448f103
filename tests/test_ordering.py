"""Gap-free reading on PostgreSQL when transactions commit in another order than they
allocated positions (SPEC §3.4), driven step by step from one process.

Several transactions are open at once, each on its own connection. A seeded random
schedule interleaves their appends (a transaction may append more than once, so its
positions are not contiguous), their commits and rollbacks, and the steps of two
followers: one reading pages with `read_all(after)` like `events --follow`, one reading
`tracking.head()` and then `scan(after, until=head)` like a projection. After every step a
follower must have seen exactly the committed events up to where it stands, in position
order: an event committing later below a follower's position would be a gap.

SQLite has one writer at a time (BEGIN IMMEDIATE), so this interleaving cannot happen there;
tests/test_concurrency.py covers both backends with writer processes.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

from cqrsctl.store import NewEvent, Store, Transaction

STRESS = os.environ.get("CQRSCTL_STRESS") == "1"
SEEDS = range(300 if STRESS else 12)
STEPS = 100
MAX_OPEN = 5
PAGE = 3


@dataclass
class Open:
    cm: AbstractContextManager[Transaction]
    tx: Transaction
    positions: list[int] = field(default_factory=list)
    streams: set[str] = field(default_factory=set)


@dataclass
class Follower:
    by_scan: bool
    after: int = 0
    seen: list[tuple[int, str]] = field(default_factory=list)

    def step(self, store: Store) -> bool:
        """Read one page; False when there was nothing new."""
        before = self.after
        if self.by_scan:
            with store.reader() as tx:
                tr = tx.tracking
                head = tr.head()
                rows = tr.scan(self.after, PAGE, until=head)
                self.seen += [(r[0], r[8]) for r in rows]
                # A projection moves to the head read first even when the page held fewer.
                self.after = rows[-1][0] if len(rows) == PAGE else max(self.after, head)
        else:
            page = store.read_all(self.after, PAGE)
            self.seen += [(e.global_position, e.event_id) for e in page]
            if page:
                self.after = page[-1].global_position
        return self.after != before

    def catch_up(self, store: Store) -> None:
        while self.step(store):
            pass


def committed(store: Store) -> list[tuple[int, str]]:
    return [(e.global_position, e.event_id) for e in store.iter_all(page=500)]


def run_schedule(store: Store, seed: int) -> tuple[bool, int]:
    """One random schedule; returns (did commit order differ from allocation order, events)."""
    rng = random.Random(seed)
    opened: list[Open] = []
    followers = [Follower(by_scan=False), Follower(by_scan=True)]
    commit_order: list[int] = []  # first positions of committed transactions, in commit order
    prefix = f"S{seed}"
    try:
        for step in range(STEPS):
            roll = rng.random()
            if roll < 0.2 and len(opened) < MAX_OPEN:
                cm = store.transaction(appending=rng.random() < 0.5)
                opened.append(Open(cm, cm.__enter__()))
            elif roll < 0.5 and opened:
                o = rng.choice(opened)
                # A stream another open transaction holds would wait for it, for ever in
                # one thread: pick one of this transaction's or a free one.
                held = set().union(*(other.streams for other in opened if other is not o))
                stream = rng.choice(
                    [s for s in (f"{prefix}-{i}" for i in range(4 * MAX_OPEN)) if s not in held]
                )
                n = rng.choice((1, 1, 2, 3))
                result = o.tx.append(stream, [NewEvent("Step", {"step": step, "i": i}) for i in range(n)])
                o.positions += result.positions
                o.streams.add(stream)
            elif roll < 0.7 and opened:
                o = opened.pop(rng.randrange(len(opened)))
                if rng.random() < 0.25:
                    o.cm.__exit__(RuntimeError, RuntimeError("rolled back"), None)
                else:
                    o.cm.__exit__(None, None, None)
                    if o.positions:
                        commit_order.append(min(o.positions))
            else:
                f = rng.choice(followers)
                f.catch_up(store)
                check(store, f)
    finally:
        for o in opened:
            o.cm.__exit__(None, None, None)
            if o.positions:
                commit_order.append(min(o.positions))
    for f in followers:
        f.catch_up(store)
        assert f.seen == committed(store), f"seed {seed}: follower (scan={f.by_scan}) missed events"
    return commit_order != sorted(commit_order), len(committed(store))


def check(store: Store, f: Follower) -> None:
    final = committed(store)
    below = [e for e in final if e[0] <= f.after]
    assert f.seen == below, (
        f"follower (scan={f.by_scan}) at {f.after} saw {len(f.seen)} events, "
        f"{len(below)} are committed at or below it: missing {sorted(set(below) - set(f.seen))[:5]}"
    )


@pytest.fixture
def wide_store(backend: str, store_url: str, store: Store) -> Any:
    if backend != "postgres":
        pytest.skip("SQLite runs one writer at a time: no transaction can commit out of order")
    from cqrsctl.store.postgres import PostgresStore

    wide = PostgresStore(store_url, max_connections=MAX_OPEN + 2)
    yield wide
    wide.close()


def test_followers_never_skip_under_random_commit_orders(wide_store: Store) -> None:
    out_of_order = 0
    total = 0
    for seed in SEEDS:
        differed, events = run_schedule(wide_store, seed)
        out_of_order += differed
        total = events
    # The schedules really committed transactions in another order than they allocated.
    assert out_of_order >= len(SEEDS) // 4, f"only {out_of_order} of {len(SEEDS)} schedules reordered commits"
    assert total > 0
