"""The operations journal: one row per administrative operation, written in the
transaction of its effect (so an operation is recorded if and only if it happened), and
read by `cqrsctl audit`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..redaction import redact
from ..store import Store
from ..store.base import JournalEntry, Transaction


def _clean(value: Any) -> Any:
    if isinstance(value, str) and "://" in value:
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def record(
    tx: Transaction, kind: str, args: dict[str, Any], result: dict[str, Any], actor: str | None = None
) -> JournalEntry:
    """Journal `kind` (the command, e.g. "outbox purge") with what it was asked (`args`,
    URLs redacted) and what it changed (`result`), inside the caller's transaction."""
    entry = JournalEntry(kind, _clean(args), _clean(result), actor or "")
    tx.journal.add(entry)
    return entry


def entries(
    store: Store, since: datetime | None = None, kinds: Sequence[str] | None = None, limit: int | None = None
) -> list[JournalEntry]:
    """Journal rows in the order they were written. A kind selects itself and the kinds it
    begins (`projections` selects `projections reset`, `projections skip`, …)."""
    with store.reader() as tx:
        rows = tx.journal.select(since)
    if kinds:
        rows = [e for e in rows if any(e.kind == k or e.kind.startswith(k + " ") for k in kinds)]
    return rows if limit is None else rows[-limit:]
