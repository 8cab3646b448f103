"""Reading and appending raw events, independent of any app."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import ValidationError
from ..store import ExpectedVersion, NewEvent, Store, StoredEvent
from .jsonl import EventType, Identifier, Line, SchemaVersion, StreamId, validated

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


AppendItem = tuple[int, str, list[NewEvent], ExpectedVersion]


class AppendLine(Line):
    """One line of `append --file`."""

    stream: StreamId
    type: EventType
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    event_id: Identifier | None = None
    expected_version: Annotated[int, Field(ge=0, le=2**63 - 1)] | Literal["any", "no-stream", "exists"] = "any"
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
