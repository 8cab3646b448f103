"""Reading and appending raw events, independent of any app."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from ..errors import ConflictError, CqrsError, UsageError, ValidationError
from ..store import AppendResult, ExpectedVersion, NewEvent, Store, StoredEvent, Transaction
from . import contract
from .grouping import Grouping, GroupRun
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


@dataclass
class AppendBatchReport:
    """The appends a batch committed, in order; in groups, also the error of the line that
    stopped it (the lines before it committed)."""

    results: list[AppendResult] = field(default_factory=list)
    failure: CqrsError | None = None


def check_batch(app: App, items: Sequence[AppendItem]) -> None:
    """Refuse a batch with a line whose events the app could not read back (naming the line)."""
    for line, _, new_events, _ in items:
        try:
            contract.check_new_events(app, new_events)
        except ValidationError as exc:
            raise ValidationError(f"line {line}: {exc}") from None


def append_batch(
    store: Store,
    items: Sequence[AppendItem],
    *,
    grouping: Grouping | None = None,
    retries: int = 3,
    on_progress: Callable[[int], None] | None = None,
) -> AppendBatchReport:
    """Append the lines of a batch in order.

    Without `grouping`, all lines commit in one transaction or none does: the first line
    that fails raises its error, naming the line. With it, lines commit in groups, each in a
    savepoint: the first line that fails rolls back alone and ends the batch, and the report
    holds the appends committed before it and its error (see services.grouping)."""
    if grouping is None:
        return AppendBatchReport(_append_atomically(store, items, retries, on_progress))
    report = AppendBatchReport()

    def committed(outcomes: list[AppendResult | CqrsError]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, CqrsError):
                report.failure = outcome
            else:
                report.results.append(outcome)
        if on_progress and outcomes:
            on_progress(len(outcomes))

    GroupRun(
        store,
        _append_line,
        failed=lambda outcome: isinstance(outcome, CqrsError),
        failure=_at_line,
        committed=committed,
        grouping=grouping,
        retries=retries,
    ).run(items)
    return report


def _at_line(item: AppendItem, exc: CqrsError) -> CqrsError:
    exc.args = (f"line {item[0]}: {exc}",)
    return exc


def _append_line(tx: Transaction, item: AppendItem) -> AppendResult | CqrsError:
    _, stream_id, events, expected = item
    try:
        with tx.savepoint():
            return tx.append(stream_id, events, expected)
    except ConflictError:
        raise  # the group's transaction is gone
    except CqrsError as exc:
        return _at_line(item, exc)


def _append_atomically(
    store: Store, items: Sequence[AppendItem], retries: int, on_progress: Callable[[int], None] | None
) -> list[AppendResult]:
    attempts = 0
    while True:
        try:
            with store.transaction(appending=True) as tx:
                results = []
                for item in items:
                    try:
                        results.append(tx.append(*item[1:]))
                    except CqrsError as exc:
                        raise _at_line(item, exc) from None
            if on_progress:
                on_progress(len(items))
            return results
        except ConflictError:  # nothing was committed: run it all again
            attempts += 1
            if attempts > retries:
                raise


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
