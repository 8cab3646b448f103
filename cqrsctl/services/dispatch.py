"""Dispatch commands: validate, load, decide, append, record — one transaction per command,
or a batch's commands in groups (see services.grouping)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..app import Aggregate, App, Command, CommandSpec, Event, apply_new
from ..errors import CommandRaceError, ConcurrencyError, ConflictError, CqrsError, ValidationError
from ..store import AppendResult, NewEvent, Store, Transaction
from ..store.base import new_id
from .aggregates import catch_up, load, snapshot_of
from .grouping import DEFAULT_GROUP, DEFAULT_GROUP_MS, Grouping, GroupRun
from .jsonl import Identifier, Line, validated
from .outbox import write_outbox


@dataclass(slots=True)
class DispatchResult:
    command_id: str
    command: str
    stream_id: str
    version: int
    event_ids: list[str]
    positions: list[int]
    duplicate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "command": self.command,
            "stream_id": self.stream_id,
            "version": self.version,
            "event_ids": self.event_ids,
            "positions": self.positions,
            "duplicate": self.duplicate,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DispatchResult:
        return cls(
            d["command_id"], d["command"], d["stream_id"], d["version"], d["event_ids"], d["positions"], True
        )


@dataclass
class BatchItem:
    line: int
    name: str
    data: dict[str, Any]
    command_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchFailure:
    line: int
    command: str
    exit_code: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "command": self.command,
            "exit_code": self.exit_code,
            "error": self.message,
        }


@dataclass
class BatchReport:
    dispatched: int = 0
    duplicates: int = 0
    failures: list[BatchFailure] = field(default_factory=list)
    results: list[DispatchResult] = field(default_factory=list)

    def add(self, outcome: DispatchResult | BatchFailure) -> None:
        if isinstance(outcome, BatchFailure):
            self.failures.append(outcome)
            return
        self.results.append(outcome)
        if outcome.duplicate:
            self.duplicates += 1
        else:
            self.dispatched += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dispatched": self.dispatched,
            "duplicates": self.duplicates,
            "failed": len(self.failures),
            "failures": [f.to_dict() for f in self.failures],
        }


class Dispatcher:
    """Runs commands of `app` against `store`.

    `retries` bounds how often a command is re-run on fresh state after a
    concurrency conflict; `actor` goes into every event's metadata.
    """

    def __init__(
        self,
        app: App,
        store: Store,
        *,
        retries: int | None = None,
        actor: str | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self.app, self.store = app, store
        self.retries = app.retries if retries is None else retries
        self.actor = actor
        # Aggregates as of their last commit here: a dispatch then reads only the events
        # appended since (by anyone) instead of the whole stream. Handlers must not
        # mutate the aggregate they are given (state changes only through when_ methods).
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Aggregate] = OrderedDict()
        # The aggregate the last command left, until its transaction (or savepoint) ends;
        # and those of a group's commands, until the group commits.
        self._pending: tuple[str, Aggregate] | None = None
        self._staged: dict[str, Aggregate] = {}
        # Hooks run inside the dispatch transaction after the append (outbox, inline work).
        self.after_append: list[Callable[[Transaction, str, list[Event], list[Any]], None]] = []

    def dispatch(
        self,
        command: str | Command,
        data: dict[str, Any] | None = None,
        *,
        command_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> DispatchResult:
        """Dispatch one command by name (with `data`) or as a built Command instance."""
        if isinstance(command, str):
            spec, cmd = self.app.build_command(command, data or {})
        else:
            spec = self._spec_for(command)
            cmd = command
        # Only ids the caller chose can come back, so only those are remembered.
        remember = check_seen = command_id is not None
        command_id = command_id or new_id()
        attempts = 0
        while True:
            self._pending = None
            try:
                # Appending (PostgreSQL: the writer registers in BEGIN's round trip, not
                # in one of its own before the append).
                with self.store.transaction(appending=True) as tx:
                    if attempts:
                        # After a conflict, decide again holding the stream (what the append
                        # takes anyway, until commit): nobody can slip in between, so
                        # dispatchers of one busy aggregate do not starve each other.
                        tx.lock_stream(spec.stream_id(cmd))
                    result = self._run(tx, spec, cmd, command_id, metadata or {}, check_seen, remember)
                self._cache_put(*(self._pending or ()))
                return result
            except (ConcurrencyError, ConflictError):
                attempts += 1
                if attempts > self.retries:
                    raise
                check_seen = True  # a racing duplicate may have committed meanwhile

    def dispatch_in(
        self, tx: Transaction, command: Command, *, command_id: str, metadata: dict[str, Any] | None = None
    ) -> DispatchResult:
        """Dispatch inside the caller's transaction, so that what the caller records (a saga's
        state) commits together with the command's events. A concurrency conflict re-runs the
        handler in the same transaction: each statement there sees the latest commits."""
        spec = self._spec_for(command)
        attempts = 0
        while True:
            try:
                return self._run(tx, spec, command, command_id, metadata or {}, True, True)
            except CommandRaceError:
                raise  # this transaction already holds the command's events: only a rollback undoes them
            except ConcurrencyError:
                attempts += 1
                if attempts > self.retries:
                    raise

    def dispatch_many(
        self,
        items: Iterable[BatchItem],
        *,
        continue_on_error: bool = False,
        on_progress: Callable[[int], None] | None = None,
        group: int = DEFAULT_GROUP,
        group_ms: float = DEFAULT_GROUP_MS,
    ) -> BatchReport:
        """Dispatch items in order; stops at the first failure unless told not to.

        Up to `group` commands commit together, each in a savepoint of its own (one that
        fails rolls back alone), and a transaction takes no new command once it is
        `group_ms` milliseconds old; `group=1` runs one transaction per command. Results,
        and `on_progress`, come only once their transaction has committed (see
        services.grouping for what a group means after a crash or a conflict)."""
        report = BatchReport()
        grouping = Grouping(group, group_ms)

        def committed(outcomes: list[DispatchResult | BatchFailure]) -> None:
            for stream_id, agg in self._staged.items():
                self._cache_put(stream_id, agg)
            self._staged.clear()
            for outcome in outcomes:
                report.add(outcome)
            if on_progress and outcomes:
                on_progress(len(outcomes))

        if grouping.size == 1:
            for item in items:
                committed([self._dispatch_item(item)])
                if report.failures and not continue_on_error:
                    break
            return report
        GroupRun(
            self.store,
            self._dispatch_grouped,
            failed=lambda outcome: isinstance(outcome, BatchFailure),
            failure=lambda item, exc: BatchFailure(item.line, item.name, exc.exit_code, str(exc)),
            committed=committed,
            rolled_back=self._staged.clear,
            grouping=grouping,
            stop_on_failure=not continue_on_error,
            retries=self.retries,
        ).run(items)
        return report

    def _dispatch_item(self, item: BatchItem) -> DispatchResult | BatchFailure:
        try:
            return self.dispatch(item.name, item.data, command_id=item.command_id, metadata=item.metadata)
        except CqrsError as exc:
            return BatchFailure(item.line, item.name, exc.exit_code, str(exc))

    def _dispatch_grouped(self, tx: Transaction, item: BatchItem) -> DispatchResult | BatchFailure:
        """One command of a group, in the group's transaction, in a savepoint of its own."""
        remember = check_seen = item.command_id is not None
        command_id = item.command_id or new_id()
        attempts = 0
        try:
            spec, cmd = self.app.build_command(item.name, item.data)
            while True:
                self._pending = None
                try:
                    with tx.savepoint():
                        if attempts:  # as in dispatch: decide again holding the stream
                            tx.lock_stream(spec.stream_id(cmd))
                        result = self._run(tx, spec, cmd, command_id, item.metadata, check_seen, remember)
                    break
                except ConcurrencyError:  # the savepoint undid the command: run it again
                    attempts += 1
                    if attempts > self.retries:
                        raise
                    check_seen = True
        except ConflictError:
            raise  # the group's transaction is gone
        except CqrsError as exc:
            return BatchFailure(item.line, item.name, exc.exit_code, str(exc))
        if self._pending is not None:
            self._staged[self._pending[0]] = self._pending[1]
        return result

    def _spec_for(self, command: Command) -> CommandSpec:
        for spec in self.app.commands.values():
            if type(command) is spec.cls:
                return spec
        return self.app.command_spec(type(command).__name__)

    def _cache_put(self, stream_id: str | None = None, agg: Aggregate | None = None) -> None:
        # Only committed state enters the cache; a failed attempt leaves the stream out.
        if stream_id is None or agg is None or not self.cache_size:
            return
        self._cache[stream_id] = agg
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _run(
        self,
        tx: Transaction,
        spec: CommandSpec,
        cmd: Command,
        command_id: str,
        metadata: dict[str, Any],
        check_seen: bool,
        remember: bool,
    ) -> DispatchResult:
        if check_seen:
            seen = tx.commands.processed(command_id)
            if seen is not None:
                return DispatchResult.from_dict(seen)
        stream_id = spec.stream_id(cmd)
        # A group's earlier command left this stream's aggregate: it is the head, since this
        # transaction appended the stream's last event and holds the stream until it ends.
        agg = self._staged.pop(stream_id, None)
        if agg is None or type(agg) is not spec.aggregate:
            agg = self._cache.pop(stream_id, None)
            if agg is not None and type(agg) is spec.aggregate:
                catch_up(self.app, tx, agg)
            else:
                agg = load(self.app, tx, spec.aggregate, stream_id)
        events = _decided(spec, cmd.handle(agg))
        if events:
            appended = self._append(tx, spec, agg, stream_id, events, command_id, metadata)
            result = DispatchResult(
                command_id, spec.name, stream_id, appended.version, appended.event_ids, appended.positions
            )
        else:
            result = DispatchResult(command_id, spec.name, stream_id, agg.version, [], [])
        if remember:
            tx.commands.record(command_id, stream_id, result.to_dict())
        self._pending = (stream_id, agg)
        return result

    def _append(
        self,
        tx: Transaction,
        spec: CommandSpec,
        agg: Aggregate,
        stream_id: str,
        events: list[Event],
        command_id: str,
        metadata: dict[str, Any],
    ) -> AppendResult:
        """Append what a command decided, with what commits with it (outbox rows, hooks,
        a snapshot when one is due), and fold it into `agg`."""
        before = agg.version
        meta = {
            **metadata,
            "command_id": command_id,
            "command": spec.name,
            "correlation_id": metadata.get("correlation_id") or command_id,
            "causation_id": metadata.get("causation_id") or command_id,
        }
        actor = metadata.get("actor") or self.actor
        if actor:
            meta["actor"] = actor
        # model_dump(mode="json") without its Python wrapper (about 40 % of its time).
        new = [
            NewEvent(
                e.event_type,
                e.__pydantic_serializer__.to_python(e, mode="json"),
                meta,
                None,
                e.schema_version,
            )
            for e in events
        ]
        appended = tx.append(stream_id, new, before)
        for e in events:
            self.app.events.setdefault(e.event_type, type(e))
        if self.app.publishes:  # the outbox rows commit (or not) with the events
            write_outbox(tx, self.app, stream_id, new, appended)
        for hook in self.after_append:
            hook(tx, stream_id, events, [appended])
        every = (
            self.app.snapshot_every
            if spec.aggregate.snapshot_every is None
            else spec.aggregate.snapshot_every
        )
        apply_new(agg, events, before + 1)
        if every and appended.version // every > before // every:
            tx.snapshots.save(snapshot_of(agg))
        return appended


def _decided(spec: CommandSpec, decided: Event | Iterable[Event] | None) -> list[Event]:
    """What `handle` returned, as a list of events (refusing anything else)."""
    events: list[Event] = (
        [] if decided is None else [decided] if isinstance(decided, Event) else list(decided)
    )
    for e in events:
        if not isinstance(e, Event):
            raise ValidationError(f"{spec.name}.handle returned {type(e).__name__}, not an Event")
    return events


class DispatchLine(Line):
    """One line of `dispatch --file`."""

    command: Identifier | None = None
    data: dict[str, Any] = {}
    id: Identifier | None = None
    metadata: dict[str, Any] = {}


def parse_batch(lines: Iterable[bytes], default_command: str | None = None) -> Iterator[BatchItem]:
    """JSONL of {"command", "data", "id", "metadata"}; a bad line fails before anything is dispatched."""
    for number, line in validated(DispatchLine, lines):
        name = line.command or default_command
        if not name:
            raise ValidationError(f'line {number}: missing "command"')
        yield BatchItem(number, name, line.data, line.id, line.metadata)
