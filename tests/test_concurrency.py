"""Sixteen writer processes and two followers at once (SPEC §3.1 and §3.4), on both backends.

Half the writers fight over a few hot streams with exact expected versions (read the
version, append at it, retry on a conflict); the rest each own their streams. Some
appends are rolled back after taking their positions, and some transactions linger before
committing, so commits overtake each other. Meanwhile two readers follow
`global_position` from 0: one with `read_all(after, limit)` like `events --follow`, one
with `tracking.head()` then `scan(after, until=head)` like a projection. At the end each
must have seen exactly the store's final sequence: an event that became visible only after
a reader had moved past its position would be missing.

`CQRSCTL_STRESS=1` scales the run up.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cqrsctl.errors import ConcurrencyError
from cqrsctl.store import NO_STREAM, ExpectedVersion, NewEvent, Store, open_store

STRESS = os.environ.get("CQRSCTL_STRESS") == "1"
WRITERS = 16
APPENDS_PER_WRITER = 400 if STRESS else 20
HOT_STREAMS = 2
STREAMS_PER_OWNER = 6
PAGE = 37  # not a divisor of anything, so pages end mid-batch
BUDGET_S = 900.0 if STRESS else 180.0


def write(
    url: str, index: int, hot: bool, appends: int, budget_s: float, ready: Any, go: Any, results: Any
) -> None:
    """Body of one writer process: `appends` successful appends, then report.

    Any exception other than ConcurrencyError is recorded and ends the writer, so the
    parent can show it instead of waiting for a process that died quietly.
    """
    deadline = time.monotonic() + budget_s
    committed: list[tuple[str, list[str], list[int], int]] = []
    conflicts = rolled_back = 0
    errors: list[str] = []
    try:
        with open_store(url) as store:
            ready.put(index)
            if not go.wait(budget_s):
                raise TimeoutError("the start signal never came")
            rng = random.Random(index)
            own_versions: dict[str, int] = defaultdict(int)
            while len(committed) < appends:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(committed)} of {appends} appends within {budget_s}s")
                if hot:
                    stream = f"Hot-{rng.randrange(HOT_STREAMS)}"
                    expected: ExpectedVersion = store.stream_version(stream)
                else:
                    stream = f"Own{index}-{rng.randrange(STREAMS_PER_OWNER)}"
                    expected = own_versions[stream] or NO_STREAM
                seq = len(committed)
                batch = [
                    NewEvent("Ticked", {"writer": index, "seq": seq, "i": i})
                    for i in range(rng.choice((1, 1, 2, 3)))
                ]
                fate = rng.random()
                try:
                    if fate >= 0.6:  # the transaction of Store.append (PostgreSQL: one round trip)
                        result = store.append(stream, batch, expected)
                    else:
                        with store.transaction(appending=True) as tx:
                            result = tx.append(stream, batch, expected)
                            if fate < 0.1:
                                raise Abandon
                            if fate < 0.2:
                                time.sleep(rng.uniform(0.001, 0.01))  # commit after later appends
                except ConcurrencyError:
                    conflicts += 1
                    continue
                except Abandon:
                    rolled_back += 1
                    continue
                own_versions[stream] = result.version
                committed.append((stream, result.event_ids, result.positions, result.version))
    except Exception:
        errors.append(f"writer {index}: {traceback.format_exc()}")
    results.put(
        {
            "index": index, "hot": hot, "committed": committed, "conflicts": conflicts,
            "rolled_back": rolled_back, "errors": errors,
        }
    )  # fmt: skip


class Abandon(Exception):
    """Raised inside an append's transaction to roll it back after it took positions."""


@dataclass
class Follower:
    """Follows the store from position 0 until the writers are done and it has caught up."""

    url: str
    writers_done: threading.Event
    deadline: float
    by_scan: bool = False
    seen: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    def run(self) -> None:
        try:
            with open_store(self.url) as store:
                self._follow(store)
        except Exception:
            self.error = traceback.format_exc()

    def _follow(self, store: Store) -> None:
        after = 0
        while True:
            # Read the flag before the page: if the writers had all exited by then, an
            # empty page means there is nothing left to see.
            done = self.writers_done.is_set()
            if self.by_scan:
                with store.reader() as tx:
                    head = tx.tracking.head()
                    rows = tx.tracking.scan(after, PAGE, until=head)
                self.seen += [(r[0], r[8]) for r in rows]
                moved = rows[-1][0] if len(rows) == PAGE else max(after, head)
                if moved != after:
                    after = moved
                    continue
            else:
                page = store.read_all(after, PAGE)
                if page:
                    self.seen += [(e.global_position, e.event_id) for e in page]
                    after = page[-1].global_position
                    continue
            if done and store.head() == after:
                return
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"reader stuck at position {after}, head is {store.head()}")
            # Nothing new yet: wait for news (the writers finishing) or poll again shortly.
            self.writers_done.wait(0.005)


def wait_until_ready(writers: list[Any], ready: Any, deadline: float) -> None:
    # Starting a spawned process takes a while; release them together so they overlap.
    waiting = {p.name for p in writers}
    while waiting:
        try:
            waiting.discard(f"writer-{ready.get(timeout=0.5)}")
        except queue.Empty:
            dead = [p.name for p in writers if p.exitcode is not None]
            assert not dead, f"{dead} exited before starting"
            assert time.monotonic() < deadline, f"{sorted(waiting)} never became ready"


def test_concurrent_writers_and_a_gap_free_follower(store: Store, store_url: str) -> None:
    deadline = time.monotonic() + BUDGET_S
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    go = ctx.Event()
    results = ctx.Queue()
    writers = [
        ctx.Process(
            target=write,
            args=(store_url, i, i % 2 == 0, APPENDS_PER_WRITER, BUDGET_S, ready, go, results),
            name=f"writer-{i}",
            daemon=True,
        )
        for i in range(WRITERS)
    ]
    writers_done = threading.Event()
    followers = [Follower(store_url, writers_done, deadline, by_scan) for by_scan in (False, True)]
    readers = [
        threading.Thread(target=f.run, name=f"follower-{i}", daemon=True) for i, f in enumerate(followers)
    ]
    outcomes: list[dict[str, Any]] = []
    try:
        for p in writers:
            p.start()
        for reader in readers:
            reader.start()
        wait_until_ready(writers, ready, deadline)
        go.set()
        for _ in writers:
            try:
                outcomes.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(outcomes)} of {WRITERS} writers reported within {BUDGET_S}s"
                ) from None
        for p in writers:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    finally:
        writers_done.set()
        for p in writers:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        ready.close()
    for reader in readers:
        reader.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not reader.is_alive(), f"{reader.name} did not finish before the deadline"

    errors = [e for o in outcomes for e in o["errors"]]
    assert not errors, "writers failed with something other than a concurrency conflict:\n" + "\n".join(
        errors
    )
    for follower in followers:
        assert follower.error is None, follower.error
    assert sum(o["rolled_back"] for o in outcomes) > 0, "no append was rolled back"
    for o in outcomes:
        assert len(o["committed"]) == APPENDS_PER_WRITER
        if not o["hot"]:
            assert o["conflicts"] == 0, f"writer {o['index']} conflicted on streams only it writes"

    final = list(store.iter_all(page=500))
    final_order = [(e.global_position, e.event_id) for e in final]
    positions = [p for p, _ in final_order]
    assert positions == sorted(set(positions)), "global positions are not strictly increasing"

    # Every successful append is stored, at the positions and versions it reported; nothing else is.
    reported: dict[str, tuple[int, str, int]] = {}
    last_version: dict[str, int] = defaultdict(int)
    for o in outcomes:
        for stream, event_ids, event_positions, version in o["committed"]:
            first_version = version - len(event_ids) + 1
            for i, (event_id, position) in enumerate(zip(event_ids, event_positions, strict=True)):
                reported[event_id] = (position, stream, first_version + i)
            last_version[stream] = max(last_version[stream], version)
    assert len(reported) == len(final) == store.counts()["events"]
    assert {e.event_id: (e.global_position, e.stream_id, e.stream_version) for e in final} == reported

    # Every stream is 1..N with no gap, in position order.
    versions: dict[str, list[int]] = defaultdict(list)
    for e in final:
        versions[e.stream_id].append(e.stream_version)
    assert set(versions) == set(last_version)
    for stream, found in versions.items():
        assert found == list(range(1, len(found) + 1)), f"{stream} has versions {found}"
        assert store.stream_version(stream) == len(found) == last_version[stream]

    # Each follower saw each committed event once, in the final order: it never passed
    # over a position that was filled in after it had read beyond it.
    for follower in followers:
        if follower.seen != final_order:
            missing = sorted(set(final_order) - set(follower.seen))
            extra = len(follower.seen) - len(set(follower.seen))
            raise AssertionError(
                f"follower (scan={follower.by_scan}) saw {len(follower.seen)} events, store has "
                f"{len(final_order)}; missed {len(missing)} (first {missing[:5]}), {extra} seen twice"
            )
