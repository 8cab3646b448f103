"""Aggregates from their streams: fold a stream (from a snapshot when there is a usable
one), catch a folded aggregate up, and take its snapshot."""

from __future__ import annotations

from typing import Any

from ..app import Aggregate, App, fold, fold_rows, folds_data, new_aggregate
from ..store import Snapshot, Transaction
from ..store.base import utcnow


def snapshot_of(agg: Aggregate) -> Snapshot:
    cls = type(agg)
    return Snapshot(agg.stream_id, cls.__name__, agg.version, cls.snapshot_schema, agg.state(), utcnow())


def load(
    app: App,
    tx: Transaction,
    cls: type[Aggregate],
    stream_id: str,
    *,
    at_version: int | None = None,
    as_of: Any = None,
    use_snapshot: bool = True,
) -> Aggregate:
    """Fold `stream_id` into a `cls`, starting from a usable snapshot when there is one."""
    if use_snapshot and as_of is None and (cls.snapshot_every or app.snapshot_every):
        if folds_data(app, cls):
            # The snapshot and the events after it in one read.
            version, state, rows = tx.read_from_snapshot(stream_id, cls.snapshot_schema, at_version)
            agg = new_aggregate(cls, stream_id, version, state)
            return fold_rows(app, agg, rows) if rows else agg
        snap = tx.snapshots.usable(stream_id, cls.snapshot_schema, at_version)
        if snap is not None:
            return catch_up(app, tx, new_aggregate(cls, stream_id, snap.version, snap.state), at_version)
    return catch_up(app, tx, new_aggregate(cls, stream_id), at_version, as_of)


def catch_up(
    app: App, tx: Transaction, agg: Aggregate, at_version: int | None = None, as_of: Any = None
) -> Aggregate:
    """Fold the events after `agg.version` into it (up to `at_version` / `as_of`)."""
    if folds_data(app, type(agg)):
        return fold_rows(app, agg, tx.read_stream_data(agg.stream_id, agg.version + 1, at_version, as_of))
    return fold(app, agg, tx.read_stream(agg.stream_id, agg.version + 1, at_version, None, as_of))
