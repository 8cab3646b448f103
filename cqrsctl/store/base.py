"""The store interface: what every backend provides, and the rules they share.

Backends implement a handful of primitives on :class:`Transaction` and
:class:`Store`; the semantics (expected versions, idempotent event ids,
categories, UTC) are decided here once so both backends behave the same.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from ..errors import ConcurrencyError, DuplicateEventError, UsageError, ValidationError
from .tracking import ReadModels, Tracking

ANY: Literal["any"] = "any"
NO_STREAM: Literal["no-stream"] = "no-stream"
EXISTS: Literal["exists"] = "exists"
ExpectedVersion = int | Literal["any", "no-stream", "exists"]

SCHEMA_VERSION = 5


def _cols(names: str) -> frozenset[str]:
    return frozenset(names.split())


# The columns of every core table (both backends): what `doctor` and `init` check.
CORE_COLUMNS: dict[str, frozenset[str]] = {
    "events": _cols(
        "global_position stream_id stream_version event_id event_type schema_version category data "
        "metadata recorded_at"
    ),
    "snapshots": _cols("stream_id aggregate_type version schema_version state taken_at"),
    "checkpoints": _cols(
        "name position version status error error_position skipped owner lease_until created_at updated_at"
    ),
    "outbox": _cols(
        "seq message_id event_position topic key payload headers status attempts next_attempt_at "
        "last_error claimed_by claimed_until created_at delivered_at"
    ),
    "outbox_leases": _cols("lease_id owner lease_until seqs"),
    "sagas": _cols(
        "saga_id saga_type status current_step steps results compensations state correlation_id "
        "error_message created_at updated_at version"
    ),
    "deadlines": _cols("deadline_id saga_id name due_at payload status fired_at"),
    "processed_commands": _cols("command_id stream_id result processed_at"),
    "cqrsctl_journal": _cols("id at actor kind args result"),
    "cqrsctl_schema": _cols("version applied_at"),
}


def default_actor() -> str:
    """Who runs this process, for the journal: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without one): the uid says enough
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def category_of(stream_id: str) -> str:
    """`Account-A-1` -> `Account`; a stream id without `-` is its own category."""
    return stream_id.split("-", 1)[0]


# The RFC 4122 variant digit (binary 10xx) keeping the two random low bits of a hex digit.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_id() -> str:
    """A random (version 4) UUID as text; uuid.uuid4() is three times slower on the hot path."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_expected(value: str | int | None) -> ExpectedVersion:
    """Turn a CLI/JSON expected version into the store's form."""
    if value is None:
        return ANY
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"expected version must be >= 0, got {value}")
        return value
    text = str(value).strip().lower()
    if text in (ANY, NO_STREAM, EXISTS):
        return text  # type: ignore[return-value]
    if text.isascii() and text.isdigit():  # not "²": int() refuses what isdigit() accepts
        return int(text)
    raise UsageError(f"invalid expected version {value!r}: use any, no-stream, exists or a number")


def check_expected(stream_id: str, expected: ExpectedVersion, current: int) -> None:
    if expected == ANY:
        return
    if expected == NO_STREAM:
        ok = current == 0
    elif expected == EXISTS:
        ok = current > 0
    else:
        ok = current == expected
    if not ok:
        raise ConcurrencyError(stream_id, expected, current)


def validate_stream_id(stream_id: str) -> None:
    if not isinstance(stream_id, str) or not stream_id.strip():
        raise ValidationError("stream id must be a non-empty string")
    if len(stream_id) > 500:
        raise ValidationError("stream id is longer than 500 characters")
    if "\x00" in stream_id:
        raise ValidationError("stream id contains a NUL character")


def validate_event_type(event_type: str) -> None:
    if not isinstance(event_type, str) or not event_type.strip():
        raise ValidationError("event type must be a non-empty string")
    if len(event_type) > 200:
        raise ValidationError("event type is longer than 200 characters")
    if "\x00" in event_type:
        raise ValidationError("event type contains a NUL character")


@dataclass(slots=True)
class NewEvent:
    """An event to append; `event_id` is generated when not given."""

    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None
    schema_version: int = 1


@dataclass(slots=True, frozen=True)
class StoredEvent:
    """An event as recorded in the store."""

    global_position: int
    stream_id: str
    stream_version: int
    event_id: str
    event_type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime

    @property
    def category(self) -> str:
        return category_of(self.stream_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "global_position": self.global_position,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": self.metadata,
            "recorded_at": iso(self.recorded_at),
        }


# A frozen dataclass sets each field through object.__setattr__, which costs five times a
# plain one; events are read by the thousand, so a read builds a plain twin with the same
# slots and then makes it a StoredEvent (frozen from then on).
_StoredEventTwin = make_dataclass(
    "StoredEvent", [(f.name, f.type) for f in fields(StoredEvent)], slots=True, eq=False, repr=False
)


def stored_event(*values: Any) -> StoredEvent:
    """StoredEvent(*values), for the backends' read paths."""
    event = _StoredEventTwin(*values)
    event.__class__ = StoredEvent
    return event  # type: ignore[return-value]


@dataclass(slots=True)
class AppendResult:
    stream_id: str
    version: int
    positions: list[int]
    event_ids: list[str]
    duplicate: bool = False
    # When the events were recorded (None for a replayed duplicate); not part of to_dict.
    recorded_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "version": self.version,
            "positions": self.positions,
            "event_ids": self.event_ids,
            "duplicate": self.duplicate,
        }


@dataclass(slots=True)
class StreamInfo:
    stream_id: str
    category: str
    version: int
    first_position: int
    last_position: int
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "category": self.category,
            "version": self.version,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(slots=True)
class Snapshot:
    stream_id: str
    aggregate_type: str
    version: int
    schema_version: str
    state: dict[str, Any]
    taken_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "aggregate_type": self.aggregate_type,
            "version": self.version,
            "schema_version": self.schema_version,
            "state": self.state,
            "taken_at": iso(self.taken_at),
        }


@dataclass(slots=True)
class JournalEntry:
    """One administrative operation, recorded in the transaction of its effect."""

    kind: str  # the command: "projections reset", "outbox purge", …
    args: dict[str, Any]  # what it was asked (secrets redacted)
    result: dict[str, Any]  # what it changed: counts, positions, the error it cleared
    actor: str = ""
    at: datetime | None = None
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": None if self.at is None else iso(self.at),
            "actor": self.actor,
            "kind": self.kind,
            "args": self.args,
            "result": self.result,
        }


# -- outbox ---------------------------------------------------------------------------

OUTBOX_STATUSES = ("pending", "delivered", "dead")

# The column order every backend selects outbox rows in (see OutboxMessage; a row's lease
# is not among them but in outbox_leases, and the rows' own claimed_by and claimed_until,
# from before schema version 5, are no longer written).
OUTBOX_COLUMNS = (
    "seq, message_id, event_position, topic, key, payload, headers, status, attempts,"
    " next_attempt_at, last_error, created_at, delivered_at"
)


@dataclass(slots=True)
class NewMessage:
    """An outbox row to insert, in the transaction that appends its event."""

    message_id: str
    event_position: int | None
    topic: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, Any]
    created_at: datetime


@dataclass(slots=True)
class OutboxMessage:
    """An outbox row as stored."""

    seq: int
    message_id: str
    event_position: int | None
    topic: str
    key: str
    #: The payload, or None until `payload` decodes `stored_payload` (see there).
    decoded_payload: dict[str, Any] | None = field(repr=False)
    headers: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    claimed_by: str | None
    claimed_until: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    #: The payload's JSON text as stored, when the backend keeps it as written (SQLite):
    #: then sending needs no re-encoding.
    stored_payload: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def payload(self) -> dict[str, Any]:
        # Decoded on first use: the default message format sends the stored text as it is,
        # so a drain need not decode each payload (about 1 µs a message).
        if self.decoded_payload is None:
            assert self.stored_payload is not None
            self.decoded_payload = orjson.loads(self.stored_payload)
        return self.decoded_payload

    def body(self) -> bytes:
        """The payload as the JSON bytes sinks send."""
        if self.stored_payload is not None:
            return self.stored_payload
        return orjson.dumps(self.payload)

    def to_dict(self, payload: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "message_id": self.message_id,
            "event_position": self.event_position,
            "topic": self.topic,
            "key": self.key,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at),
            "last_error": self.last_error,
            "claimed_by": self.claimed_by,
            "claimed_until": None if self.claimed_until is None else iso(self.claimed_until),
            "created_at": iso(self.created_at),
            "delivered_at": None if self.delivered_at is None else iso(self.delivered_at),
        }
        if payload:
            out["headers"] = self.headers
            out["payload"] = self.payload
        return out


@dataclass(slots=True)
class OutboxFailure:
    """A failed delivery attempt to record: back off until `next_attempt_at`, or `dead`."""

    seq: int
    error: str
    attempts: int
    next_attempt_at: datetime
    dead: bool


@dataclass(slots=True)
class Lease:
    """A claimed batch: `owner` holds those of `seqs` still pending until `until` (and after
    that, until another claim takes them)."""

    lease_id: int
    owner: str
    until: datetime
    seqs: list[int]


def unlease(
    leases: Sequence[Lease], seqs: Collection[int] | None
) -> tuple[list[int], list[Lease], list[int]]:
    """Take `seqs` (all, when None) out of `leases`: the seqs that were in them, the leases
    left holding fewer (their `seqs` updated), and the ids of those left holding none."""
    taken: list[int] = []
    shrunk: list[Lease] = []
    emptied: list[int] = []
    wanted = None if seqs is None else set(seqs)
    for lease in leases:
        if wanted is None:
            gone, kept = lease.seqs, []
        else:
            gone = [s for s in lease.seqs if s in wanted]
            if not gone:
                continue
            kept = [s for s in lease.seqs if s not in wanted]
        taken += gone
        if kept:
            lease.seqs = kept
            shrunk.append(lease)
        else:
            emptied.append(lease.lease_id)
    return taken, shrunk, emptied


@dataclass(slots=True)
class SagaRecord:
    """A saga instance as stored; `steps`, `results`, `compensations` and `state` are JSON."""

    saga_id: str
    saga_type: str
    status: str
    current_step: int
    steps: list[dict[str, Any]]
    results: dict[str, Any]
    compensations: list[dict[str, Any]]
    state: dict[str, Any]
    correlation_id: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    version: int = 0


@dataclass(slots=True)
class Deadline:
    """A durable timer of a saga: pending until fired (or cancelled)."""

    deadline_id: str
    saga_id: str
    name: str
    due_at: datetime
    payload: dict[str, Any]
    status: str = "pending"
    fired_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "deadline_id": self.deadline_id,
            "saga_id": self.saga_id,
            "name": self.name,
            "due_at": iso(self.due_at),
            "status": self.status,
            "fired_at": None if self.fired_at is None else iso(self.fired_at),
        }


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, the one timestamp format of the output."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


# An escaped NUL (`\u0000` not itself preceded by an escaping backslash). PostgreSQL's
# jsonb and text cannot hold NUL, so no backend accepts it: the backends behave the same,
# and what one store holds can always be imported into the other.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def dumps(value: Any) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        # Input that parsed as JSON but cannot be stored (nested deeper than 254 levels, an
        # integer beyond 64 bits) is bad input; a Python value JSON lacks (a set) is a bug.
        if "Recursion limit" in str(exc) or "Integer exceeds" in str(exc):
            raise ValidationError(f"the data cannot be stored as JSON: {exc}") from None
        raise
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValidationError("JSON data contains a NUL character (\\u0000), which the store cannot hold")
    return text


def _same_content(stored: StoredEvent, stream_id: str, new: NewEvent) -> bool:
    return (
        stored.stream_id == stream_id
        and stored.event_type == new.type
        and stored.data == orjson.loads(dumps(new.data))
    )


class StreamBusy(Exception):
    """A transaction asked not to wait (`Transaction.nowait`) met a stream another one holds."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self.stream_id = stream_id


# One row per event as the backends insert it, in this column order:
# stream_id, stream_version, event_id, event_type, schema_version, category, data, metadata, recorded_at
EventRow = tuple[str, int, str, str, int, str, str, str, datetime]
# One event as a fold reads it: (global_position, stream_version, event_type,
# schema_version, data), data a decoded dict or JSON text depending on the backend.
FoldRow = tuple[int, int, str, int, Any]


class Commands(ABC):
    """Commands already handled (idempotent dispatch), in one transaction."""

    @abstractmethod
    def processed(self, command_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def record(self, command_id: str, stream_id: str, result: dict[str, Any]) -> None: ...


class Snapshots(ABC):
    """Aggregate snapshots, in one transaction."""

    @abstractmethod
    def load(self, stream_id: str) -> Snapshot | None: ...

    def usable(self, stream_id: str, schema_version: str, to_version: int | None = None) -> Snapshot | None:
        """The snapshot of `stream_id` if it is of `schema_version` and taken at most at
        `to_version` (a fold may start from it), else None."""
        snap = self.load(stream_id)
        if snap is None or snap.schema_version != schema_version:
            return None
        return None if to_version is not None and snap.version > to_version else snap

    @abstractmethod
    def save(self, snapshot: Snapshot) -> None: ...

    @abstractmethod
    def select(self, limit: int | None = None) -> list[Snapshot]: ...

    @abstractmethod
    def delete(self, stream_id: str | None = None) -> int:
        """Delete the snapshot of `stream_id`, or all snapshots; returns how many."""


class Sagas(ABC):
    """Saga instances and their deadlines, in one transaction (the rules live in
    services/sagas.py; the runner's position is a checkpoint, see tracking.py)."""

    @abstractmethod
    def try_lock(self, name: str) -> bool:
        """Take a lock named `name` until this transaction ends; False if another holds it.
        On PostgreSQL a holder that then stops for more than LOCK_IDLE seconds between two
        statements (SIGSTOP, a hung process) loses its session, and with it the lock and
        its uncommitted work: another runner takes over."""

    @abstractmethod
    def get(self, saga_id: str) -> SagaRecord | None: ...

    @abstractmethod
    def save(self, saga: SagaRecord) -> None:
        """Insert or update; bumps `saga.version`."""

    @abstractmethod
    def select(
        self, status: str | None = None, saga_type: str | None = None, limit: int | None = None
    ) -> list[SagaRecord]: ...

    @abstractmethod
    def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        """Saga instances per status (only these statuses when given: an index range, not a table count)."""

    @abstractmethod
    def add_deadline(self, deadline: Deadline) -> None: ...

    @abstractmethod
    def due_deadlines(self, now: datetime, limit: int) -> list[Deadline]: ...

    @abstractmethod
    def deadlines(self, saga_id: str) -> list[Deadline]: ...

    @abstractmethod
    def set_deadline_status(self, deadline_id: str, status: str, fired_at: datetime | None) -> None: ...


class Outbox(ABC):
    """Outbox rows, their leases and delivery records, in one transaction (delivery rules
    live in services/outbox.py)."""

    @abstractmethod
    def add(self, messages: Sequence[NewMessage]) -> None:
        """Insert outbox rows; a message id that is already there is left alone."""

    @abstractmethod
    def claim(
        self,
        owner: str,
        limit: int,
        now: datetime,
        until: datetime,
        topics: Sequence[str] | None = None,
    ) -> list[OutboxMessage]:
        """Lease up to `limit` due pending messages to `owner` until `until`, in seq order.

        Due: `next_attempt_at <= now` and not leased (or the lease ran out). Claimable:
        no earlier pending message with the same topic and key is backing off or leased,
        so order per key holds across concurrent drains. Concurrent claims never
        return the same message (each backend serialises or skips locked rows)."""

    def claimers(self, now: datetime) -> list[str]:
        """Owners holding unexpired leases on pending messages."""
        return sorted({lease.owner for lease in self._leases() if lease.until >= now})

    def renew(self, owner: str, seqs: Sequence[int], until: datetime) -> int:
        """Extend `owner`'s leases on `seqs`; returns how many it still held."""
        held = self._unlease(owner, seqs)
        if held:
            self._add_lease(owner, until, held)
        return len(held)

    def release(self, owner: str, seqs: Sequence[int] | None = None, error: str | None = None) -> int:
        """Drop `owner`'s leases (on `seqs`, or all), recording `error` when given; attempts stay."""
        held = self._unlease(owner, seqs)
        if held and error is not None:
            self._set_error(held, error)
        return len(held)

    def mark_delivered(self, seqs: Sequence[int], now: datetime, owner: str | None = None) -> int:
        """Pending messages `seqs` were delivered: status delivered, one more attempt, lease dropped.

        With `owner`, only messages `owner` still holds (fencing: a run whose lease ran out
        and was taken over cannot record over the new holder); returns how many were marked."""
        held = self._unlease(owner, seqs)
        return self._delivered(seqs if owner is None else held, now)

    def mark_failed(self, owner: str, failures: Sequence[OutboxFailure]) -> int:
        """Record failed attempts on messages `owner` still leases."""
        held = set(self._unlease(owner, [f.seq for f in failures]))
        return self._failed([f for f in failures if f.seq in held])

    # A lease is a row of its own (see Lease), so that a claim writes one row per batch
    # rather than one per message, and a delivery writes each message's row once. Pending
    # messages are the only ones in leases: whatever takes a message out of pending, or
    # drops its lease, takes it out of its lease in the same transaction.

    def _unlease(self, owner: str | None, seqs: Collection[int] | None) -> list[int]:
        """Take `seqs` (all, when None) out of `owner`'s leases (anyone's, when None),
        locked first; returns the seqs that were in them."""
        taken, shrunk, emptied = unlease(self._leases(owner, lock=True), seqs)
        if shrunk or emptied:
            self._rewrite_leases(shrunk, emptied)
        return taken

    def _claimed(
        self, messages: list[OutboxMessage], expired: Sequence[Lease], owner: str, until: datetime
    ) -> list[OutboxMessage]:
        """Lease `messages`, just selected, to `owner` in one new lease; those taken over
        from `expired` leases leave them."""
        seqs = [m.seq for m in messages]
        if expired:
            _, shrunk, emptied = unlease(expired, seqs)
            self._rewrite_leases(shrunk, emptied)
        self._add_lease(owner, until, seqs)
        for m in messages:
            m.claimed_by, m.claimed_until = owner, until
        return messages

    def _show_leases(self, messages: list[OutboxMessage]) -> list[OutboxMessage]:
        """`messages` with their holders filled in (pending ones only are leased)."""
        if any(m.status == "pending" for m in messages):
            held = {s: lease for lease in self._leases() for s in lease.seqs}
            for m in messages:
                lease = held.get(m.seq) if m.status == "pending" else None
                if lease is not None:
                    m.claimed_by, m.claimed_until = lease.owner, lease.until
        return messages

    @abstractmethod
    def _leases(self, owner: str | None = None, lock: bool = False) -> list[Lease]:
        """The leases of `owner` (everyone's, when None), locked against other writers when `lock`."""

    @abstractmethod
    def _add_lease(self, owner: str, until: datetime, seqs: Sequence[int]) -> None: ...

    @abstractmethod
    def _rewrite_leases(self, shrunk: Sequence[Lease], emptied: Sequence[int]) -> None:
        """Store the `seqs` of leases `shrunk`, and delete the leases `emptied`."""

    @abstractmethod
    def _set_error(self, seqs: Sequence[int], error: str) -> None:
        """Pending messages `seqs`: `error` as their last error."""

    @abstractmethod
    def _delivered(self, seqs: Sequence[int], now: datetime) -> int:
        """Pending messages `seqs`: delivered at `now`, one more attempt; how many."""

    @abstractmethod
    def _failed(self, failures: Sequence[OutboxFailure]) -> int:
        """Pending messages: each failure recorded (attempts, next attempt, error, dead); how many."""

    @abstractmethod
    def count_due(self, now: datetime, topics: Sequence[str] | None = None) -> int:
        """Pending messages due at `now` (leased or not), optionally only in `topics`."""

    @abstractmethod
    def backlog(self, now: datetime) -> tuple[int, int, int, datetime | None, int]:
        """(pending, due at `now`, dead, oldest pending created_at, highest seq): read through
        the pending and dead indexes and the key, never counting delivered rows."""

    @abstractmethod
    def summary(self, now: datetime) -> list[tuple[str, str, int, int, datetime | None]]:
        """(topic, status, count, due at `now`, oldest created_at) for each topic and status present."""

    @abstractmethod
    def select(
        self,
        status: str | None = None,
        topic: str | None = None,
        limit: int | None = None,
        key: str | None = None,
    ) -> list[OutboxMessage]:
        """Outbox rows in seq order, optionally filtered."""

    @abstractmethod
    def get(self, ident: str) -> OutboxMessage | None:
        """One row by message id, or by seq when `ident` is a number."""

    @abstractmethod
    def requeue(self, now: datetime, seq: int | None = None, dead: bool = False) -> int:
        """Make messages due at `now` with no attempts: message `seq` (pending or dead), or every dead one."""

    @abstractmethod
    def purge(self, statuses: Sequence[str], before: datetime) -> int:
        """Delete rows in `statuses` delivered (or, for dead ones, created) before `before`."""


class Journal(ABC):
    """The operations journal, in one transaction."""

    @abstractmethod
    def add(self, entry: JournalEntry) -> int:
        """Insert `entry` (its `at` is now, its actor the process's when empty); returns its id."""

    @abstractmethod
    def select(
        self, since: datetime | None = None, kinds: Sequence[str] | None = None, limit: int | None = None
    ) -> list[JournalEntry]:
        """Entries in the order they were written, optionally since a time and of some kinds."""


class Transaction(ABC):
    """One database transaction; everything done through it commits together."""

    # True: taking a stream another transaction holds raises StreamBusy instead of waiting
    # (a transaction appending to many streams must not wait while holding some: deadlock).
    nowait: bool = False

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion = ANY
    ) -> AppendResult:
        """Append `events` to `stream_id` if it is at `expected`; atomic and idempotent."""
        validate_stream_id(stream_id)
        if not events:
            raise ValidationError("nothing to append: no events given")
        for e in events:
            validate_event_type(e.type)
        self._lock_for_append()
        given = [e.event_id for e in events if e.event_id]
        if given:
            existing = self._events_by_id(given)
            if existing:
                return self._replayed(stream_id, events, existing)
        now = datetime.now(UTC)
        category = category_of(stream_id)
        ids = [e.event_id or new_id() for e in events]
        rows: list[EventRow] = [
            (
                stream_id,
                i,
                ids[i - 1],
                e.type,
                e.schema_version,
                category,
                dumps(e.data),
                dumps(e.metadata),
                now,
            )
            for i, e in enumerate(events, 1)
        ]
        current, positions = self._insert_at_head(stream_id, expected, rows)
        return AppendResult(stream_id, current + len(events), positions, ids, recorded_at=now)

    def _insert_at_head(
        self, stream_id: str, expected: ExpectedVersion, rows: list[EventRow]
    ) -> tuple[int, list[int]]:
        """Insert `rows`, whose stream versions count from 1, after the head of `stream_id`
        if that head is at `expected`; returns (head before, positions)."""
        current = self._stream_version(stream_id)
        check_expected(stream_id, expected, current)
        if current:
            rows = [(r[0], current + r[1], *r[2:]) for r in rows]
        return current, self._insert_events(rows)

    def _replayed(
        self, stream_id: str, events: Sequence[NewEvent], existing: list[StoredEvent]
    ) -> AppendResult:
        by_id = {e.event_id: e for e in existing}
        if len(by_id) != len(events) or any(
            e.event_id not in by_id or not _same_content(by_id[e.event_id], stream_id, e) for e in events
        ):
            first = existing[0]
            raise DuplicateEventError(
                f"event id {first.event_id} already exists at position {first.global_position} "
                "with different content (or the batch mixes new and existing ids)"
            )
        stored = [by_id[e.event_id] for e in events]  # type: ignore[index]
        return AppendResult(
            stream_id,
            max(s.stream_version for s in stored),
            [s.global_position for s in stored],
            [s.event_id for s in stored],
            duplicate=True,
        )

    def import_events(self, events: Sequence[StoredEvent], lines: Sequence[int] | None = None) -> int:
        """Insert exported events keeping ids and stream versions; ids already stored with
        the same content are skipped. `lines` (one per event) name the failing line in errors."""
        if not events:
            return 0
        self._lock_for_append()
        existing = {e.event_id: e for e in self._events_by_id([e.event_id for e in events])}
        versions: dict[str, int] = {}
        rows: list[EventRow] = []
        for i, e in enumerate(events):
            at = f"line {lines[i]}: " if lines is not None else ""
            validate_stream_id(e.stream_id)
            validate_event_type(e.event_type)
            old = existing.get(e.event_id)
            if old is not None:
                if (old.stream_id, old.stream_version, old.event_type, old.data) != (
                    e.stream_id, e.stream_version, e.event_type, orjson.loads(dumps(e.data))
                ):  # fmt: skip
                    raise DuplicateEventError(
                        f"{at}event id {e.event_id} exists in the store with other content "
                        f"(as {old.stream_id}@{old.stream_version}, {old.event_type})"
                    )
                continue
            if e.stream_id not in versions:
                self.lock_stream(e.stream_id)
                versions[e.stream_id] = self._stream_version(e.stream_id)
            expected_next = versions[e.stream_id] + 1
            if e.stream_version != expected_next:
                error = ConcurrencyError(e.stream_id, e.stream_version - 1, versions[e.stream_id])
                error.args = (f"{at}{error}",)
                raise error
            versions[e.stream_id] = expected_next
            rows.append(
                (
                    e.stream_id,
                    e.stream_version,
                    e.event_id,
                    e.event_type,
                    e.schema_version,
                    category_of(e.stream_id),
                    dumps(e.data),
                    dumps(e.metadata),
                    e.recorded_at,
                )
            )
        if rows:
            self._insert_events(rows)
        return len(rows)

    # -- primitives each backend provides -------------------------------------------

    @abstractmethod
    def _lock_for_append(self) -> None:
        """What a writer does before it allocates positions, so that followers never read
        past one that commits later (see each backend)."""

    def lock_stream(self, stream_id: str) -> None:
        """Hold `stream_id` until this transaction ends: nobody else appends to it meanwhile,
        so its head read now stays true (SQLite: every writer already holds the database)."""
        self._lock_for_append()

    def lock_all_streams(self) -> None:
        """Hold every stream until this transaction ends (an import of any number of
        streams in one transaction: one lock, not one per stream)."""
        self._lock_for_append()

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """A nested block: an exception in it undoes what it wrote, and only that."""

    @abstractmethod
    def _stream_version(self, stream_id: str) -> int: ...

    @abstractmethod
    def _events_by_id(self, event_ids: Sequence[str]) -> list[StoredEvent]: ...

    @abstractmethod
    def _insert_events(self, rows: list[EventRow]) -> list[int]: ...

    @abstractmethod
    def stream_version(self, stream_id: str) -> int: ...

    @abstractmethod
    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> list[StoredEvent]: ...

    @abstractmethod
    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with `global_position > after`, in position order, as this transaction
        sees them; never skips a late commit (see docs/ordering.md)."""

    def read_stream_data(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
    ) -> list[FoldRow]:
        """What a fold needs of a stream's events, as FoldRow tuples: cheaper than
        read_stream, which also builds event ids, metadata and timestamps per event."""
        return [
            (e.global_position, e.stream_version, e.event_type, e.schema_version, e.data)
            for e in self.read_stream(stream_id, from_version, to_version, None, as_of)
        ]

    def read_from_snapshot(
        self, stream_id: str, schema_version: str, to_version: int | None = None
    ) -> tuple[int, Any, list[FoldRow]]:
        """The stream's snapshot if it has one of `schema_version` (at most at `to_version`)
        and the FoldRows after it: (snapshot version, its state as JSON text or a dict, rows),
        or (0, None, every row up to `to_version`). Backends read both in one statement."""
        snap = self.snapshots.usable(stream_id, schema_version, to_version)
        if snap is None:
            return 0, None, self.read_stream_data(stream_id, 1, to_version)
        return snap.version, snap.state, self.read_stream_data(stream_id, snap.version + 1, to_version)

    # -- the other concerns, bound to this transaction -------------------------------------

    @property
    @abstractmethod
    def commands(self) -> Commands: ...

    @property
    @abstractmethod
    def snapshots(self) -> Snapshots: ...

    @property
    @abstractmethod
    def sagas(self) -> Sagas: ...

    @property
    @abstractmethod
    def outbox(self) -> Outbox: ...

    @property
    @abstractmethod
    def journal(self) -> Journal: ...

    @property
    @abstractmethod
    def tracking(self) -> Tracking:
        """Checkpoints and leases in this transaction (see tracking.py)."""

    @property
    @abstractmethod
    def read_models(self) -> ReadModels:
        """Read-model tables in this transaction (see tracking.py)."""


class Wakeups(ABC):
    """Word that events may have been appended, for a follower between two reads. Only a
    hint: a follower still reads from its position, and a lost wake-up costs it one poll
    interval, never an event. Use as a context manager, in one thread."""

    @abstractmethod
    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for word of an append; True when there was some
        (at once on the first call and after a lost connection came back: anything may have
        been appended meanwhile), False when the time ran out, as it always does on a
        backend that cannot notify. Raises DatabaseError when the database cannot be
        reached; the next call tries again."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Wakeups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(ABC):
    """An event store. Use :func:`cqrsctl.open_store` to get one for a URL."""

    url: str
    backend: str
    # How long a follower without a wake-up waits before it looks again (seconds).
    poll_interval: float

    @abstractmethod
    def transaction(
        self, *, appending: bool = False, deferred: bool = False
    ) -> AbstractContextManager[Transaction]:
        """A write transaction: commits on success, rolls back on any exception.

        `appending` says it is going to append: a backend may then prepare for it as the
        transaction begins rather than at the append (PostgreSQL registers the writer in
        the round trip of BEGIN). `deferred`: it reads first and writes only after
        `tracking.fence()`; until then it holds no write lock (SQLite's is one for the whole
        database)."""

    @abstractmethod
    def reader(
        self, *, consistent: bool = True, snapshot: bool = False
    ) -> AbstractContextManager[Transaction]:
        """A read-only view; cheaper than a write transaction, never blocks writers.

        With `consistent=False` each statement reads the latest commits on its own, with
        no transaction around them (no BEGIN and COMMIT to pay for): for reads that stay
        right whatever is appended between their statements, as a stream's fold does.
        With `snapshot=True` every statement reads the database as the first one saw it
        (an export of several tables and their checkpoint): SQLite's read transactions
        always do; on PostgreSQL it is a REPEATABLE READ, READ ONLY transaction."""

    def lazy_transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction whose commit does not wait for the disk: visible to everyone
        at once and kept through a crash of this process, but a power loss or a crash of the
        database server may forget the last ones. Only for bookkeeping that may be lost
        that way (the outbox relay's leases and delivery records: a forgotten record sends
        the message again, which at-least-once delivery allows)."""
        return self.transaction()

    # -- schema ---------------------------------------------------------------------

    @abstractmethod
    def ddl(self) -> str:
        """The DDL `migrate` runs, as SQL text."""

    @abstractmethod
    def schema_version(self) -> int:
        """0 when the store has not been initialised."""

    @abstractmethod
    def core_columns(self) -> dict[str, set[str]]:
        """The core tables (see CORE_COLUMNS) that exist, with the columns each has."""

    @abstractmethod
    def durability(self) -> str:
        """What a commit survives, in a sentence, for `doctor`."""

    @abstractmethod
    def wakeups(self) -> Wakeups:
        """Wake-ups after appends, for a follower that waits for new events."""

    @abstractmethod
    def guards(self) -> dict[str, bool]:
        """The append-only triggers this backend installs: name -> present and enabled."""

    def migrate(self) -> int:
        """Bring the schema forward to the current version (journaled when it changes
        anything); returns that version."""
        if self.schema_version() < SCHEMA_VERSION:
            self._apply_ddl(JournalEntry("migrate", {}, {}), everything=False)
        return self.schema_version()

    def initialise(self, actor: str | None = None) -> dict[str, Any]:
        """`cqrsctl init`: migrate, put back missing core tables and triggers, and journal it.
        Raises UnhealthyError naming what it cannot repair (an altered core table)."""
        from ..errors import UnhealthyError

        before = self.schema_version()
        problems = self.schema_problems() if before else []
        result: dict[str, Any] = {"from_version": before, "to_version": SCHEMA_VERSION, "repaired": problems}
        self._apply_ddl(JournalEntry("init", {}, result, actor or ""), everything=True)
        left = self.schema_problems()
        if left:
            raise UnhealthyError(
                "init cannot repair this store: "
                + "; ".join(left)
                + " (restore it from a backup or an export)"
            )
        result["repaired"] = [p for p in problems if p not in left]
        return result

    @abstractmethod
    def _apply_ddl(self, entry: JournalEntry, everything: bool) -> None:
        """In one transaction: the migrations not applied yet (all of them when
        `everything`: each statement is idempotent, so missing objects come back), and
        `entry` in the journal when that did anything (always, when `everything`)."""

    def schema_problems(self) -> list[str]:
        """What is wrong with the core tables: missing, altered, or unguarded (empty: fine)."""
        found = self.core_columns()
        problems = []
        for table, columns in CORE_COLUMNS.items():
            if table not in found:
                problems.append(f"core table {table} is missing")
            elif columns - found[table]:
                problems.append(
                    f"core table {table} lacks column(s) {', '.join(sorted(columns - found[table]))}"
                )
        for name, on in self.guards().items():
            if not on:
                problems.append(f"append-only trigger {name} is missing or disabled")
        return problems

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with `global_position > after`, in position order; never skips a late commit."""
        with self.reader(consistent=False) as tx:
            return tx.read_all(after, limit, categories, types)

    @abstractmethod
    def head(self) -> int:
        """The highest committed global position a follower may read up to (0 when empty):
        no event will commit at or below it later."""

    @abstractmethod
    def list_streams(self, category: str | None = None, limit: int | None = None) -> list[StreamInfo]: ...

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Row counts per table, for `doctor`."""

    def iter_all(
        self,
        after: int = 0,
        page: int = 1000,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
    ) -> Iterator[StoredEvent]:
        while True:
            batch = self.read_all(after, page, categories, types)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].global_position

    # -- conveniences over one transaction --------------------------------------------

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion = ANY
    ) -> AppendResult:
        with self.transaction(appending=True) as tx:
            return tx.append(stream_id, events, expected)

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        as_of: datetime | None = None,
    ) -> list[StoredEvent]:
        with self.reader() as tx:
            return tx.read_stream(stream_id, from_version, to_version, limit, as_of)

    def stream_version(self, stream_id: str) -> int:
        with self.reader() as tx:
            return tx.stream_version(stream_id)
