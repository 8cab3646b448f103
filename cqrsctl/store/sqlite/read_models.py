"""Read-model tables of projections (SQLite; the interface and its rules are in
../tracking.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import DatabaseError, UsageError
from ..base import dumps
from ..tracking import ReadModels, Table, check_user_table
from .sql import _q, _ts, become_writer, utils

if TYPE_CHECKING:
    from .store import _WriteTransaction

_RM_TYPES = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "decimal": "TEXT",  # exact: Decimal <-> text, never through a float
    "bool": "INTEGER",
    "json": "TEXT",
    "timestamp": "TEXT",
}


def _rm_in(kind: str) -> Any:
    """Python value -> SQLite value for a column type (None when no conversion is needed)."""
    if kind == "decimal":
        return lambda v: None if v is None else str(v)
    if kind == "bool":
        return lambda v: None if v is None else int(bool(v))
    if kind == "json":
        return lambda v: None if v is None else dumps(v)
    if kind == "timestamp":
        return lambda v: v if v is None or isinstance(v, str) else _ts(v)
    return None


def _rm_out(kind: str) -> Any:
    from decimal import Decimal

    if kind == "decimal":
        return lambda v: None if v is None else Decimal(v)
    if kind == "bool":
        return lambda v: None if v is None else bool(v)
    if kind == "json":
        return lambda v: None if v is None else orjson.loads(v)
    if kind == "timestamp":
        return lambda v: None if v is None else datetime.fromisoformat(v)
    return None


class SQLiteReadModels(ReadModels):
    def __init__(self, conn: sqlite3.Connection, outer: _WriteTransaction | None = None) -> None:
        self.conn, self.outer = conn, outer

    def _writer(self) -> None:
        become_writer(self.conn, self.outer)

    def table_exists(self, name: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return row.fetchone() is not None

    def create_table(self, name: str, table: Table) -> None:
        check_user_table(name)
        self._writer()
        cols = ", ".join(f"{_q(c)} {_RM_TYPES[k]}" for c, k in table.columns.items())
        key = ", ".join(_q(c) for c in table.key)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_q(name)} ({cols}, PRIMARY KEY ({key})) WITHOUT ROWID"
        )

    def create_indexes(self, name: str, table: Table) -> None:
        self._writer()
        for i, cols in enumerate(table.indexes):
            self.conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_q(f'{name}__ix{i}')} ON {_q(name)}"
                f" ({', '.join(_q(c) for c in cols)})"
            )

    def drop_table(self, name: str) -> None:
        check_user_table(name)
        self._writer()
        self.conn.execute(f"DROP TABLE IF EXISTS {_q(name)}")

    def rename_table(self, old: str, new: str) -> None:
        check_user_table(old), check_user_table(new)
        self._writer()
        # The primary key index is named after the table and follows it.
        self.conn.execute(f"ALTER TABLE {_q(old)} RENAME TO {_q(new)}")

    def _where_keys(self, table: Table, n: int) -> str:
        if len(table.key) == 1:
            return f"{_q(table.key[0])} IN ({','.join('?' * n)})"
        one = "(" + ",".join("?" * len(table.key)) + ")"
        return f"({', '.join(_q(c) for c in table.key)}) IN (VALUES {','.join([one] * n)})"

    def _rows_out(self, table: Table, cursor: Any) -> list[dict[str, Any]]:
        names = list(table.columns)
        convert = [(i, f) for i, f in enumerate(_rm_out(table.columns[c]) for c in names) if f is not None]
        out = []
        for row in cursor:
            values = list(row)
            for i, f in convert:
                values[i] = f(values[i])
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _key_params(self, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[Any]:
        kinds = [_rm_in(table.columns[c]) for c in table.key]
        return [v if f is None else f(v) for key in keys for v, f in zip(key, kinds, strict=True)]

    def fetch(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cols = ", ".join(_q(c) for c in table.columns)
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            cursor = self.conn.execute(
                f"SELECT {cols} FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                self._key_params(table, chunk),
            )
            out += self._rows_out(table, cursor)
        return out

    def write(self, name: str, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        self._writer()
        if not rows:
            return
        names = list(table.columns)
        convert = [_rm_in(table.columns[c]) for c in names]
        values = table.value_columns
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in values)
            if values
            else "DO NOTHING"
        )
        self.conn.executemany(
            f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in names)}) VALUES ({','.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(_q(c) for c in table.key)}) {conflict}",
            [
                [r.get(c) if f is None else f(r.get(c)) for c, f in zip(names, convert, strict=True)]
                for r in rows
            ],
        )

    def remove(self, name: str, table: Table, keys: Sequence[tuple[Any, ...]]) -> None:
        self._writer()
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            self.conn.execute(
                f"DELETE FROM {_q(name)} WHERE {self._where_keys(table, len(chunk))}",
                self._key_params(table, chunk),
            )

    def select(
        self,
        name: str,
        table: Table,
        where: dict[str, Any] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_q(c) for c in table.columns)} FROM {_q(name)}"
        params: list[Any] = []
        if where:
            sql += " WHERE " + " AND ".join(f"{_q(c)} = ?" for c in where)
            for c, v in where.items():
                f = _rm_in(table.columns[c])
                params.append(v if f is None else f(v))
        if order_by:
            sql += " ORDER BY " + ", ".join(
                f"{_q(c[1:])} DESC" if c.startswith("-") else _q(c) for c in order_by
            )
        if limit is not None:
            if int(limit) < 0:
                raise UsageError(f"limit must not be negative, got {limit}")
            sql += f" LIMIT {int(limit)}"
        return self._rows_out(table, self.conn.execute(sql, params))

    def columns(self, name: str) -> list[str] | None:
        found = utils(self.conn).table(name)
        return [c.name for c in found.columns] if found.exists() else None

    def rows(
        self, name: str, table: Table, limit: int | None = None, batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        try:
            cursor = self.conn.execute(
                f"SELECT {', '.join(_q(c) for c in table.columns)} FROM {_q(name)}"
                f" ORDER BY {', '.join(_q(c) for c in table.key)} LIMIT ?",
                (-1 if limit is None else limit,),
            )
            while chunk := cursor.fetchmany(batch):
                yield from self._rows_out(table, chunk)
        except sqlite3.DatabaseError as exc:  # the caller may be writing another SQLite file
            raise DatabaseError(f"sqlite: {exc}") from None

    def execute(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if text.lstrip()[:6].upper() != "SELECT":
            self._writer()
        cursor = self.conn.execute(text, params or {})
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]
