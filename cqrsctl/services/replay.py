"""Replay a stream into state: an app's aggregate, or a generic merge of event data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..app import App, fold, new_aggregate
from ..errors import NotFoundError, UsageError
from ..store import Snapshot, Store, StoredEvent, iso
from .aggregates import load, snapshot_of
from .events import upcast_all


@dataclass
class Replay:
    stream_id: str
    aggregate: str  # class name, or "generic"
    version: int
    state: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "aggregate": self.aggregate,
            "version": self.version,
            "state": self.state,
        }


def _generic(events: list[StoredEvent]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for e in events:
        state.update(e.data)
    return state


def replay(
    store: Store,
    app: App | None,
    stream_id: str,
    *,
    at_version: int | None = None,
    as_of: datetime | None = None,
    use_snapshot: bool = True,
) -> Replay:
    """The state of `stream_id` at its head, at a version, or as of a time."""
    cls = app.aggregate_for(stream_id) if app else None
    # Events are only ever appended: whatever commits between the statements below, they
    # fold a state the stream really had, so they need no transaction around them.
    with store.reader(consistent=False) as tx:
        if app is not None and cls is not None:
            agg = load(app, tx, cls, stream_id, at_version=at_version, as_of=as_of, use_snapshot=use_snapshot)
            version, state, kind = agg.version, agg.state(), cls.__name__
        else:
            events = list(upcast_all(app, tx.read_stream(stream_id, 1, at_version, None, as_of)))
            version, state, kind = (events[-1].stream_version if events else 0), _generic(events), "generic"
        # Only a short read asks for the head (one statement fewer for the common case).
        if version == 0 or (at_version is not None and version < at_version):
            _check_exists(stream_id, tx.stream_version(stream_id), at_version)
    if version == 0:  # the stream exists, but not yet at that time
        raise NotFoundError(f"stream {stream_id!r} has no events as of {iso(as_of) if as_of else as_of}")
    return Replay(stream_id, kind, version, state)


def _check_exists(stream_id: str, head: int, at_version: int | None) -> None:
    """A missing stream or a version past its head is not found, rather than a silent head state."""
    if head == 0:
        raise NotFoundError(f"stream {stream_id!r} not found")
    if at_version is not None and at_version > head:
        raise NotFoundError(f"stream {stream_id!r} is at version {head}; it has no version {at_version}")


@dataclass
class Step:
    event: StoredEvent
    state: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event.to_dict(), "state": self.state}


def history(
    store: Store,
    app: App | None,
    stream_id: str,
    *,
    at_version: int | None = None,
    as_of: datetime | None = None,
    raw: bool = False,
) -> list[Step]:
    """Each event of the stream with the state right after it; the events as the app reads
    them (upcast), or as stored with `raw`."""
    with store.reader() as tx:
        _check_exists(stream_id, tx.stream_version(stream_id), at_version)
        events = tx.read_stream(stream_id, 1, at_version, None, as_of)
    if not events:
        raise NotFoundError(f"stream {stream_id!r} has no events as of {iso(as_of) if as_of else as_of}")
    cls = app.aggregate_for(stream_id) if app else None
    steps = []
    if app is not None and cls is not None:
        agg = new_aggregate(cls, stream_id)
        for e in events:
            fold(app, agg, [e])
            steps.append(Step(e if raw else app.upcast_stored(e), agg.state()))
        return steps
    state: dict[str, Any] = {}
    for e in events if raw else upcast_all(app, events):
        state = {**state, **e.data}
        steps.append(Step(e, state))
    return steps


def parse_range(text: str) -> tuple[int, int]:
    a, sep, b = text.partition("..")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit():
        raise UsageError(f"--diff expects A..B with two versions, e.g. 3..7; got {text!r}")
    lo, hi = int(a), int(b)
    if lo > hi:
        raise UsageError(f"--diff {text}: the first version must not be after the second")
    return lo, hi


def diff(store: Store, app: App | None, stream_id: str, lo: int, hi: int) -> dict[str, Any]:
    """Fields that differ between the state at version `lo` and at `hi`."""
    _check_exists(stream_id, store.stream_version(stream_id), hi)
    a = replay(store, app, stream_id, at_version=lo).state if lo > 0 else {}
    b = replay(store, app, stream_id, at_version=hi).state
    changes = {k: {"from": a.get(k), "to": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    return {"stream_id": stream_id, "from_version": lo, "to_version": hi, "changes": changes}


def take_snapshot(store: Store, app: App, stream_id: str) -> Snapshot:
    """Fold the stream from its start and store a snapshot of the result."""
    cls = app.aggregate_for(stream_id)
    if cls is None:
        raise NotFoundError(f"no aggregate of the app handles stream {stream_id!r}")
    with store.transaction() as tx:
        if tx.stream_version(stream_id) == 0:
            raise NotFoundError(f"stream {stream_id!r} not found")
        snapshot = snapshot_of(load(app, tx, cls, stream_id, use_snapshot=False))
        tx.snapshots.save(snapshot)
    return snapshot


def list_snapshots(store: Store, limit: int | None = None) -> list[Snapshot]:
    with store.reader() as tx:
        return tx.snapshots.select(limit)


def delete_snapshots(store: Store, stream_id: str | None = None, *, actor: str | None = None) -> int:
    """Delete one stream's snapshot, or all (None); journaled. Returns how many."""
    from .journal import record

    with store.transaction() as tx:
        n = tx.snapshots.delete(stream_id)
        record(tx, "snapshots delete", {"stream": stream_id, "all": stream_id is None}, {"deleted": n}, actor)
        return n
