"""Read-model tables of projections (PostgreSQL; the interface and its rules are in
../tracking.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from ...errors import UsageError
from ..base import dumps
from ..tracking import ReadModels, Table, check_user_table
from .sql import _q

_RM_TYPES = {
    "text": "text",
    "int": "bigint",
    "float": "double precision",
    "decimal": "numeric",
    "bool": "boolean",
    "json": "jsonb",
    "timestamp": "timestamptz",
}

# `:name` parameters (not `::type` casts) -> psycopg's `%(name)s`.
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _placeholder(kind: str) -> str:
    return "%s::jsonb" if kind == "json" else "%s"


def _rm_in(kind: str, value: Any) -> Any:
    return dumps(value) if kind == "json" and value is not None else value


class PostgresReadModels(ReadModels):
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(query, params)
        return self.cur.fetchone()[0]  # type: ignore[index]

    def table_exists(self, name: str) -> bool:
        return self._one("SELECT to_regclass(%s) IS NOT NULL", (_q(name),))  # type: ignore[no-any-return]

    def create_table(self, name: str, table: Table) -> None:
        check_user_table(name)
        cols = ", ".join(f"{_q(c)} {_RM_TYPES[k]}" for c, k in table.columns.items())
        key = ", ".join(_q(c) for c in table.key)
        # The primary key is named after the table, so a rename can carry it along.
        self.cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_q(name)} ({cols}, CONSTRAINT {_q(name + '__pk')} PRIMARY KEY ({key}))"
        )

    def create_indexes(self, name: str, table: Table) -> None:
        for i, cols in enumerate(table.indexes):
            self.cur.execute(
                f"CREATE INDEX IF NOT EXISTS {_q(f'{name}__ix{i}')} ON {_q(name)}"
                f" ({', '.join(_q(c) for c in cols)})"
            )

    def drop_table(self, name: str) -> None:
        check_user_table(name)
        self.cur.execute(f"DROP TABLE IF EXISTS {_q(name)}")

    def rename_table(self, old: str, new: str) -> None:
        check_user_table(old), check_user_table(new)
        self.cur.execute(f"ALTER TABLE {_q(old)} RENAME TO {_q(new)}")
        self.cur.execute(f"ALTER INDEX IF EXISTS {_q(old + '__pk')} RENAME TO {_q(new + '__pk')}")

    def _where_keys(self, table: Table, n: int) -> str:
        one = "(" + ",".join("%s" for _ in table.key) + ")"
        return f"({', '.join(_q(c) for c in table.key)}) IN (VALUES {','.join([one] * n)})"

    def fetch(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        names = list(table.columns)
        cols = ", ".join(_q(c) for c in names)
        out: list[dict[str, Any]] = []
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            if len(table.key) == 1:
                self.cur.execute(
                    f"SELECT {cols} FROM {_q(name)} WHERE {_q(table.key[0])} = ANY(%s)",
                    ([k[0] for k in chunk],),
                )
            else:
                self.cur.execute(
                    f"SELECT {cols} FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                    [v for k in chunk for v in k],
                )
            out += [dict(zip(names, r, strict=True)) for r in self.cur.fetchall()]
        return out

    def write(self, name: str, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        names = list(table.columns)
        kinds = [table.columns[c] for c in names]
        values = table.value_columns
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in values)
            if values
            else "DO NOTHING"
        )
        target = f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in names)})"
        on_conflict = f" ON CONFLICT ({', '.join(_q(c) for c in table.key)}) {conflict}"
        columns = [[_rm_in(k, r.get(c)) for r in rows] for c, k in zip(names, kinds, strict=True)]
        # One statement with a column per array, unless a column mixes Python types (an
        # array takes one): then a statement per row, each value adapted on its own.
        if all(len({v.__class__ for v in col} - {type(None)}) <= 1 for col in columns):
            arrays = ", ".join(f"%s::{'text' if k == 'json' else _RM_TYPES[k]}[]" for k in kinds)
            aliases = [f"c{i}" for i in range(len(names))]
            picked = ", ".join(
                f"u.{a}::jsonb" if k == "json" else f"u.{a}" for a, k in zip(aliases, kinds, strict=True)
            )
            self.cur.execute(
                f"{target} SELECT {picked} FROM unnest({arrays}) AS u({', '.join(aliases)}){on_conflict}",
                columns,
            )
            return
        self.cur.executemany(
            f"{target} VALUES ({', '.join(_placeholder(k) for k in kinds)}){on_conflict}",
            [list(values) for values in zip(*columns, strict=True)],
        )

    def remove(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> None:
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            self.cur.execute(
                f"DELETE FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                [v for k in chunk for v in k],
            )

    def select(
        self,
        name: str,
        table: Table,
        where: dict[str, Any] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        names = list(table.columns)
        query = f"SELECT {', '.join(_q(c) for c in names)} FROM {_q(name)}"
        params: list[Any] = []
        if where:
            query += " WHERE " + " AND ".join(f"{_q(c)} = {_placeholder(table.columns[c])}" for c in where)
            params += [_rm_in(table.columns[c], v) for c, v in where.items()]
        if order_by:
            query += " ORDER BY " + ", ".join(
                f"{_q(c[1:])} DESC" if c.startswith("-") else _q(c) for c in order_by
            )
        if limit is not None:
            if int(limit) < 0:
                raise UsageError(f"limit must not be negative, got {limit}")
            query += f" LIMIT {int(limit)}"
        self.cur.execute(query, params)
        return [dict(zip(names, r, strict=True)) for r in self.cur.fetchall()]

    def columns(self, name: str) -> list[str] | None:
        if not self.table_exists(name):
            return None
        self.cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (_q(name),),
        )
        return [r[0] for r in self.cur.fetchall()]

    def rows(
        self, name: str, table: Table, limit: int | None = None, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        names = list(table.columns)
        # A server-side cursor: the rows come `batch` at a time, not all at once.
        with self.cur.connection.cursor(name="cqrsctl_rows") as cur:
            cur.itersize = batch
            cur.execute(
                f"SELECT {', '.join(_q(c) for c in names)} FROM {_q(name)}"
                f" ORDER BY {', '.join(_q(c) for c in table.key)} LIMIT %s",
                (limit,),
            )
            for row in cur:
                yield dict(zip(names, row, strict=True))

    def execute(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        query = _NAMED.sub(r"%(\1)s", text.replace("%", "%%"))
        self.cur.execute(query, params or {})  # type: ignore[call-overload]
        if self.cur.description is None:
            return []
        names = [d.name for d in self.cur.description]
        return [dict(zip(names, r, strict=True)) for r in self.cur.fetchall()]
