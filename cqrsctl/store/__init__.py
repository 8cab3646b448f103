"""Event store: one interface (:class:`Store`), a SQLite and a PostgreSQL backend."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import DatabaseError
from ..redaction import redact
from .base import (
    ANY,
    EXISTS,
    NO_STREAM,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    Snapshot,
    Store,
    StoredEvent,
    StreamInfo,
    Transaction,
    category_of,
    iso,
    parse_expected,
)

__all__ = [
    "ANY",
    "EXISTS",
    "NO_STREAM",
    "AppendResult",
    "ExpectedVersion",
    "NewEvent",
    "Snapshot",
    "Store",
    "StoredEvent",
    "StreamInfo",
    "Transaction",
    "category_of",
    "iso",
    "open_store",
    "parse_expected",
    "redact",
]


def open_store(url: str, *, migrate: bool = True, create: bool = True) -> Store:
    """Open the store at `url` (`sqlite:///file.db` or `postgresql://…`), migrating it forward.
    Without `create`, a missing SQLite file is an error rather than a new, empty store."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, migrate=migrate, create=create)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, migrate=migrate)
    raise DatabaseError(
        f"unsupported database URL {redact(url)!r}: use sqlite:///path.db or postgresql://user@host/db"
    )
