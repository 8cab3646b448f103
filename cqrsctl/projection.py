"""Projections: named, versioned folds of events into read-model tables.

A projection is a class with read-model `tables` and `on_<EventType>(self, event, rm)`
handlers. `event` is an :class:`EventView` (stream, position, raw `data`, and the decoded
pydantic `event.model` when asked for); `rm` is a :class:`ReadModel` bound to the
transaction that also moves the projection's checkpoint, so both commit together::

    class Balances(Projection, name="balances", version=1):
        tables = {"balances": Table({"account_id": "text", "balance": "decimal"}, key=["account_id"])}

        def on_MoneyDeposited(self, event, rm):
            row = rm.get("balances", account_id=event.aggregate_id) or {"balance": Decimal(0)}
            rm.upsert("balances", {"account_id": event.aggregate_id,
                                   "balance": row["balance"] + Decimal(event.data["amount"])})

Nothing here runs anything: services/projections.py does (catch-up, rebuild, the daemon).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from .errors import UsageError
from .store import StoredEvent
from .store.tracking import EventTuple, ReadModels, Table, Tracking, check_name

if TYPE_CHECKING:
    from .app import App, Event

__all__ = ["EventPage", "EventView", "Projection", "ReadModel", "Table"]


class Projection:
    """Base class of projections: ``class Balances(Projection, name="balances", version=2)``.

    Bump `version` whenever the handlers or tables change what the read model holds:
    the projection is then reported as stale until `cqrsctl projections rebuild` runs.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    tables: ClassVar[dict[str, Table]] = {}
    # Event types handled, from the `on_<EventType>` methods (or given as `handles=`).
    handles: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(
        cls, name: str | None = None, version: int = 1, handles: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = check_name(name or _snake(cls.__name__), "projection")
        if not isinstance(version, int) or version < 1:
            raise UsageError(f"projection {cls.name!r}: version must be a positive integer")
        cls.version = version
        found = tuple(n[3:] for n, _ in inspect.getmembers(cls, inspect.isfunction) if n.startswith("on_"))
        cls.handles = tuple(handles) if handles is not None else found
        for event_type in cls.handles:
            if not callable(getattr(cls, f"on_{event_type}", None)) and not callable(
                getattr(cls, "on_event", None)
            ):
                raise UsageError(f"projection {cls.name!r} handles {event_type!r} but has no on_{event_type}")

    @classmethod
    def check(cls) -> None:
        """Called at registration: a projection needs tables and at least one handler."""
        if not cls.tables:
            raise UsageError(f"projection {cls.name!r} declares no tables")
        for table in cls.tables:
            check_name(table, "table")
            if table.endswith("__rebuild"):
                raise UsageError(
                    f"table {table!r}: names ending in __rebuild are the rebuild's shadow tables"
                )
        if not cls.handles:
            raise UsageError(f"projection {cls.name!r} has no on_<EventType> handlers")

    def handlers(self) -> dict[str, Callable[[EventView, ReadModel], None]]:
        fallback = getattr(self, "on_event", None)
        found: dict[str, Callable[[EventView, ReadModel], None]] = {}
        for event_type in self.handles:
            found[event_type] = getattr(self, f"on_{event_type}", fallback)  # type: ignore[assignment]
        return found


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class EventView:
    """One stored event as a projection handler sees it.

    `data` is the event's (upcast) data as a dict; `model` is the app's pydantic event
    (via App.decode), built only when asked for; `aggregate_id` is the stream id without
    its category (`Account-A-1` -> `A-1`). Built once per event in a rebuild's hot loop:
    `data` and `aggregate_id`, which nearly every handler reads, are plain attributes
    set here; the rest is worked out on demand, and a lean or bare row (see EventPage)
    gets what it lacks from its page.
    """

    # `_metadata` and `_recorded_at` are left unset until asked for (most handlers never do).
    __slots__ = ("_row", "_app", "_page", "data", "aggregate_id", "_metadata", "_recorded_at")

    def __init__(self, row: EventTuple, app: App | None = None, page: EventPage | None = None) -> None:
        self._row = row
        self._app = app
        self._page = page
        head, sep, rest = row[1].partition("-")
        self.aggregate_id: str = rest if sep else head
        # `data` is decoded here rather than on demand: nearly every handler reads it, and
        # a plain attribute is read at a fraction of a property's cost.
        data = row[3]
        if data.__class__ is not dict:
            data = _loads(data)
        if app is not None and app.upcasters and (row[2], self.schema_version) in app.upcasters:
            data = app.upcast(self._stored(data))[1]
        self.data: dict[str, Any] = data

    def __repr__(self) -> str:
        return f"EventView({self.type} {self.stream_id}@{self.stream_version} #{self.position})"

    @property
    def position(self) -> int:
        return self._row[0]  # type: ignore[no-any-return]

    @property
    def stream_id(self) -> str:
        return self._row[1]  # type: ignore[no-any-return]

    @property
    def stream_version(self) -> int:
        row = self._row
        return (row if len(row) > 4 else self._full(False))[4]  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        return self._row[2]  # type: ignore[no-any-return]

    @property
    def event_id(self) -> str:
        return self._full()[8]  # type: ignore[no-any-return]

    def _full(self, everything: bool = True) -> EventTuple:
        """The row with every column (a lean or bare row asks its page for the rest);
        `everything` False: only the versions are wanted."""
        row = self._row
        if len(row) < 9:
            page = self._page
            if page is None:
                raise UsageError("this event was read without its metadata, recorded_at and event_id")
            row = self._row = page.full_row(row[0], everything)
        return row

    @property
    def schema_version(self) -> int:
        row = self._row
        return (row if len(row) > 5 else self._full(False))[5]  # type: ignore[no-any-return]

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] | None = getattr(self, "_metadata", None)
        if meta is None:
            raw = self._full()[6]
            meta = self._metadata = raw if raw.__class__ is dict else _loads(raw)
        return meta

    @property
    def recorded_at(self) -> datetime:
        at: datetime | None = getattr(self, "_recorded_at", None)
        if at is None:
            raw = self._full()[7]
            at = self._recorded_at = raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
        return at

    @property
    def category(self) -> str:
        return self._row[1].partition("-")[0]  # type: ignore[no-any-return]

    @property
    def model(self) -> Event | StoredEvent:
        """The app's decoded event (pydantic), or the StoredEvent when its type is not registered."""
        if self._app is None:
            return self.stored()
        return self._app.decode(self.stored())

    def stored(self) -> StoredEvent:
        """The event as the store's StoredEvent (data as stored, before upcasting)."""
        raw = self._row[3]
        return self._stored(raw if raw.__class__ is dict else orjson.loads(raw))

    def _stored(self, data: dict[str, Any]) -> StoredEvent:
        r = self._full()
        return StoredEvent(r[0], r[1], r[4], r[8], r[2], r[5], data, self.metadata, self.recorded_at)


class EventPage:
    """A page of lean or bare rows (events without metadata, recorded_at and event_id, a
    bare one without its versions either: cheaper to read). The first time a handler asks
    for one of those, the page reads every column for all its events in one query, in the
    transaction that read the page: so only until that transaction ends (`close`).
    `everything` says whether more than the versions was asked for (the next pages are
    then read whole, else lean)."""

    __slots__ = ("tracking", "first", "last", "count", "types", "full", "everything")

    def __init__(self, tracking: Tracking, rows: Sequence[EventTuple], types: Sequence[str]) -> None:
        self.tracking: Tracking | None = tracking
        # Where the rows are, not the rows: a page holds no events until one asks.
        self.first, self.last, self.count, self.types = rows[0][0], rows[-1][0], len(rows), types
        self.full: dict[int, EventTuple] | None = None
        self.everything = False

    def full_row(self, position: int, everything: bool = True) -> EventTuple:
        self.everything = self.everything or everything
        full = self.full
        if full is None:
            if self.tracking is None:
                raise UsageError(
                    "an event's metadata, recorded_at and event_id can be read only while its batch is processed"
                )
            found = self.tracking.scan(self.first - 1, self.count, self.types, self.last)
            full = self.full = {r[0]: r for r in found}
        return full[position]

    def close(self) -> None:
        self.tracking = None


_MISSING: Any = object()
_loads = orjson.loads


class _Slot:
    """One table of a ReadModel: its spec, physical name, cache and dirty keys."""

    __slots__ = (
        "name", "spec", "physical", "columns", "width", "key", "single", "blank", "cache", "dirty", "complete",
    )  # fmt: skip

    def __init__(self, name: str, spec: Table, physical: str) -> None:
        self.name, self.spec, self.physical = name, spec, physical
        self.columns = frozenset(spec.columns)
        self.width = len(self.columns)
        self.key = tuple(spec.key)
        # Most tables have a one-column key: the cache is then keyed by its value itself,
        # with no tuple to build and hash per lookup (see key_of and keys).
        self.single = self.key[0] if len(self.key) == 1 else None
        self.blank = dict.fromkeys(spec.columns)
        self.cache: dict[Any, dict[str, Any] | None] = {}
        self.dirty: set[Any] = set()
        # The table holds nothing but what the cache holds (a fresh rebuild): a miss
        # needs no lookup.
        self.complete = False

    def key_of(self, values: dict[str, Any]) -> Any:
        """The cache key of a row: the key column's value, or a tuple of the key columns'."""
        try:
            if self.single is not None:
                return values[self.single]
            return tuple([values[c] for c in self.key])
        except KeyError as exc:
            raise UsageError(f"{self.name}: the key column {exc.args[0]!r} is missing") from None

    def keys(self, keys: Iterable[Any]) -> list[tuple[Any, ...]]:
        """Cache keys as the tuples ReadModels takes."""
        return [(k,) for k in keys] if self.single is not None else list(keys)


class ReadModel:
    """The read-model API handlers get as `rm`, bound to the current transaction.

    Keyed writes (`insert`, `upsert`, `update`, `delete`) and `get` go through a
    write-back cache flushed in bulk before the checkpoint moves, so a batch of events
    costs a few statements, not one per event. `all`/`query`/`sql` flush first, and
    `sql` forgets the cache (raw statements may change any row). In raw SQL, write a
    table as `{balances}`: during a rebuild it names the shadow table.
    """

    def __init__(self, tables_in: ReadModels, tables: dict[str, Table], physical: dict[str, str]) -> None:
        self._t = tables_in
        self._slots = {name: _Slot(name, spec, physical[name]) for name, spec in tables.items()}

    def bind(self, tables_in: ReadModels) -> None:
        """Use another transaction's tables (a rebuild keeps its cache across batches)."""
        self._t = tables_in

    def mark_complete(self, table: str) -> None:
        self._slot(table).complete = True

    def table(self, name: str) -> str:
        """The physical name of a read-model table (the shadow table during a rebuild)."""
        return self._slot(name).physical

    def _slot(self, table: str) -> _Slot:
        try:
            return self._slots[table]
        except KeyError:
            raise UsageError(
                f"unknown read-model table {table!r} (tables: {', '.join(self._slots)})"
            ) from None

    def _load(self, slot: _Slot, key: Any) -> dict[str, Any] | None:
        row = slot.cache.get(key, _MISSING)
        if row is not _MISSING:
            return row  # type: ignore[no-any-return]
        if slot.complete:
            return None
        rows = self._t.fetch(slot.physical, slot.spec, slot.keys([key]))
        row = slot.cache[key] = rows[0] if rows else None
        return row

    # -- keyed access -----------------------------------------------------------------------
    # get, edit and upsert each inline the key and cache lookup rather than share a helper:
    # they run once or twice per event in a rebuild, and the extra call measured about 10 %
    # of a get-then-upsert handler's time.

    def get(self, table: str, **key: Any) -> dict[str, Any] | None:
        """The row with this primary key (as a copy), or None."""
        try:  # the common one-column key, without a call (KeyError: key_of words it)
            slot = self._slots[table]
            k = key[slot.single]  # type: ignore[index]
        except KeyError:
            slot = self._slot(table)
            k = slot.key_of(key)
        row = slot.cache.get(k, _MISSING)
        if row is _MISSING:
            row = self._load(slot, k)
        return None if row is None else row.copy()

    def edit(self, table: str, **key: Any) -> dict[str, Any] | None:
        """The row with this primary key itself, to change in place (None when there is
        none): what you set in it is written at the end of the batch. The cheapest way to
        read-modify-write a row: ``rm.edit("balances", account_id=a)["balance"] += amount``."""
        slot = self._slots.get(table) or self._slot(table)
        single = slot.single
        k = key[single] if single is not None and single in key else slot.key_of(key)
        row = slot.cache.get(k, _MISSING)
        if row is _MISSING:
            row = self._load(slot, k)
        if row is not None:
            slot.dirty.add(k)
        return row

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Add a new row; raises when a row with its key exists."""
        slot = self._slots.get(table) or self._slot(table)
        key = slot.key_of(row)
        if self._load(slot, key) is not None:
            raise ValueError(f"{table}: a row with key {key!r} already exists")
        self._put(slot, key, row, None)

    def upsert(self, table: str, row: dict[str, Any]) -> None:
        """Insert the row, or update the columns it gives of the existing one."""
        try:
            slot = self._slots[table]
            key = row[slot.single]  # type: ignore[index]
        except KeyError:
            slot = self._slot(table)
            key = slot.key_of(row)
        existing = slot.cache.get(key, _MISSING)
        if existing is _MISSING:
            existing = self._load(slot, key)
        if existing is None:
            self._put(slot, key, row, existing)
            return
        # The cache owns its rows (get hands out copies), so they are changed in place.
        # A cached row holds every column: one that grew got a column the table lacks
        # (cheaper to find out afterwards than to check each column first).
        existing.update(row)
        if len(existing) != slot.width:
            self._unknown(slot, existing)
        slot.dirty.add(key)

    def update(self, table: str, row: dict[str, Any]) -> bool:
        """Update the columns `row` gives of the row with its key; False when there is none."""
        slot = self._slots.get(table) or self._slot(table)
        key = slot.key_of(row)
        existing = self._load(slot, key)
        if existing is None:
            return False
        self._put(slot, key, row, existing)
        return True

    def delete(self, table: str, **key: Any) -> None:
        slot = self._slots.get(table) or self._slot(table)
        k = slot.key_of(key)
        slot.cache[k] = None
        slot.dirty.add(k)

    def _unknown(self, slot: _Slot, row: dict[str, Any]) -> None:
        unknown = sorted(row.keys() - slot.columns)
        for column in unknown:
            del row[column]
        raise UsageError(f"{slot.name}: unknown column(s) {', '.join(unknown)}")

    def _put(self, slot: _Slot, key: Any, row: dict[str, Any], existing: dict[str, Any] | None) -> None:
        if not row.keys() <= slot.columns:
            unknown = sorted(row.keys() - slot.columns)
            raise UsageError(f"{slot.name}: unknown column(s) {', '.join(unknown)}")
        if existing is None:
            existing = slot.cache[key] = slot.blank.copy()
        # The cache owns its rows (get hands out copies), so they are changed in place.
        existing.update(row)
        slot.dirty.add(key)

    # -- reading and raw SQL ------------------------------------------------------------------

    def all(
        self, table: str, order_by: Sequence[str] = (), limit: int | None = None, **where: Any
    ) -> list[dict[str, Any]]:
        """Rows matching column=value filters; `order_by` names columns (`-col` descending)."""
        slot = self._slot(table)
        for col in [*where, *(c.lstrip("-") for c in order_by)]:
            if col not in slot.columns:
                raise UsageError(f"{table} has no column {col!r}")
        self.flush()
        return self._t.select(slot.physical, slot.spec, where, order_by, limit)

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Run a SELECT with `:name` parameters; returns rows as dicts (values as the database gives them)."""
        self.flush()
        return self._t.execute(self._expand(sql), params)

    def sql(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run any statement with `:name` parameters; returns rows, if it yields any."""
        self.flush()
        rows = self._t.execute(self._expand(text), params)
        for slot in self._slots.values():
            slot.cache.clear()
            slot.complete = False
        return rows

    def _expand(self, text: str) -> str:
        for name, slot in self._slots.items():
            text = text.replace("{" + name + "}", f'"{slot.physical}"')
        return text

    # -- writing out ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write pending changes to the tables (before the checkpoint moves, in its transaction)."""
        for slot in self._slots.values():
            if not slot.dirty:
                continue
            cache = slot.cache
            gone = [k for k in slot.dirty if cache[k] is None]
            if gone:
                self._t.remove(slot.physical, slot.spec, slot.keys(gone))
            self._t.write(slot.physical, slot.spec, [cache[k] for k in slot.dirty if cache[k] is not None])  # type: ignore[misc]
            slot.dirty.clear()

    def pending(self) -> int:
        """How many rows the next flush writes (or deletes)."""
        return sum(len(slot.dirty) for slot in self._slots.values())

    def trim(self, max_rows: int) -> None:
        """When more than `max_rows` rows are cached, forget the older half of each table's
        (after a flush, so none is pending): the newer ones are likelier to be used again."""
        if sum(len(s.cache) for s in self._slots.values()) > max_rows:
            for slot in self._slots.values():
                cache = slot.cache
                for key in list(islice(cache, len(cache) - len(cache) // 2)):
                    del cache[key]
                slot.complete = False
