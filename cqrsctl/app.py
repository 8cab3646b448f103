"""The app model: what users write. Commands, events and aggregates are pydantic models;
an :class:`App` collects them with decorators. Nothing here touches a database."""

from __future__ import annotations

import hashlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .errors import AppError, DecodeError, DomainError, NotFoundError, UsageError, ValidationError
from .projection import Projection, Table
from .store import StoredEvent, category_of
from .store.base import FoldRow, stored_event
from .store.tracking import SAGA_CHECKPOINT, is_core

__all__ = ["Aggregate", "App", "Command", "DomainError", "Event", "Projection", "Query", "Table"]

T = TypeVar("T")
P = TypeVar("P", bound="Projection")


class Event(BaseModel):
    """A fact that happened. The stored type name is the class name unless `event_type=` is given.

    `class Renamed(Event, event_type="AccountRenamed", schema_version=2): ...`
    """

    model_config = ConfigDict(extra="ignore")

    event_type: ClassVar[str] = "Event"
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, event_type: str | None = None, schema_version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = event_type or cls.__name__
        cls.schema_version = schema_version


class Aggregate(BaseModel):
    """State folded from one stream. Define `when_<EventType>(self, event)` methods to apply events.

    `class Account(Aggregate, category="Account", snapshot_every=100): ...`
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=False, arbitrary_types_allowed=True)

    category: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    snapshot_schema: ClassVar[str] = ""
    _handlers: ClassVar[dict[str, Callable[..., None]]] = {}
    _event_classes: ClassVar[dict[str, type[Event]]] = {}
    # Whether every handler takes a registered event class (see folds_data).
    _typed_handlers: ClassVar[bool] = True
    _snapshot_version: ClassVar[int] = 1

    # The stream id and version live in __pydantic_private__ as "_stream_id" and
    # "_version", set by new_aggregate. They are not declared as PrivateAttrs, nor set by
    # a model_post_init: pydantic then calls Python on every construction, which made
    # building an aggregate (each replay, each uncached dispatch) four times as costly as
    # validating its fields (a model_post_init alone, a fifth of it). An aggregate built
    # otherwise (`Account()`) has neither: it reads as stream "" at version 0.

    def __init_subclass__(
        cls,
        category: str | None = None,
        snapshot_every: int | None = None,
        snapshot_version: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.category = category or cls.__name__
        if "-" in cls.category:
            raise UsageError(f"aggregate category {cls.category!r} must not contain '-'")
        if snapshot_every is not None:
            cls.snapshot_every = snapshot_every
        cls._snapshot_version = snapshot_version
        cls._handlers = {}
        cls._event_classes = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # The schema fingerprint retires snapshots taken with another field layout.
        shape = repr(sorted((name, repr(f.annotation)) for name, f in cls.model_fields.items()))
        cls.snapshot_schema = f"{cls._snapshot_version}:{hashlib.sha1(shape.encode()).hexdigest()[:12]}"

    @classmethod
    def _resolve_handlers(cls) -> None:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("when_"):
                continue
            event_type = name[5:]
            cls._handlers[event_type] = fn
            try:
                hints = typing.get_type_hints(fn)
            except Exception:  # unresolvable forward reference: the handler gets raw data
                hints = {}
            params = [p for p in inspect.signature(fn).parameters if p != "self"]
            hint = hints.get(params[0]) if params else None
            if isinstance(hint, type) and issubclass(hint, Event):
                cls._event_classes[hint.event_type] = hint
        cls._typed_handlers = cls._handlers.keys() <= cls._event_classes.keys()

    @classmethod
    def handlers(cls) -> dict[str, Callable[..., None]]:
        if not cls._handlers:
            cls._resolve_handlers()
        return cls._handlers

    @classmethod
    def event_classes(cls) -> dict[str, type[Event]]:
        cls.handlers()
        return cls._event_classes

    # Private attributes are read through the private dict: pydantic's generic
    # attribute lookup costs microseconds, and these sit on the dispatch hot path.
    @property
    def stream_id(self) -> str:
        try:
            return self.__pydantic_private__["_stream_id"]  # type: ignore[index,no-any-return]
        except (TypeError, KeyError):  # not built by new_aggregate
            return ""

    @property
    def version(self) -> int:
        """The stream version this state reflects; 0 when the stream does not exist."""
        try:
            return self.__pydantic_private__["_version"]  # type: ignore[index,no-any-return]
        except (TypeError, KeyError):
            return 0

    @property
    def exists(self) -> bool:
        return self.version > 0

    def state(self) -> dict[str, Any]:
        # model_dump(mode="json") without its Python wrapper (a quarter of its time).
        return self.__pydantic_serializer__.to_python(self, mode="json")  # type: ignore[no-any-return]


class Command(BaseModel):
    """An intention. Validated with pydantic; `handle(aggregate)` returns the events it decides."""

    model_config = ConfigDict(extra="forbid")

    def handle(self, aggregate: Any) -> list[Event] | Event | None:
        raise NotImplementedError(f"{type(self).__name__}.handle is not defined")


@dataclass
class CommandSpec:
    name: str
    cls: type[Command]
    aggregate: type[Aggregate]
    stream: Callable[[Any], Any]  # the aggregate id, made text

    def stream_id(self, command: Command) -> str:
        return f"{self.aggregate.category}-{self.stream(command)!s}"


@dataclass
class Query:
    name: str
    fn: Callable[..., Any]
    params: dict[str, tuple[TypeAdapter[Any], Any]] = field(default_factory=dict)
    doc: str = ""

    def coerce(self, raw: dict[str, str]) -> dict[str, Any]:
        unknown = set(raw) - set(self.params)
        if unknown:
            raise ValidationError(
                f"query {self.name!r} has no parameter {sorted(unknown)[0]!r}"
                f" (parameters: {', '.join(self.params) or 'none'})"
            )
        out: dict[str, Any] = {}
        for name, (adapter, default) in self.params.items():
            if name in raw:
                try:
                    out[name] = adapter.validate_strings(raw[name])
                except pydantic.ValidationError as exc:
                    raise ValidationError(
                        f"query {self.name!r} parameter {name!r}: {exc.errors()[0]['msg']}"
                    ) from None
            elif default is inspect.Parameter.empty:
                raise ValidationError(f"query {self.name!r} needs --param {name}=…")
        return out


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Publication:
    """Where a published event goes: `topic` and `key` are fixed strings or functions of the
    stored event; None means the defaults `<category>.events` and the stream id."""

    topic: str | Callable[[StoredEvent], str] | None = None
    key: str | Callable[[StoredEvent], str] | None = None

    def route(self, event: StoredEvent) -> tuple[str, str]:
        topic = self.topic(event) if callable(self.topic) else self.topic or f"{event.category}.events"
        key = self.key(event) if callable(self.key) else self.key or event.stream_id
        return str(topic), str(key)


class App:
    """Your domain: its commands, events, aggregates, queries, upcasters, projections, sagas,
    reactions and outbox routes, registered on one object that every command loads."""

    def __init__(
        self,
        name: str,
        *,
        snapshot_every: int | None = None,
        retries: int = 3,
        outbox_format: str = "cqrsctl",
    ) -> None:
        self.name = name
        # Message format of every sink whose URL has no `?format=` (see cqrsctl.sinks.formats).
        self.outbox_format = outbox_format
        self.commands: dict[str, CommandSpec] = {}
        self.aggregates: dict[str, type[Aggregate]] = {}
        self.events: dict[str, type[Event]] = {}
        self.queries: dict[str, Query] = {}
        self.projections: dict[str, type[Projection]] = {}
        self.upcasters: dict[tuple[str, int], Upcaster] = {}
        # Outbox routing: by event type first, then by stream category (see `publish`).
        self.published_types: dict[str, Publication] = {}
        self.published_categories: dict[str, Publication] = {}
        self.snapshot_every = snapshot_every
        self.retries = retries
        self.sagas: dict[str, Any] = {}  # name -> saga.SagaSpec
        self.reactions: list[Any] = []  # saga.Reaction

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    # -- registration -------------------------------------------------------------------

    def command(
        self, *, aggregate: type[Aggregate], stream: Callable[[Any], Any], name: str | None = None
    ) -> Callable[[type[T]], type[T]]:
        """Register a command class. `stream(command)` gives the aggregate id; the stream
        id is `<aggregate category>-<id>`."""

        def register(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, Command)):
                raise UsageError(f"{cls!r} is not a Command subclass")
            key = name or cls.__name__
            self.commands[key] = CommandSpec(key, cls, aggregate, stream)
            self.aggregate(aggregate)
            return cls

        return register

    def aggregate(self, cls: type[Aggregate]) -> type[Aggregate]:
        self.aggregates[cls.category] = cls
        for event_cls in cls.event_classes().values():
            self.event(event_cls)
        return cls

    def event(self, cls: type[Event]) -> type[Event]:
        """Register an event class (those named in aggregates' `when_` methods are found by themselves)."""
        self.events[cls.event_type] = cls
        return cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register `fn(data) -> data` lifting `event_type` from `from_version` to `from_version + 1`."""

        def register(fn: Upcaster) -> Upcaster:
            self.upcasters[(event_type, from_version)] = fn
            return fn

        return register

    def publish(
        self,
        *what: type[Event] | type[Aggregate] | str,
        topic: str | Callable[[StoredEvent], str] | None = None,
        key: str | Callable[[StoredEvent], str] | None = None,
    ) -> None:
        """Send events to the outbox when they are dispatched, in the same transaction.

        `what` names Event classes or event type names, or Aggregate classes (every event
        of their streams). The topic defaults to `<category>.events`, the key (which orders
        delivery) to the stream id; either may be a function of the StoredEvent. A rule for
        an event type wins over one for its aggregate.

        `app.publish(Account)` · `app.publish(MoneyDeposited, topic="payments")`
        """
        if not what:
            raise UsageError("publish() needs at least one Event class, event type name or Aggregate class")
        rule = Publication(topic, key)
        for item in what:
            if isinstance(item, str):
                self.published_types[item] = rule
            elif isinstance(item, type) and issubclass(item, Event):
                self.published_types[item.event_type] = rule
            elif isinstance(item, type) and issubclass(item, Aggregate):
                self.published_categories[item.category] = rule
            else:
                raise UsageError(f"publish(): {item!r} is not an Event class, type name or Aggregate class")

    def publication(self, event: StoredEvent) -> Publication | None:
        """The outbox rule for `event`, or None when it is not published."""
        rule = self.published_types.get(event.event_type)
        return rule if rule is not None else self.published_categories.get(category_of(event.stream_id))

    @property
    def publishes(self) -> bool:
        return bool(self.published_types or self.published_categories)

    def projection(self, cls: type[P]) -> type[P]:
        """Register a Projection subclass (usable as a class decorator: `@app.projection`)."""
        if not (isinstance(cls, type) and issubclass(cls, Projection)):
            raise UsageError(f"{cls!r} is not a Projection subclass")
        cls.check()
        if cls.name in self.projections and self.projections[cls.name] is not cls:
            raise UsageError(f"two projections are named {cls.name!r}")
        if cls.name == SAGA_CHECKPOINT:
            raise AppError(
                f"projection name {cls.name!r} is the saga runner's checkpoint: rename the projection"
            )
        for table in cls.tables:
            if is_core(table):
                raise AppError(
                    f"projection {cls.name!r} declares table {table!r}, a table of the store itself:"
                    " rename the read-model table"
                )
            for other in self.projections.values():
                if other is not cls and table in other.tables:
                    raise AppError(
                        f"projections {other.name!r} and {cls.name!r} both declare table {table!r}:"
                        " each read-model table belongs to one projection"
                    )
        self.projections[cls.name] = cls
        return cls

    def query(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register a read function `fn(ctx, **params)`; params are typed by annotations."""

        def register(fn: Callable[..., T]) -> Callable[..., T]:
            sig = inspect.signature(fn)
            hints = typing.get_type_hints(fn)
            params = {}
            for pname in list(sig.parameters)[1:]:
                p = sig.parameters[pname]
                params[pname] = (TypeAdapter(hints.get(pname, str)), p.default)
            key = name or fn.__name__
            self.queries[key] = Query(key, fn, params, inspect.getdoc(fn) or "")
            return fn

        return register

    def saga(self, *, starts_on: Any, name: str | None = None) -> Callable[[type[T]], type[T]]:
        """Register a Saga subclass started by `starts_on` (an Event class, a type name, or a list)."""
        from .saga import Saga, SagaSpec, type_name

        def register(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, Saga)):
                raise UsageError(f"{cls!r} is not a Saga subclass")
            if not cls.steps:
                raise UsageError(f"saga {cls.__name__} declares no steps")
            starts = starts_on if isinstance(starts_on, list | tuple) else (starts_on,)
            for t in [*starts, *(s.wait_for for s in cls.steps if s.wait_for is not None)]:
                if not isinstance(t, str):
                    self.event(t)
            key = name or cls.__name__
            self.sagas[key] = SagaSpec(key, cls, tuple(type_name(t) for t in starts))
            return cls

        return register

    def react(self, on: Any, make: Callable[[Any], Any], *, name: str | None = None) -> None:
        """A stateless reaction: every `on` event dispatches `make(event)` (a Command, or None).

        `app.react(UserRegistered, lambda e: SendWelcomeEmail(user_id=e.user_id))`
        """
        from .saga import Reaction, type_name

        if not isinstance(on, str):
            self.event(on)
        event_type = type_name(on)
        self.reactions.append(
            Reaction(name or f"{event_type}->{getattr(make, '__name__', 'command')}", event_type, make)
        )

    # -- lookups ------------------------------------------------------------------------

    def command_spec(self, name: str) -> CommandSpec:
        try:
            return self.commands[name]
        except KeyError:
            known = ", ".join(sorted(self.commands)) or "none"
            raise NotFoundError(f"unknown command {name!r} (known: {known})") from None

    def aggregate_for(self, stream_id: str) -> type[Aggregate] | None:
        return self.aggregates.get(category_of(stream_id))

    def build_command(self, name: str, data: dict[str, Any]) -> tuple[CommandSpec, Command]:
        spec = self.command_spec(name)
        try:
            # What model_validate calls, without its wrapper: this runs once per dispatch.
            return spec, spec.cls.__pydantic_validator__.validate_python(data)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"{name}: {_pydantic_message(exc)}") from None

    # -- decoding stored events -----------------------------------------------------------

    def upcast(self, event: StoredEvent, target: int | None = None) -> tuple[int, dict[str, Any]]:
        """(version, data) of `event` lifted through its upcasters, up to `target` (by default
        the version of its registered class; without a class, as far as upcasters lead).
        An event stored at the current version is never upcast."""
        event_type, stored = event.event_type, event.schema_version
        if target is None:
            cls = self.events.get(event_type)
            target = cls.schema_version if cls is not None else None
        version, data = stored, event.data
        upcasters = self.upcasters
        while (target is None or version < target) and (event_type, version) in upcasters:
            try:
                # The first upcaster gets a copy: the stored event's dict must not change under it.
                data = upcasters[(event_type, version)](dict(data) if version == stored else data)
            except Exception as exc:
                step = "" if version == stored else f", at the upcaster from v{version}"
                raise DecodeError(
                    f"event at position {event.global_position} ({event_type} stored as v{stored}{step}) "
                    f"could not be upcast: {type(exc).__name__}: {exc}"
                ) from None
            version += 1
        return version, data

    def upcast_stored(self, event: StoredEvent) -> StoredEvent:
        """`event` with its data and schema version as the current code reads them (the same
        object when no upcaster applies): what read paths show when an app is loaded."""
        if (event.event_type, event.schema_version) not in self.upcasters:
            return event
        version, data = self.upcast(event)
        if version == event.schema_version:
            return event
        return replace(event, schema_version=version, data=data)

    def decode(self, event: StoredEvent, cls: type[Event] | None = None) -> Event | StoredEvent:
        """The event as its registered class (after upcasting), or as stored when none is known."""
        cls = cls or self.events.get(event.event_type)
        if cls is None:
            return event
        stored, target = event.schema_version, cls.schema_version
        version, data = self.upcast(event, target) if stored != target else (stored, event.data)
        if version != target:
            where = f"event at position {event.global_position} ({event.event_type} stored as v{stored})"
            if stored > target:
                raise DecodeError(
                    f"{where} has schema version {stored}, newer than {cls.__name__}'s v{target}: "
                    "was it written by newer code?"
                )
            raise DecodeError(
                f"{where}: {cls.__name__} expects v{target} and no upcaster leads from v{version} "
                f"(register @app.upcaster({event.event_type!r}, from_version={version}))"
            )
        try:
            # What model_validate calls, without its wrapper: this runs once per replayed event.
            return cls.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]
        except pydantic.ValidationError as exc:
            shown = f"stored as v{stored}" + (f", upcast to v{version}" if version != stored else "")
            raise DecodeError(
                f"event at position {event.global_position} ({event.event_type} {shown}) cannot be decoded: "
                f"{_pydantic_message(exc)}"
            ) from None


def _pydantic_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(input)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def new_aggregate(
    cls: type[Aggregate], stream_id: str, version: int = 0, state: dict[str, Any] | str | bytes | None = None
) -> Aggregate:
    if state is None:
        agg = cls()
    elif isinstance(state, (str, bytes)):
        # A snapshot's state as stored: pydantic parses and validates the JSON in one pass.
        agg = cls.__pydantic_validator__.validate_json(state)
    else:
        agg = cls.model_validate(state)
    private = agg.__pydantic_private__
    if private is None:
        object.__setattr__(agg, "__pydantic_private__", {"_stream_id": stream_id, "_version": version})
    else:  # the class's own PrivateAttrs
        private["_stream_id"], private["_version"] = stream_id, version
    return agg


def fold(app: App, agg: Aggregate, events: list[StoredEvent]) -> Aggregate:
    """Apply stored events to `agg` in order (the hot path of replay and dispatch)."""
    handlers = type(agg).handlers()
    classes = type(agg).event_classes()
    decode = app.decode
    for stored in events:
        handler = handlers.get(stored.event_type)
        if handler is None:
            continue
        cls = classes.get(stored.event_type)
        if cls is None:
            handler(agg, stored)
            continue
        if stored.schema_version != cls.schema_version:
            event = decode(stored, cls)
        else:
            # decode's common case, inline; on failure decode words the error.
            try:
                event = cls.__pydantic_validator__.validate_python(stored.data)
            except pydantic.ValidationError:
                event = decode(stored, cls)
        handler(agg, event)
    if events:
        agg.__pydantic_private__["_version"] = events[-1].stream_version  # type: ignore[index]
    return agg


def folds_data(app: App, cls: type[Aggregate]) -> bool:
    """Whether `cls` can be folded from FoldRows (fold_rows): every handler takes a
    registered event class and no upcaster needs the whole stored event."""
    if not cls._handlers:
        cls._resolve_handlers()
    return not app.upcasters and cls._typed_handlers


def fold_rows(app: App, agg: Aggregate, rows: list[FoldRow]) -> Aggregate:
    """fold() over FoldRows (see folds_data): the events are never built as StoredEvents."""
    if not rows:
        return agg
    handlers = type(agg).handlers()
    classes = type(agg).event_classes()
    loads = orjson.loads
    for position, version, event_type, schema_version, data in rows:
        handler = handlers.get(event_type)
        if handler is None:
            continue
        cls = classes[event_type]
        if data.__class__ is not dict:
            data = loads(data)
        try:
            if schema_version != cls.schema_version:
                raise ValueError
            event = cls.__pydantic_validator__.validate_python(data)
        except (ValueError, pydantic.ValidationError):
            # decode words the error (pydantic's ValidationError is a ValueError).
            stored = stored_event(
                position, agg.stream_id, version, "", event_type, schema_version, data, {}, None
            )
            event = app.decode(stored, cls)
        handler(agg, event)
    if rows:
        agg.__pydantic_private__["_version"] = rows[-1][1]  # type: ignore[index]
    return agg


def apply_new(agg: Aggregate, events: list[Event], first_version: int) -> None:
    """Apply just-decided events to `agg` (for snapshots taken at dispatch)."""
    handlers = type(agg).handlers()
    for event in events:
        handler = handlers.get(event.event_type)
        if handler is not None:
            handler(agg, event)
    agg.__pydantic_private__["_version"] = first_version + len(events) - 1  # type: ignore[index]
