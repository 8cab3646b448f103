"""The SQLite schema: forward-only migrations, one file per version in migrations/."""

from __future__ import annotations

import sqlite3

from ..migrations import load

MIGRATIONS: dict[int, list[str]] = load(__name__.rpartition(".")[0], sqlite3.complete_statement)

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS cqrsctl_schema (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""
