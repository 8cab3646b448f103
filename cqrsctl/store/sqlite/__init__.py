"""SQLite backend: one file, WAL, one writer at a time (see store.py)."""

from .events import SQLiteTransaction
from .schema import MIGRATIONS
from .store import SQLiteStore, parse_sqlite_url

__all__ = ["MIGRATIONS", "SQLiteStore", "SQLiteTransaction", "parse_sqlite_url"]
