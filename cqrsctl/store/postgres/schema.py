"""The PostgreSQL schema: forward-only migrations, one file per version in migrations/."""

from __future__ import annotations

import re

from ..migrations import load

_DOLLAR = re.compile(r"\$(?:[A-Za-z_]\w*)?\$")


def _complete(text: str) -> bool:
    """`text` ends with a `;` outside quotes, comments and $-quoted bodies."""
    i, n, last = 0, len(text), ""
    while i < n:
        c = text[i]
        if c in "'\"":
            end = text.find(c, i + 1)
            while end != -1 and text[end + 1 : end + 2] == c:  # '' inside a literal
                end = text.find(c, end + 2)
            if end == -1:
                return False
            i, last = end + 1, c
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        dollar = _DOLLAR.match(text, i) if c == "$" else None
        if dollar:
            end = text.find(dollar.group(), dollar.end())
            if end == -1:
                return False
            i, last = end + len(dollar.group()), "$"
            continue
        if not c.isspace():
            last = c
        i += 1
    return last == ";"


MIGRATIONS: dict[int, list[str]] = load(__name__.rpartition(".")[0], _complete)

_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS cqrsctl_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL
)"""
