"""Event contracts: what an app declares (`describe`), whether the stored events still
decode with it (`check`), and how its event schemas changed since they were locked
(`lock`, `diff`). None of this writes to the store."""

from __future__ import annotations

import inspect
import time
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pydantic
from pydantic import BaseModel, TypeAdapter
from pydantic_core import SchemaValidator, core_schema

from ..app import App, Event, _pydantic_message
from ..errors import BreakingChangeError, FileAccessError, UsageError, ValidationError
from ..store import NewEvent, Store, StoredEvent

# -- describe ---------------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A short, readable name for a field's annotation: `Decimal`, `str | None`, `list[int]`."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation)
    for prefix in ("typing.", "decimal.", "datetime.", "uuid."):
        text = text.replace(prefix, "")
    return text


def model_fields(cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field of a pydantic model: name, type, required, and the default when there is one."""
    out = []
    for name, info in cls.model_fields.items():
        entry: dict[str, Any] = {
            "name": name,
            "type": type_name(info.annotation),
            "required": info.is_required(),
        }
        if not info.is_required():
            entry["default"] = None if info.default_factory is not None else info.default
        out.append(entry)
    return out


def _fields_text(fields: list[dict[str, Any]]) -> str:
    return ", ".join(f"{f['name']}: {f['type']}" + ("" if f["required"] else " = …") for f in fields)


def handled_types(app: App) -> list[tuple[str, str, str]]:
    """(kind, name, event type) for every event type an aggregate, projection, saga or
    reaction of the app handles."""
    found: list[tuple[str, str, str]] = []
    for agg in app.aggregates.values():
        found += [("aggregate", agg.__name__, t) for t in agg.handlers()]
    for proj in app.projections.values():
        found += [("projection", proj.name, t) for t in proj.handles]
    for spec in app.sagas.values():
        found += [("saga", spec.name, t) for t in sorted({*spec.starts_on, *spec.waits_for()})]
    found += [("reaction", r.name, r.event_type) for r in app.reactions]
    return found


def describe(app: App) -> dict[str, Any]:
    """Everything the app declares: commands (with fields), events (with versions and
    upcasters), aggregates, queries, projections (tables, handled types), sagas, reactions
    and outbox rules. `cqrsctl app show` prints it."""
    published = sorted(app.published_types) + [f"{c}-*" for c in sorted(app.published_categories)]
    return {
        "name": app.name,
        "commands": _commands(app),
        "events": _events(app),
        "aggregates": _aggregates(app),
        "queries": _queries(app),
        "projections": _projections(app),
        "sagas": _sagas(app),
        "reactions": [{"name": r.name, "on": r.event_type} for r in app.reactions],
        "published": published,
    }


def _commands(app: App) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "class": spec.cls.__name__,
            "aggregate": spec.aggregate.__name__,
            "category": spec.aggregate.category,
            "fields": model_fields(spec.cls),
            "doc": _doc(spec.cls),
        }
        for spec in sorted(app.commands.values(), key=lambda s: s.name)
    ]


def _events(app: App) -> list[dict[str, Any]]:
    upcasters: dict[str, list[int]] = {}
    for event_type, version in sorted(app.upcasters):
        upcasters.setdefault(event_type, []).append(version)
    events = [
        {
            "type": t,
            "class": cls.__name__,
            "schema_version": cls.schema_version,
            "upcasters": [f"v{v}->v{v + 1}" for v in upcasters.get(t, [])],
            "fields": model_fields(cls),
        }
        for t, cls in sorted(app.events.items())
    ]
    # Upcasters of types without a class still matter to read paths: list them too.
    events += [
        {
            "type": t,
            "class": None,
            "schema_version": None,
            "upcasters": [f"v{v}->v{v + 1}" for v in vs],
            "fields": [],
        }
        for t, vs in sorted(upcasters.items())
        if t not in app.events
    ]
    return events


def _aggregates(app: App) -> list[dict[str, Any]]:
    return [
        {
            "category": cat,
            "class": cls.__name__,
            "fields": model_fields(cls),
            "handles": sorted(cls.handlers()),
            "snapshot_every": cls.snapshot_every or app.snapshot_every,
        }
        for cat, cls in sorted(app.aggregates.items())
    ]


def _queries(app: App) -> list[dict[str, Any]]:
    return [
        {
            "name": q.name,
            "params": [
                {
                    "name": n,
                    "type": type_name(getattr(a, "_type", str)),
                    "required": d is inspect.Parameter.empty,
                }
                for n, (a, d) in q.params.items()
            ],
            "doc": q.doc.split("\n\n")[0].strip(),
        }
        for q in sorted(app.queries.values(), key=lambda q: q.name)
    ]


def _projections(app: App) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "version": p.version,
            "tables": {name: dict(t.columns) for name, t in p.tables.items()},
            "handles": sorted(p.handles),
        }
        for p in sorted(app.projections.values(), key=lambda p: p.name)
    ]


def _sagas(app: App) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "class": s.cls.__name__,
            "starts_on": list(s.starts_on),
            "steps": [
                {
                    "name": st.name,
                    "waits_for": st.event_type,
                    "timeout": None if st.timeout is None else st.timeout.total_seconds(),
                }
                for st in s.steps
            ],
        }
        for s in sorted(app.sagas.values(), key=lambda s: s.name)
    ]


def _doc(cls: type) -> str:
    """The first paragraph of the class's own docstring (not an inherited one)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc).split("\n\n")[0] if doc else ""


# -- check ------------------------------------------------------------------------------------

CHECK_PAGE = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # upcasters get no recorded_at


@dataclass
class Failure:
    """The first stored event of a type that does not decode, and why."""

    position: int
    stream_id: str
    stream_version: int
    schema_version: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "schema_version": self.schema_version,
            "reason": self.reason,
        }


@dataclass
class TypeCheck:
    """What `contract check` found for one event type."""

    event_type: str
    class_name: str | None
    current_version: int | None
    upcasters: list[int]
    stored: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    checked: int = 0
    failed: int = 0
    first_failure: Failure | None = None

    @property
    def missing_upcasters(self) -> list[int]:
        """Versions on the way from a stored version to the current one with no upcaster."""
        if self.current_version is None or not self.versions:
            return []
        have = set(self.upcasters)
        return [v for v in range(min(self.versions), self.current_version) if v not in have]

    @property
    def newer_versions(self) -> list[int]:
        """Stored versions newer than the class: written by newer code."""
        cur = self.current_version
        return [] if cur is None else sorted(v for v in self.versions if v > cur)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def fail(self, failure: Failure, count: int = 1) -> None:
        self.failed += count
        if self.first_failure is None or failure.position < self.first_failure.position:
            self.first_failure = failure

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "class": self.class_name,
            "current_version": self.current_version,
            "stored": self.stored,
            "versions": {str(v): n for v, n in sorted(self.versions.items())},
            "upcasters": [f"v{v}->v{v + 1}" for v in self.upcasters],
            "missing_upcasters": [f"v{v}->v{v + 1}" for v in self.missing_upcasters],
            "checked": self.checked,
            "failed": self.failed,
            "first_failure": None if self.first_failure is None else self.first_failure.to_dict(),
            "ok": self.ok,
        }


@dataclass
class ContractReport:
    """The result of `contract check`: per event type, and what does not line up."""

    types: list[TypeCheck]
    never_stored: list[str]  # classes of the app with no stored event
    without_class: list[str]  # stored types the app has no class for
    orphan_handlers: list[dict[str, str]]  # handlers of types with no class and no stored event
    stale_upcasters: list[str]  # upcasters at or past the class's version: they never run
    sample: int | None
    events: int  # stored events in all
    checked: int
    seconds: float

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.types)

    @property
    def warnings(self) -> list[str]:
        out = [
            f"{t}: stored, but the app has no Event class for it (read as raw data)"
            for t in self.without_class
        ]
        out += [
            f"{h['kind']} {h['name']} handles {h['event_type']}, which has no Event class and was never stored"
            for h in self.orphan_handlers
        ]
        out += [
            f"upcaster {u} never runs: the class is already at that version or later"
            for u in self.stale_upcasters
        ]
        return out

    def failures(self) -> list[str]:
        """One line per failing type: type, stored version, position, reason."""
        out = []
        for t in self.types:
            f = t.first_failure
            if f is not None:
                more = f" ({t.failed - 1} more of this type)" if t.failed > 1 else ""
                out.append(
                    f"{t.event_type} v{f.schema_version} at position {f.position} "
                    f"({f.stream_id}@{f.stream_version}): {f.reason}{more}"
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "checked": self.checked,
            "sample": self.sample,
            "seconds": round(self.seconds, 3),
            "types": [t.to_dict() for t in self.types],
            "never_stored": self.never_stored,
            "without_class": self.without_class,
            "orphan_handlers": self.orphan_handlers,
            "stale_upcasters": self.stale_upcasters,
            "failures": self.failures(),
            "warnings": self.warnings,
        }


class _Checker:
    """Decodes pages of lean rows (see EventTuple) against the app, grouped by type and
    version so that each group is validated by one pydantic call over a JSON array."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.types: dict[str, TypeCheck] = {}
        self.adapters: dict[type[Event], Any] = {}
        self.upcasters: dict[str, list[int]] = {}
        for event_type, version in sorted(app.upcasters):
            self.upcasters.setdefault(event_type, []).append(version)

    def type_check(self, event_type: str) -> TypeCheck:
        found = self.types.get(event_type)
        if found is None:
            cls = self.app.events.get(event_type)
            found = self.types[event_type] = TypeCheck(
                event_type,
                None if cls is None else cls.__name__,
                None if cls is None else cls.schema_version,
                self.upcasters.get(event_type, []),
            )
        return found

    def count(self, counts: dict[tuple[str, int], int]) -> None:
        for (event_type, version), n in counts.items():
            tc = self.type_check(event_type)
            tc.stored += n
            tc.versions[version] = tc.versions.get(version, 0) + n

    def page(self, rows: Sequence[Any], count: bool) -> None:
        """Decode a page of rows; `count` adds them to the stored counts too."""
        groups: dict[tuple[str, int], list[Any]] = {}
        for row in rows:
            key = (row[2], row[5])
            group = groups.get(key)
            if group is None:
                groups[key] = [row]
            else:
                group.append(row)
        if count:
            self.count({key: len(group) for key, group in groups.items()})
        for (event_type, version), group in groups.items():
            cls = self.app.events.get(event_type)
            if cls is not None:
                self.decode(self.type_check(event_type), cls, version, group)

    def decode(self, tc: TypeCheck, cls: type[Event], version: int, rows: list[Any]) -> None:
        tc.checked += len(rows)
        target = cls.schema_version
        if version > target:
            reason = f"stored as v{version}, newer than {cls.__name__}'s v{target}: written by newer code?"
            tc.fail(_failure(rows[0], reason), len(rows))
            return
        missing = [v for v in range(version, target) if (tc.event_type, v) not in self.app.upcasters]
        if missing:
            reason = f"stored as v{version}, but {cls.__name__} is v{target} and there is no upcaster from v{missing[0]}"
            tc.fail(_failure(rows[0], reason), len(rows))
            return
        adapter = self.adapters.get(cls)
        if adapter is None:
            adapter = self.adapters[cls] = _list_validator(cls)
        if version == target:
            texts = [r[3] for r in rows]
            if all(t.__class__ is str for t in texts):
                payload: Any = "[" + ",".join(texts) + "]"
                validate: Callable[[Any], Any] = adapter.validate_json
            else:
                payload = [t if t.__class__ is dict else orjson.loads(t) for t in texts]
                validate = adapter.validate_python
            kept = rows
        else:
            payload, kept = [], []
            for r in rows:
                data = r[3] if r[3].__class__ is dict else orjson.loads(r[3])
                event = StoredEvent(r[0], r[1], r[4], "", r[2], r[5], data, {}, _EPOCH)
                try:
                    payload.append(self.app.upcast(event, target)[1])
                except Exception as exc:  # DecodeError: the upcaster raised
                    tc.fail(
                        _failure(
                            r, str(exc).partition("could not be upcast: ")[2] or str(exc), "upcaster failed: "
                        )
                    )
                    continue
                kept.append(r)
            validate = adapter.validate_python
        try:
            validate(payload)
        except pydantic.ValidationError as exc:
            by_index: dict[int, list[str]] = {}
            for err in exc.errors():
                loc = err["loc"]
                if loc and isinstance(loc[0], int):
                    by_index.setdefault(loc[0], []).append(
                        f"{'.'.join(str(p) for p in loc[1:]) or '(data)'}: {err['msg']}"
                    )
            if not by_index:  # not about one item (the array itself): blame them all
                by_index = {i: [_pydantic_message(exc)] for i in range(len(kept))}
            first = min(by_index)
            shown = f"stored as v{version}" + ("" if version == target else f", upcast to v{target}")
            tc.fail(_failure(kept[first], f"{shown}: " + "; ".join(by_index[first])), len(by_index))


def _list_validator(cls: type[Event]) -> Any:
    """Validates a JSON array (or list) of `cls` data in one call. For a plain model (no
    model validators, no custom __init__ or post-init) it checks the fields without building
    the instances, which is what costs most; field validators still run."""
    schema: Any = cls.__pydantic_core_schema__
    if (
        schema.get("type") == "model"
        and schema["schema"].get("type") == "model-fields"
        and not schema.get("custom_init")
        and not schema.get("post_init")
    ):
        return SchemaValidator(core_schema.list_schema(schema["schema"]), schema.get("config"))
    return TypeAdapter(list[cls])  # type: ignore[valid-type]


def _failure(row: Any, reason: str, prefix: str = "") -> Failure:
    return Failure(row[0], row[1], row[4], row[5], prefix + reason)


def check(
    app: App,
    store: Store,
    *,
    sample: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ContractReport:
    """Decode every stored event (or, with `sample`, the oldest and newest `sample` of each
    type and schema version) with the app's current classes and upcasters. Reads only."""
    if sample is not None and sample < 1:
        raise UsageError("--sample must be at least 1")
    started = time.perf_counter()
    checker = _Checker(app)
    if sample is not None:
        _check_sample(checker, store, sample, on_progress)
    else:
        _check_all(checker, store, on_progress)
    return _report(app, checker, sample, time.perf_counter() - started)


def _check_sample(
    checker: _Checker, store: Store, sample: int, on_progress: Callable[[int], None] | None
) -> None:
    with store.reader() as tx:
        rows, counts = tx.tracking.sample((sample + 1) // 2, sample // 2)
    checker.count(counts)
    checker.page(rows, count=False)
    if on_progress:
        on_progress(len(rows))


def _check_all(checker: _Checker, store: Store, on_progress: Callable[[int], None] | None) -> None:
    with store.reader() as tx:
        head = tx.tracking.head()

    def read(after: int) -> list[Any]:
        # One short read transaction per page: a long one would hold back SQLite's WAL
        # checkpoints (and PostgreSQL's vacuum) for the whole check.
        with store.reader() as tx:
            return tx.tracking.scan(after, CHECK_PAGE, None, head, lean=True)

    # The next page is read on a second thread while this one is validated: the
    # driver waits without the GIL, so the read costs little more than the decoding.
    # Only that thread touches the store meanwhile.
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(read, 0) if head else None
        while pending is not None:
            rows = pending.result()
            if not rows:
                break
            last = rows[-1][0]
            pending = reader.submit(read, last) if last < head else None
            checker.page(rows, count=True)
            if on_progress:
                on_progress(len(rows))


def _report(app: App, checker: _Checker, sample: int | None, seconds: float) -> ContractReport:
    types = sorted(checker.types.values(), key=lambda t: t.event_type)
    stored_types = {t.event_type for t in types}
    without_class = sorted(t.event_type for t in types if t.class_name is None)
    never_stored = sorted(set(app.events) - stored_types)
    orphans = [
        {"kind": kind, "name": name, "event_type": t}
        for kind, name, t in handled_types(app)
        if t not in app.events and t not in stored_types
    ]
    stale = [
        f"{t} v{v}->v{v + 1}"
        for t, v in sorted(app.upcasters)
        if t in app.events and v >= app.events[t].schema_version
    ]
    return ContractReport(
        types,
        never_stored,
        without_class,
        orphans,
        stale,
        sample,
        sum(t.stored for t in types),
        sum(t.checked for t in types),
        seconds,
    )


# -- lock and diff ----------------------------------------------------------------------------

LOCK_FILE = "cqrsctl-contract.json"
LOCK_FORMAT = 1
_ANNOTATIONS = ("title", "description", "default", "examples")


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The pydantic JSON schema of an event class (what its stored data must look like)."""
    return cls.model_json_schema()


def contract_of(app: App, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lock document of `app`: per event type its current version, the JSON schema of
    each version (older versions are kept from `previous`, the current one is the code's)
    and the versions it has upcasters from."""
    old_events = (previous or {}).get("events", {})
    events: dict[str, Any] = {}
    for event_type, cls in sorted(app.events.items()):
        versions = dict(old_events.get(event_type, {}).get("versions", {}))
        versions = {v: s for v, s in versions.items() if int(v) < cls.schema_version}
        versions[str(cls.schema_version)] = event_schema(cls)
        events[event_type] = {
            "class": cls.__name__,
            "current": cls.schema_version,
            "upcasters": sorted(v for t, v in app.upcasters if t == event_type),
            "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        }
    return {"cqrsctl_contract": LOCK_FORMAT, "app": app.name, "events": events}


def read_lock(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileAccessError(f"no contract file {path}: write one with `cqrsctl contract lock`") from None
    except OSError as exc:
        raise FileAccessError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON: {exc}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("cqrsctl_contract") != LOCK_FORMAT
        or not isinstance(doc.get("events"), dict)
    ):
        raise ValidationError(f"{path} is not a cqrsctl contract file (format {LOCK_FORMAT})")
    return doc


@dataclass
class Change:
    """One difference between the locked contract and the code."""

    event_type: str
    breaking: bool
    what: str

    def to_dict(self) -> dict[str, Any]:
        return {"event_type": self.event_type, "breaking": self.breaking, "change": self.what}

    def __str__(self) -> str:
        return f"{self.event_type}: {self.what}"


def diff(app: App, locked: dict[str, Any]) -> list[Change]:
    """How the app's events differ from the locked contract, each change classified as
    compatible (stored events still decode) or breaking (some may not)."""
    changes: list[Change] = []
    old_events: dict[str, Any] = locked.get("events", {})
    for event_type, entry in sorted(old_events.items()):
        cls = app.events.get(event_type)

        def add(breaking: bool, what: str, t: str = event_type) -> None:
            changes.append(Change(t, breaking, what))

        if cls is None:
            add(True, "event type removed: its stored events would have no class")
            continue
        old_version, new_version = int(entry["current"]), cls.schema_version
        for v in entry.get("upcasters", []):
            if (event_type, v) not in app.upcasters and v < new_version:
                add(True, f"upcaster from v{v} removed: events stored as v{v} can no longer be read")
        if new_version < old_version:
            add(True, f"schema_version went back from v{old_version} to v{new_version}")
        elif new_version > old_version:
            missing = [v for v in range(old_version, new_version) if (event_type, v) not in app.upcasters]
            if missing:
                add(
                    True,
                    f"schema_version bumped from v{old_version} to v{new_version} without an upcaster from v{missing[0]}",
                )
            else:
                add(False, f"schema_version bumped from v{old_version} to v{new_version}, with upcasters")
        else:
            old_schema = entry["versions"].get(str(old_version))
            if old_schema is not None:
                for breaking, what in _field_changes(old_schema, event_schema(cls)):
                    add(breaking, what)
    for event_type in sorted(set(app.events) - set(old_events)):
        changes.append(Change(event_type, False, "new event type"))
    return changes


def _field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[bool, str]]:
    old_props = {k: _resolve(v, old) for k, v in old.get("properties", {}).items()}
    new_props = {k: _resolve(v, new) for k, v in new.get("properties", {}).items()}
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    removed = [f for f in old_props if f not in new_props]
    added = [f for f in new_props if f not in old_props]
    out: list[tuple[bool, str]] = []
    for name in removed:
        twin = next((a for a in added if new_props[a] == old_props[name]), None)
        if twin is not None:
            added.remove(twin)
            out.append((True, f"field {name!r} renamed to {twin!r}: stored events still carry {name!r}"))
        else:
            out.append((True, f"field {name!r} removed"))
    for name in added:
        if name in new_req:
            out.append((True, f"new required field {name!r} without a default: stored events do not have it"))
        else:
            out.append((False, f"new optional field {name!r}"))
    for name in old_props.keys() & new_props.keys():
        if old_props[name] != new_props[name]:
            out.append(
                (
                    True,
                    f"field {name!r} changed type from {_shown(old_props[name])} to {_shown(new_props[name])}",
                )
            )
        elif name in new_req and name not in old_req:
            out.append((True, f"field {name!r} is now required (it had a default)"))
        elif name in old_req and name not in new_req:
            out.append((False, f"field {name!r} is now optional"))
    return sorted(out, key=lambda c: c[1])


def _resolve(schema: Any, root: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """`schema` with `$ref`s to the root's `$defs` inlined and annotations (title,
    description, default, examples) dropped: two fields of the same type compare equal."""
    if isinstance(schema, list):
        return [_resolve(s, root, seen) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.split("/")[-1]
        if name in seen:
            return {"$ref": name}
        return _resolve(root.get("$defs", {}).get(name, {}), root, seen | {name})
    return {k: _resolve(v, root, seen) for k, v in schema.items() if k not in _ANNOTATIONS}


def _shown(schema: Any) -> str:
    if not isinstance(schema, dict):
        return str(schema)
    if "anyOf" in schema:
        return "|".join(_shown(s) for s in schema["anyOf"])
    kind = schema.get("type", "object" if "properties" in schema else "any")
    if kind == "array":
        return f"array[{_shown(schema.get('items', {}))}]"
    fmt = schema.get("format")
    return f"{kind}({fmt})" if fmt else str(kind)


def write_lock(app: App, path: Path) -> tuple[dict[str, Any], list[Change]]:
    """Write the app's contract to `path` (keeping older versions' schemas from the file
    already there); returns the document and how it differs from the previous lock."""
    previous = read_lock(path) if path.exists() else None
    doc = contract_of(app, previous)
    changes = diff(app, previous) if previous is not None else []
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    try:
        path.write_bytes(text)
    except OSError as exc:
        raise FileAccessError(f"cannot write {path}: {exc.strerror}") from None
    return doc, changes


def check_diff(app: App, path: Path) -> list[Change]:
    """`diff` against the lock file at `path`; raises BreakingChangeError naming the first
    breaking change (the CLI's exit 18), else returns the compatible changes."""
    changes = diff(app, read_lock(path))
    raise_if_breaking(changes)
    return changes


def raise_if_breaking(changes: Sequence[Change]) -> None:
    breaking = [c for c in changes if c.breaking]
    if breaking:
        more = f" (and {len(breaking) - 1} more breaking changes)" if len(breaking) > 1 else ""
        raise BreakingChangeError(f"breaking change to {breaking[0]}{more}")


# -- checked appends --------------------------------------------------------------------------


def check_new_events(app: App, events: Sequence[NewEvent]) -> None:
    """Refuse events the app could not read back: an unknown type, a schema version with no
    upcaster path to the class's, or data that does not validate (ValidationError, exit 3).
    Data is checked as the app will read it (through its upcasters), and stored as given."""
    for event in events:
        event_type, version = event.type, event.schema_version
        cls = app.events.get(event_type)
        if cls is None:
            known = ", ".join(sorted(app.events)) or "none"
            raise ValidationError(
                f"{event_type!r} is not an event type of app {app.name!r} (known: {known}); "
                "--unchecked appends it anyway"
            )
        target = cls.schema_version
        if version > target:
            raise ValidationError(f"{event_type} v{version} is newer than {cls.__name__}'s v{target}")
        missing = [v for v in range(version, target) if (event_type, v) not in app.upcasters]
        if missing:
            raise ValidationError(
                f"{event_type} v{version}: {cls.__name__} is v{target} and there is no upcaster from v{missing[0]}"
            )
        data = event.data
        if version < target:
            stored = StoredEvent(0, "", 0, "", event_type, version, data, {}, _EPOCH)
            try:
                data = app.upcast(stored, target)[1]
            except Exception as exc:  # DecodeError from the upcaster
                reason = str(exc).partition("could not be upcast: ")[2] or str(exc)
                raise ValidationError(
                    f"{event_type} v{version}: the upcaster cannot read this data: {reason}"
                ) from None
        try:
            cls.__pydantic_validator__.validate_python(data)
        except pydantic.ValidationError as exc:
            shown = f"{event_type} v{version}" + ("" if version == target else f" (upcast to v{target})")
            raise ValidationError(
                f"{shown} does not match {cls.__name__}: {_pydantic_message(exc)}"
            ) from None


def current_version(app: App | None, event_type: str) -> int:
    """The schema version new data of `event_type` is written at: its class's, else 1."""
    cls = app.events.get(event_type) if app is not None else None
    return 1 if cls is None else cls.schema_version


def append_checked(
    store: Store, app: App, stream_id: str, events: Sequence[NewEvent], expected: Any = "any"
) -> Any:
    """`store.append` after `check_new_events`: what `cqrsctl append` does with an app."""
    from ..store import parse_expected

    check_new_events(app, events)
    return store.append(
        stream_id, events, parse_expected(expected) if isinstance(expected, str | int) else expected
    )
