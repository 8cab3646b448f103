"""Versioned migration files, the one source of each backend's schema.

Each backend ships ``migrations/NNNN_what.sql`` in its package: version NNNN, its
statements separated by ``;``. They are read once, at import. A released file is never
edited: a change of schema is the next version's file, in both backends (the
schema-equivalence test compares what the two build).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources


def load(package: str, complete: Callable[[str], bool]) -> dict[int, list[str]]:
    """version -> statements of the migration files of `package` (a backend's package);
    `complete` says whether SQL text ends a statement in that dialect."""
    migrations: dict[int, list[str]] = {}
    for entry in (resources.files(package) / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            migrations[version] = split(entry.read_text(encoding="utf-8"), complete)
    if sorted(migrations) != list(range(1, len(migrations) + 1)):
        raise RuntimeError(
            f"{package}: migration versions must run 1, 2, … without gaps: {sorted(migrations)}"
        )
    return dict(sorted(migrations.items()))


def split(text: str, complete: Callable[[str], bool]) -> list[str]:
    """The statements of a migration file, without their `;`; comment lines between
    statements are dropped. A line ending in `;` ends a statement when `complete` says so
    (not inside a trigger's body or a quoted function)."""
    statements: list[str] = []
    lines: list[str] = []
    for line in text.splitlines():
        if not lines and (not line.strip() or line.lstrip().startswith("--")):
            continue
        lines.append(line)
        if line.rstrip().endswith(";") and complete("\n".join(lines)):
            statements.append("\n".join(lines).rstrip()[:-1].rstrip())
            lines = []
    if lines:
        raise RuntimeError(f"a migration ends inside a statement: {lines[0]!r}")
    return statements
