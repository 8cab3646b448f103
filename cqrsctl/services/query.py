"""Run an app's registered queries against the read side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..app import Aggregate, App
from ..errors import NotFoundError, ValidationError
from ..store import Store, StoredEvent
from ..store.tracking import Table
from .aggregates import load


class QueryContext:
    """The first argument of every query function: read access to the store."""

    def __init__(self, app: App, store: Store) -> None:
        self.app, self.store = app, store

    def load(self, stream_id: str) -> Aggregate:
        """The current state of an aggregate (raises NotFoundError for an unknown stream)."""
        cls = self.app.aggregate_for(stream_id)
        if cls is None:
            raise NotFoundError(f"no aggregate of the app handles stream {stream_id!r}")
        with self.store.reader() as tx:
            agg = load(self.app, tx, cls, stream_id)
        if not agg.exists:
            raise NotFoundError(f"stream {stream_id!r} not found")
        return agg

    def events(self, stream_id: str) -> list[StoredEvent]:
        return self.store.read_stream(stream_id)

    # -- read models (projection tables) ----------------------------------------------------

    def _table(self, name: str) -> Table:
        for projection in self.app.projections.values():
            if name in projection.tables:
                return projection.tables[name]
        raise NotFoundError(f"no projection of the app declares a table {name!r}")

    def _exists(self, tx: Any, table: str) -> None:
        if not tx.read_models.table_exists(table):
            raise NotFoundError(
                f"read-model table {table} does not exist yet: run `cqrsctl projections catch-up` or the daemon"
            )

    def all(
        self, table: str, order_by: Sequence[str] = (), limit: int | None = None, **where: Any
    ) -> list[dict[str, Any]]:
        """Rows of a read-model table matching column=value filters (`-col` orders descending)."""
        spec = self._table(table)
        for col in [*where, *(c.lstrip("-") for c in order_by)]:
            if col not in spec.columns:
                raise ValidationError(f"{table} has no column {col!r}")
        with self.store.reader() as tx:
            self._exists(tx, table)
            return tx.read_models.select(table, spec, where, order_by, limit)

    def get(self, table: str, **key: Any) -> dict[str, Any] | None:
        """The row of a read-model table with this primary key, or None."""
        spec = self._table(table)
        with self.store.reader() as tx:
            self._exists(tx, table)
            rows = tx.read_models.fetch(table, spec, [tuple(key[c] for c in spec.key)])
        return rows[0] if rows else None

    def one(self, table: str, **key: Any) -> dict[str, Any]:
        """Like `get`, but a missing row is a NotFoundError."""
        row = self.get(table, **key)
        if row is None:
            shown = ", ".join(f"{k}={v}" for k, v in key.items())
            raise NotFoundError(f"no row in {table} with {shown}")
        return row

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Raw SQL over the read models with `:name` parameters (values as the database gives them)."""
        with self.store.reader() as tx:
            return tx.read_models.execute(sql, params)


def run_query(app: App, store: Store, name: str, raw_params: dict[str, str]) -> Any:
    query = app.queries.get(name)
    if query is None:
        known = ", ".join(sorted(app.queries)) or "none"
        raise NotFoundError(f"unknown query {name!r} (known: {known})")
    return query.fn(QueryContext(app, store), **query.coerce(raw_params))
