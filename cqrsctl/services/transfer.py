"""Export a store (or part of it) to JSONL and import it back, on any backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import orjson
from pydantic import Field, field_validator

from ..errors import FileAccessError
from ..store import Store, StoredEvent
from ..times import parse_iso
from . import journal
from .events import upcast_all
from .jsonl import EventType, Identifier, Line, Position, SchemaVersion, StreamId, validated

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


class ImportLine(Line):
    """One line of an export (what `cqrsctl export` writes); `global_position` is the
    event's position in the source store, kept only for reading: the target gives its own."""

    global_position: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    stream_id: StreamId
    stream_version: Position
    event_id: Identifier
    event_type: EventType
    schema_version: SchemaVersion = 1
    data: dict[str, Any]
    metadata: dict[str, Any] = {}
    recorded_at: str

    @field_validator("recorded_at")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        try:
            parse_iso(value, naive_is_utc=False)
        except ValueError:
            raise ValueError("not an ISO 8601 timestamp with a time zone (Z or +hh:mm)") from None
        return value

    def event(self) -> StoredEvent:
        at = parse_iso(self.recorded_at)
        return StoredEvent(
            self.global_position, self.stream_id, self.stream_version, self.event_id, self.event_type,
            self.schema_version, self.data, self.metadata, at,
        )  # fmt: skip


def read_export(lines: Iterable[bytes]) -> Iterator[tuple[int, StoredEvent]]:
    """(line number, event) for each line of an export; the first bad line raises
    ValidationError naming its number and field."""
    for number, line in validated(ImportLine, lines):
        yield number, line.event()


@dataclass
class ImportResult:
    imported: int = 0
    skipped: int = 0  # already in the store with the same content
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"imported": self.imported, "skipped": self.skipped}
        return {**out, "dry_run": True} if self.dry_run else out


class _Preview(Exception):
    def __init__(self, result: ImportResult) -> None:
        self.result = result


def import_events(
    store: Store,
    events: Iterable[tuple[int, StoredEvent]],
    *,
    source: str = "",
    dry_run: bool = False,
    actor: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import validated events, `(line number, event)` in order, keeping ids and stream
    versions: all of them or none, in one transaction (journaled, with `source`).

    Events whose id is already in the store with the same content are skipped, so
    importing the same file twice imports nothing; an id there with other content, or a
    stream version that does not follow the store's, fails naming the line (exit 4) and
    leaves the store as it was. Memory stays flat: events are inserted in batches. With
    `dry_run`, everything is checked and inserted, then rolled back: the result says
    exactly what an import would do.
    """
    result = ImportResult(dry_run=dry_run)
    batch: list[StoredEvent] = []
    lines: list[int] = []
    try:
        with store.transaction(appending=True) as tx:
            tx.lock_all_streams()

            def flush() -> None:
                n = tx.import_events(batch, lines)
                result.imported += n
                result.skipped += len(batch) - n
                if on_progress:
                    on_progress(len(batch))
                batch.clear()
                lines.clear()

            for number, event in events:
                batch.append(event)
                lines.append(number)
                if len(batch) >= IMPORT_BATCH:
                    flush()
            if batch:
                flush()
            if dry_run:
                raise _Preview(result)
            journal.record(tx, "import", {"source": source}, result.to_dict(), actor)
    except _Preview as preview:
        return preview.result
    return result


def check_export(path: Path) -> int:
    """Validate a whole export file before anything is written; returns its event count."""
    try:
        with path.open("rb") as f:
            return sum(1 for _ in read_export(f))
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {exc.strerror}") from None


def import_file(
    store: Store,
    path: Path,
    *,
    dry_run: bool = False,
    actor: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Validate all of `path` (nothing is written if a line is bad), then import it in one
    transaction; see :func:`import_events`."""
    check_export(path)
    try:
        with path.open("rb") as f:
            return import_events(
                store, read_export(f), source=str(path), dry_run=dry_run, actor=actor, on_progress=on_progress
            )
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {exc.strerror}") from None
