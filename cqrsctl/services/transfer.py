"""Export a store (or part of it) to JSONL and import it back, on any backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..errors import FileAccessError, ValidationError
from ..store import Store, StoredEvent
from .events import upcast_all
from .jsonl import json_objects

if TYPE_CHECKING:
    from ..app import App

IMPORT_BATCH = 1000


def export_events(
    store: Store,
    out: IO[bytes],
    *,
    stream: str | None = None,
    category: str | None = None,
    app: App | None = None,
) -> int:
    """Write events as JSON Lines in global order; returns how many. With `app`, events are
    written as its current code reads them (upcast, with the schema version reached)."""
    if stream is not None:
        events: Iterable[StoredEvent] = store.read_stream(stream)
    else:
        events = store.iter_all(0, 5000, categories=[category] if category else None)
    events = upcast_all(app, events)
    n = 0
    for event in events:
        out.write(orjson.dumps(event.to_dict()) + b"\n")
        n += 1
    return n


def _decode(number: int, d: dict[str, Any]) -> StoredEvent:
    try:
        return StoredEvent(
            global_position=int(d.get("global_position") or 0),
            stream_id=str(d["stream_id"]),
            stream_version=int(d["stream_version"]),
            event_id=str(d["event_id"]),
            event_type=str(d["event_type"]),
            schema_version=int(d.get("schema_version", 1)),
            data=dict(d["data"]),
            metadata=dict(d.get("metadata") or {}),
            recorded_at=datetime.fromisoformat(str(d["recorded_at"]).replace("Z", "+00:00")),
        )
    except KeyError as exc:
        raise ValidationError(f"line {number}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"line {number}: {exc}") from None


def read_export(lines: Iterable[bytes]) -> Iterator[StoredEvent]:
    for number, d in json_objects(lines):
        yield _decode(number, d)


def import_events(
    store: Store,
    events: Iterable[StoredEvent],
    *,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Import exported events in order, keeping ids and stream versions.

    Events whose id is already in the store are skipped, so importing the same file
    twice is a no-op. Returns (imported, skipped). Each batch commits on its own; a
    failed batch leaves the earlier ones in place and can be resumed by re-running.
    """
    imported = seen = 0
    batch: list[StoredEvent] = []

    def flush() -> None:
        nonlocal imported, seen
        with store.transaction() as tx:
            imported += tx.import_events(batch)
        seen += len(batch)
        if on_progress:
            on_progress(len(batch))
        batch.clear()

    for event in events:
        batch.append(event)
        if len(batch) >= IMPORT_BATCH:
            flush()
    if batch:
        flush()
    return imported, seen - imported


def count_export(path: Path) -> int:
    """Validate a whole export file before anything is written; returns its event count."""
    try:
        with path.open("rb") as f:
            return sum(1 for _ in read_export(f))
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {exc.strerror}") from None


def import_file(
    store: Store, path: Path, *, on_progress: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Validate `path`, then import it; see :func:`import_events`."""
    count_export(path)
    with path.open("rb") as f:
        return import_events(store, read_export(f), on_progress=on_progress)
