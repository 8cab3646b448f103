"""Reading and appending raw events, independent of any app."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..errors import UsageError, ValidationError
from ..store import ExpectedVersion, NewEvent, Store, StoredEvent, parse_expected
from .jsonl import json_objects

if TYPE_CHECKING:
    from ..app import App

FOLLOW_PAGE = 500


def follow(
    store: Store,
    after: int = 0,
    categories: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    poll_interval: float = 0.2,
) -> Iterator[StoredEvent]:
    """Yield events in global order for ever, waiting for new ones as they commit."""
    while True:
        batch = store.read_all(after, FOLLOW_PAGE, categories, types)
        yield from batch
        if batch:
            after = batch[-1].global_position
        if len(batch) < FOLLOW_PAGE:
            time.sleep(poll_interval)


def upcast_all(app: App | None, events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
    """`events` as the app's current code reads them: data and schema version after its
    upcasters (see App.upcast_stored). Without an app, or an app with no upcasters, the
    events pass through untouched."""
    if app is None or not app.upcasters:
        yield from events
        return
    upcast = app.upcast_stored
    for event in events:
        yield upcast(event)


def start_position(store: Store, where: str) -> int:
    """`start`, `end` or a global position as the position to read after."""
    if where == "start":
        return 0
    if where == "end":
        return store.head()
    if where.isdigit():
        return int(where)
    raise UsageError(f"--from takes start, end or a global position, not {where!r}")


AppendItem = tuple[int, str, list[NewEvent], ExpectedVersion]


def parse_append_lines(raw: bytes) -> list[AppendItem]:
    """Parse a JSONL append batch completely (so a bad line writes nothing)."""
    items: list[AppendItem] = []
    for number, d in json_objects(raw.splitlines()):
        stream, event_type, data = d.get("stream"), d.get("type"), d.get("data", {})
        if not isinstance(stream, str) or not stream:
            raise ValidationError(f'line {number}: missing "stream"')
        if not isinstance(event_type, str) or not event_type:
            raise ValidationError(f'line {number}: missing "type"')
        metadata = d.get("metadata") or {}
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            raise ValidationError(f'line {number}: "data" and "metadata" must be JSON objects')
        try:
            expected = parse_expected(d.get("expected_version"))
        except Exception as exc:
            raise ValidationError(f"line {number}: {exc}") from None
        event = NewEvent(event_type, data, metadata, d.get("event_id"), int(d.get("schema_version", 1)))
        items.append((number, stream, [event], expected))
    if not items:
        raise ValidationError("the batch has no events")
    return items
