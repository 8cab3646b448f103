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
    "backend_of",
    "open_store",
    "parse_expected",
    "redact",
]


def backend_of(url: str) -> str:
    """`sqlite` or `postgresql` for a URL this package can open; DatabaseError (exit 7) otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise DatabaseError(
        f"unsupported database URL {redact(url)!r}: use sqlite:///path.db or postgresql://user@host/db"
    )


def open_store(url: str, *, migrate: bool = True, create: bool = True) -> Store:
    """Open the store at `url` (`sqlite:///file.db` or `postgresql://…`), migrating it forward.
    Without `create`, a missing SQLite file is an error rather than a new, empty store."""
    if backend_of(url) == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, migrate=migrate, create=create)
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise DatabaseError("PostgreSQL needs the psycopg driver: pip install 'cqrsctl[postgres]'") from None
    return PostgresStore(url, migrate=migrate)
