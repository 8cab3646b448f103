"""A small app for projection and daemon tests: events appended straight to the store,
projections with an independent oracle (a plain fold of the events in Python).

Used in-process and as `--app tests/projection_support.py` by daemon subprocesses.
Environment knobs (for subprocesses): CQRSCTL_TEST_POISON_FLAG (a file: while it exists,
events with "poison": true make `totals` raise) and CQRSCTL_TEST_TRACE (a file that
`traced_*` projections append handler entry/exit lines to).
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Any

from cqrsctl.app import App
from cqrsctl.projection import EventView, Projection, ReadModel, Table
from cqrsctl.store import NewEvent, Store

app = App("projection-tests")


class Totals(Projection, name="totals", version=1):
    """Per stream: the sum of `n` and the count of events (Added and Removed)."""

    tables = {"totals": Table({"stream": "text", "total": "int", "events": "int"}, key=["stream"])}

    def on_Added(self, event: EventView, rm: ReadModel) -> None:
        self._add(event, rm, int(event.data["n"]))

    def on_Removed(self, event: EventView, rm: ReadModel) -> None:
        self._add(event, rm, -int(event.data["n"]))

    def _add(self, event: EventView, rm: ReadModel, n: int) -> None:
        flag = os.environ.get("CQRSCTL_TEST_POISON_FLAG")
        if event.data.get("poison") and flag and os.path.exists(flag):
            raise RuntimeError(f"poison at {event.position}")
        row = rm.get("totals", stream=event.stream_id) or {"total": 0, "events": 0}
        rm.upsert(
            "totals", {"stream": event.stream_id, "total": row["total"] + n, "events": row["events"] + 1}
        )


class Counts(Projection, name="counts", version=1):
    """How many events of each type: never fails, for 'other projections go on'."""

    tables = {"counts": Table({"type": "text", "n": "int", "last": "int"}, key=["type"])}

    def on_Added(self, event: EventView, rm: ReadModel) -> None:
        self._count(event, rm)

    def on_Removed(self, event: EventView, rm: ReadModel) -> None:
        self._count(event, rm)

    def _count(self, event: EventView, rm: ReadModel) -> None:
        row = rm.get("counts", type=event.type) or {"n": 0}
        rm.upsert("counts", {"type": event.type, "n": row["n"] + 1, "last": event.position})


def _traced(name: str) -> type[Projection]:
    """A projection whose handler records entry and exit (O_APPEND lines: one global order)."""

    def on_Added(self: Projection, event: EventView, rm: ReadModel) -> None:
        path = os.environ.get("CQRSCTL_TEST_TRACE")
        if path:
            with open(path, "a") as f:
                f.write(f"enter {name} {os.getpid()} {event.position}\n")
        row = rm.get(name, stream=event.stream_id) or {"events": 0}
        rm.upsert(name, {"stream": event.stream_id, "events": row["events"] + 1})
        if path:
            with open(path, "a") as f:
                f.write(f"exit {name} {os.getpid()} {event.position}\n")

    return type(
        f"Traced_{name}",
        (Projection,),
        {"tables": {name: Table({"stream": "text", "events": "int"}, key=["stream"])}, "on_Added": on_Added},
        name=name,
    )


for _cls in (Totals, Counts):
    app.projection(_cls)

TRACED = [f"traced_{i}" for i in range(4)]
traced_app = App("traced-tests")
for _name in TRACED:
    traced_app.projection(_traced(_name))


# -- filling a store and the oracle --------------------------------------------------------


def append_random(
    store: Store, count: int, streams: int = 20, seed: int | None = None, batch: int = 50
) -> None:
    """Append `count` Added/Removed events over `streams` streams, `batch` per transaction."""
    rng = random.Random(seed)
    done = 0
    while done < count:
        n = min(batch, count - done)
        stream = f"S-{rng.randrange(streams)}"
        events = [
            NewEvent("Added" if rng.random() < 0.7 else "Removed", {"n": rng.randrange(1, 100)})
            for _ in range(n)
        ]
        store.append(stream, events)
        done += n


def oracle_totals(store: Store, upto: int | None = None) -> dict[str, tuple[int, int]]:
    """stream -> (total, events), folded from the events in plain Python."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in store.iter_all(types=["Added", "Removed"]):
        if upto is not None and e.global_position > upto:
            break
        row = out[e.stream_id]
        row[0] += e.data["n"] if e.event_type == "Added" else -e.data["n"]
        row[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def table_totals(store: Store) -> dict[str, tuple[int, int]]:
    with store.reader() as tx:
        if not tx.read_models.table_exists("totals"):
            return {}
        rows = tx.read_models.execute("SELECT stream, total, events FROM totals")
    return {r["stream"]: (r["total"], r["events"]) for r in rows}


def checkpoint_and_totals(store: Store) -> tuple[int, dict[str, tuple[int, int]]]:
    """The checkpoint and the table read in ONE transaction (a consistent pair)."""
    with store.transaction() as tx:
        cp = tx.tracking.get("totals")
        if cp is None or not tx.read_models.table_exists("totals"):
            return 0, {}
        rows = tx.read_models.execute("SELECT stream, total, events FROM totals")
    return cp.position, {r["stream"]: (r["total"], r["events"]) for r in rows}


def read_table(store: Store, table: str, order: str) -> list[dict[str, Any]]:
    with store.reader() as tx:
        return tx.read_models.execute(f"SELECT * FROM {table} ORDER BY {order}")
