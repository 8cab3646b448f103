"""Reading and appending raw events, independent of any app."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from ..errors import UsageError, ValidationError
from ..store import ExpectedVersion, NewEvent, Store, StoredEvent
from .jsonl import EventType, Identifier, Line, SchemaVersion, StreamId, validated

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
    """Yield events in global order for ever, waiting for new ones as they commit: woken by
    the store when it can (PostgreSQL), after `poll_interval` seconds at the latest."""
    with store.wakeups() as wakeups:
        while True:
            batch = store.read_all(after, FOLLOW_PAGE, categories, types)
            yield from batch
            if batch:
                after = batch[-1].global_position
            if len(batch) < FOLLOW_PAGE:
                wakeups.wait(poll_interval)


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


class AppendLine(Line):
    """One line of `append --file`."""

    stream: StreamId
    type: EventType
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    event_id: Identifier | None = None
    expected_version: Annotated[int, Field(ge=0, le=2**63 - 1)] | Literal["any", "no-stream", "exists"] = (
        "any"
    )
    schema_version: SchemaVersion = 1


def parse_append_lines(raw: bytes) -> list[AppendItem]:
    """Parse a JSONL append batch completely (so a bad line writes nothing)."""
    items: list[AppendItem] = [
        (number, line.stream, [NewEvent(line.type, line.data, line.metadata, line.event_id, line.schema_version)],
         line.expected_version)
        for number, line in validated(AppendLine, raw.splitlines())
    ]  # fmt: skip
    if not items:
        raise ValidationError("the batch has no events")
    return items
