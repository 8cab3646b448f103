"""What projections and the daemon need from a store, besides events.

Each backend's transaction offers a :class:`Tracking` (``tx.tracking``: checkpoints with
leases) and :class:`ReadModels` (``tx.read_models``: a small read-model executor), both
bound to that transaction, so a read-model change and its checkpoint commit together.

Checkpoint rows are named by what they track: a projection by its name (``balances``),
the shadow build of a rebuild by ``rebuild:<name>``, a running daemon by
``daemon:<id>`` (its heartbeat), the saga runner by ``sagas`` (how far it read). Names
with a colon are never projection names.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import UsageError

# Portable column types of read-model tables and what each backend makes of them.
COLUMN_TYPES = ("text", "int", "float", "decimal", "bool", "json", "timestamp")

# Bounds of a fenced commit (see Tracking.fence).
FENCE_WAIT = 1.0
FENCE_IDLE = 2.0
LOCK_IDLE = 5.0  # a try_lock holder's (saga work) longest pause between statements

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


# The store's own tables. User code (read-model tables) may never name one of them, nor
# anything else the store creates in the same namespace (indexes, sequences, constraints).
CORE_TABLES = (
    "events", "snapshots", "checkpoints", "outbox", "outbox_leases", "sagas", "deadlines",
    "processed_commands", "cqrsctl_schema", "cqrsctl_journal",
)  # fmt: skip
_CORE_RELATIONS = frozenset(
    [
        *CORE_TABLES,
        *(f"{t}_pkey" for t in CORE_TABLES),
        "events_category", "events_event_id_key", "events_stream_id_stream_version_key",
        "events_global_position_seq", "outbox_due", "outbox_pending", "outbox_pending_key",
        "outbox_message_id_key", "outbox_seq_seq", "outbox_leased", "outbox_pending_due", "outbox_dead",
        "outbox_leases_lease_id_seq", "sagas_status", "deadlines_due",
        "events_append_only_update", "events_append_only_delete",
    ]
)  # fmt: skip


# The saga runner keeps its position (and its lock) under this name, beside the projections'.
SAGA_CHECKPOINT = "sagas"


def is_core(name: str) -> bool:
    """A name the store keeps for itself (its tables, their indexes, anything `cqrsctl_…`)."""
    return name in _CORE_RELATIONS or name.startswith("cqrsctl_")


def check_user_table(name: str) -> str:
    """The last line of defence: a read-model operation never touches a core table."""
    if is_core(name.removesuffix("__rebuild")):
        raise UsageError(f"{name!r} is a table of the store itself, not of a read model")
    return name


def check_name(name: str, what: str) -> str:
    """Table, column and projection names become SQL identifiers: keep them plain."""
    if not _NAME.match(name):
        raise UsageError(f"invalid {what} name {name!r}: lower-case letters, digits and _, at most 48")
    return name


@dataclass(frozen=True)
class Table:
    """A read-model table: ``Table({"account_id": "text", "balance": "decimal"}, key=["account_id"])``.

    Column types are portable (see COLUMN_TYPES); `key` is the primary key; `indexes`
    lists extra indexes, each a list of column names.
    """

    columns: dict[str, str]
    key: Sequence[str]
    indexes: Sequence[Sequence[str]] = ()

    def __post_init__(self) -> None:
        if not self.columns:
            raise UsageError("a read-model table needs at least one column")
        for col, kind in self.columns.items():
            check_name(col, "column")
            if kind not in COLUMN_TYPES:
                raise UsageError(
                    f"column {col!r} has unknown type {kind!r} (use one of {', '.join(COLUMN_TYPES)})"
                )
        if not self.key:
            raise UsageError("a read-model table needs a primary key")
        for col in [*self.key, *(c for ix in self.indexes for c in ix)]:
            if col not in self.columns:
                raise UsageError(f"key or index column {col!r} is not a column of the table")

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.key]


@dataclass
class Checkpoint:
    """How far a consumer got, and who may advance it (the lease)."""

    name: str
    position: int = 0
    version: str | None = None
    status: str = "idle"
    error: str | None = None
    error_position: int | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    owner: str | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Computed with the database's clock when read: the lease has not run out.
    lease_valid: bool = False

    def to_dict(self) -> dict[str, Any]:
        from .base import iso

        return {
            "name": self.name,
            "position": self.position,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "error_position": self.error_position,
            "skipped": self.skipped,
            "owner": self.owner if self.lease_valid else None,
            "lease_until": None if self.lease_until is None else iso(self.lease_until),
            "updated_at": None if self.updated_at is None else iso(self.updated_at),
        }


# One event as projections read it, cheap to fetch in bulk:
# (global_position, stream_id, event_type, data, stream_version, schema_version, metadata,
#  recorded_at, event_id), a lean row that stops after `schema_version`, or a bare row that
# stops after `data` (what most handlers read; each column left out is about 7 % less of
# SQLite's cost to fetch a row, the GIL and its mutexes taken per column). `data` and `metadata` are
# decoded dicts or JSON text, and `recorded_at` a datetime or ISO text, depending on the
# backend; EventView decodes lazily.
EventTuple = tuple[Any, ...]


class ReadModels(ABC):
    """Read-model tables, inside one transaction (so a change and its checkpoint commit together)."""

    @abstractmethod
    def table_exists(self, name: str) -> bool: ...

    @abstractmethod
    def create_table(self, name: str, table: Table) -> None:
        """CREATE TABLE IF NOT EXISTS with its primary key (indexes: create_indexes)."""

    @abstractmethod
    def create_indexes(self, name: str, table: Table) -> None: ...

    @abstractmethod
    def drop_table(self, name: str) -> None:
        """DROP TABLE IF EXISTS."""

    @abstractmethod
    def rename_table(self, old: str, new: str) -> None:
        """Rename a table and its primary key, so `old` can be created again."""

    @abstractmethod
    def fetch(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Rows whose primary key is in `keys`, as dicts of Python values."""

    @abstractmethod
    def write(self, name: str, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows, replacing those with the same primary key (every column given)."""

    @abstractmethod
    def remove(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> None: ...

    @abstractmethod
    def select(
        self,
        name: str,
        table: Table,
        where: dict[str, Any] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows matching column = value filters, as dicts of Python values."""

    @abstractmethod
    def columns(self, name: str) -> list[str] | None:
        """The columns table `name` has in the database, in order; None when there is none."""

    @abstractmethod
    def rows(
        self, name: str, table: Table, limit: int | None = None, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every row (or the first `limit`) in primary-key order, as dicts of Python values,
        read by one statement and fetched `batch` at a time: memory stays flat however
        large the table. Consume it before the transaction ends."""

    @abstractmethod
    def execute(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Raw SQL with `:name` parameters; returns the rows (empty for statements)."""


class Tracking(ABC):
    """Checkpoints and leases, inside one transaction."""

    # -- clock and events ------------------------------------------------------------

    @abstractmethod
    def now(self) -> datetime:
        """The database's clock (leases are compared against it, not the caller's)."""

    @abstractmethod
    def head(self) -> int:
        """The highest committed global position a follower may read up to: no event will
        commit at or below it later. Followers read it first, then `scan(..., until=head)`."""

    @abstractmethod
    def scan(
        self,
        after: int,
        limit: int,
        types: Sequence[str] | None = None,
        until: int | None = None,
        lean: bool = False,
        bare: bool = False,
    ) -> list[EventTuple]:
        """Events after `after` (and at most `until`) in position order, as tuples (see
        EventTuple). The upper bound keeps the read to a range of the primary key, whatever
        the planner believes about the table (fresh statistics or none). `lean` rows stop
        after the schema version (no metadata, recorded_at, event_id), `bare` ones after
        `data`: cheaper to fetch."""

    @abstractmethod
    def sample(self, first: int, last: int) -> tuple[list[EventTuple], dict[tuple[str, int], int]]:
        """For each (event type, schema version) stored, its `first` oldest and `last` newest
        events as lean rows (in position order), and how many events each pair has."""

    # -- checkpoints and leases --------------------------------------------------------

    @abstractmethod
    def get(self, name: str, lock: bool = False) -> Checkpoint | None:
        """One checkpoint; `lock` holds its row until the transaction ends (fencing)."""

    @abstractmethod
    def begin_step(self, name: str) -> tuple[Checkpoint | None, int]:
        """Lock a checkpoint's row and read the head, in one round trip (a step's start)."""

    @abstractmethod
    def fence(
        self, name: str, *, wait: float | None = FENCE_WAIT, idle: float | None = FENCE_IDLE
    ) -> Checkpoint | None:
        """Make this transaction the writer and lock checkpoint `name` until it ends: the
        start of a commit that only the lease holder may make (the caller compares owner
        and token). In a `deferred` transaction the work before this held no write lock.
        On PostgreSQL a row lock not had within `wait` seconds raises LockedError, and a
        process that stops for more than `idle` seconds between statements from here on
        loses its session, so a stopped holder never keeps the row from others (None: no
        bound; for transactions that still run handlers after this)."""

    @abstractmethod
    def put(self, cp: Checkpoint, lease: float | None = None) -> datetime:
        """Insert or update a checkpoint (every field but created_at); with `lease`, its
        lease runs until that many seconds from now by the database's clock. Returns the
        row's new updated_at (a token: whoever wrote the row last)."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def checkpoints(self, prefix: str | None = None) -> list[Checkpoint]:
        """All checkpoints, or those whose name starts with `prefix`, by name."""

    @abstractmethod
    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease of an existing checkpoint when free, expired or already ours."""

    @abstractmethod
    def renew(self, names: Sequence[str], owner: str, seconds: float) -> list[str]:
        """Extend `owner`'s unexpired leases; returns the names it still holds."""

    @abstractmethod
    def release(self, names: Sequence[str], owner: str) -> None:
        """Give up `owner`'s leases on `names` so others may take them at once."""
