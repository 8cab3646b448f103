"""One schema, two dialects: both backends' migration files build the same tables.

Each backend is migrated from empty and from every earlier version (a store left at that
version by the migrations up to it, then opened); every path must end at the same schema,
and the two backends' schemas must agree: tables, columns with their types (mapped to
SQLite's), nullability, defaults and generated keys, indexes (columns, uniqueness,
predicate), primary and unique keys, and the append-only triggers.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import drop_schema, with_schema
from psycopg import sql

from cqrsctl.store import open_store
from cqrsctl.store.base import CORE_COLUMNS, SCHEMA_VERSION
from cqrsctl.store.postgres import schema as pg_schema
from cqrsctl.store.sqlite import schema as sqlite_schema
from cqrsctl.store.sqlite.sql import _ts

pytestmark = pytest.mark.postgres

# PostgreSQL's types as SQLite declares them: JSON and timestamps are text there.
PG_TYPES = {
    "bigint": "INTEGER",
    "integer": "INTEGER",
    "text": "TEXT",
    "jsonb": "TEXT",
    "timestamp with time zone": "TEXT",
}

Schema = dict[str, Any]


def _predicate(text: str | None) -> str | None:
    """An index predicate without casts, parentheses or case: `(status = 'pending'::text)`
    and `status = 'pending'` compare equal."""
    if text is None:
        return None
    text = re.sub(r"::[a-z ]+", "", text).replace("(", "").replace(")", "")
    return " ".join(text.split()).lower()


def _default(text: str | None) -> str | None:
    return None if text is None else re.sub(r"::[a-z ]+$", "", text)


# -- reading a schema back ----------------------------------------------------------------------


def sqlite_schema_of(path: Path) -> Schema:
    conn = sqlite3.connect(path)
    try:
        tables = {}
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for table, ddl in rows:
            columns = {}
            for _, name, kind, notnull, default, pk in conn.execute(f'PRAGMA table_info("{table}")'):
                generated = bool(pk) and "AUTOINCREMENT" in ddl.upper() and kind.upper() == "INTEGER"
                # SQLite lets a non-integer primary key hold NULL unless told; the store never
                # writes one, and PostgreSQL's keys are NOT NULL by definition.
                columns[name] = (kind.upper(), bool(notnull or pk), None if generated else default, generated)
            key = tuple(
                r[1]
                for r in sorted(conn.execute(f'PRAGMA table_info("{table}")'), key=lambda r: r[5])
                if r[5]
            )
            unique, indexes = set(), {}
            for _, name, is_unique, origin, partial in conn.execute(f'PRAGMA index_list("{table}")'):
                cols = tuple(r[2] for r in conn.execute(f'PRAGMA index_info("{name}")'))
                if origin == "u":
                    unique.add(cols)
                elif origin == "c":
                    ddl_ix = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[
                        0
                    ]
                    where = ddl_ix.split(" WHERE ", 1)[1] if partial else None
                    indexes[name] = (cols, bool(is_unique), _predicate(where))
            tables[table] = {"columns": columns, "key": key, "unique": unique, "indexes": indexes}
        guards = set()
        for (ddl,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"):
            m = re.match(
                r"CREATE TRIGGER (?:IF NOT EXISTS )?\S+ BEFORE (\w+) ON (\w+) BEGIN SELECT RAISE", ddl
            )
            assert m, ddl
            guards.add((m.group(2), m.group(1).upper()))
        return {"tables": tables, "guards": guards}
    finally:
        conn.close()


def pg_schema_of(dsn: str, schema: str) -> Schema:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables: dict[str, Any] = {}
        for (table,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            (schema,),
        ):
            tables[table] = {"columns": {}, "key": (), "unique": set(), "indexes": {}}
        for table, name, kind, nullable, default, identity in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
            " FROM information_schema.columns WHERE table_schema = %s",
            (schema,),
        ):
            generated = identity == "YES"
            tables[table]["columns"][name] = (PG_TYPES[kind], nullable == "NO", _default(default), generated)
        for table, kind, columns in conn.execute(
            "SELECT c.conrelid::regclass::text, c.contype,"
            " array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
            "  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o)"
            " FROM pg_constraint c JOIN pg_namespace s ON s.oid = c.connamespace"
            " WHERE s.nspname = %s AND c.contype IN ('p', 'u')",
            (schema,),
        ):
            table = table.rpartition(".")[2]
            if kind == "p":
                tables[table]["key"] = tuple(columns)
            else:
                tables[table]["unique"].add(tuple(columns))
        for table, name, unique, columns, where in conn.execute(
            "SELECT t.relname, i.relname, x.indisunique,"
            " array(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(n, o)"
            "  JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n ORDER BY k.o),"
            " pg_get_expr(x.indpred, x.indrelid)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace s ON s.oid = t.relnamespace"
            " WHERE s.nspname = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
            (schema,),
        ):
            tables[table]["indexes"][name] = (tuple(columns), unique, _predicate(where))
        guards = set()
        for table, kinds, refuses in conn.execute(
            "SELECT c.relname, t.tgtype, p.proname = 'cqrsctl_append_only' FROM pg_trigger t"
            " JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace s ON s.oid = c.relnamespace"
            " JOIN pg_proc p ON p.oid = t.tgfoid WHERE s.nspname = %s AND NOT t.tgisinternal",
            (schema,),
        ):
            assert refuses and kinds & 2, (table, kinds)  # BEFORE, calling the refusing function
            # TRUNCATE has no SQLite counterpart (SQLite's DELETE covers it).
            guards |= {(table, op) for bit, op in ((8, "DELETE"), (16, "UPDATE")) if kinds & bit}
        return {"tables": tables, "guards": guards}


# -- building a store at an earlier version ----------------------------------------------------


def sqlite_at(path: Path, version: int) -> None:
    """What the migrations up to `version` left (nothing at all for 0)."""
    if version == 0:
        return
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sqlite_schema._SCHEMA_TABLE)
        for v in range(1, version + 1):
            for statement in sqlite_schema.MIGRATIONS[v]:
                conn.execute(statement)
            conn.execute("INSERT INTO cqrsctl_schema VALUES (?, '2024-01-01T00:00:00.000000+00:00')", (v,))
    finally:
        conn.close()


def pg_at(dsn: str, schema: str, version: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        if version == 0:
            return
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(pg_schema._SCHEMA_TABLE)
        for v in range(1, version + 1):
            for statement in pg_schema.MIGRATIONS[v]:
                conn.execute(statement)
            conn.execute("INSERT INTO cqrsctl_schema VALUES (%s, now())", (v,))


@pytest.fixture
def pg_schemas(pg_dsn: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        drop_schema(pg_dsn, name)


def migrated_sqlite(tmp_path: Path, version: int) -> Schema:
    path = tmp_path / f"from{version}.db"
    sqlite_at(path, version)
    with open_store(f"sqlite:///{path}") as store:
        assert store.schema_version() == SCHEMA_VERSION
    return sqlite_schema_of(path)


def migrated_pg(dsn: str, schemas: list[str], version: int) -> Schema:
    name = f"t_{uuid.uuid4().hex}"
    schemas.append(name)
    pg_at(dsn, name, version)
    with open_store(with_schema(dsn, name)) as store:
        assert store.schema_version() == SCHEMA_VERSION
    return pg_schema_of(dsn, name)


# -- the checks ------------------------------------------------------------------------------------


def test_both_backends_have_every_version() -> None:
    expected = list(range(1, SCHEMA_VERSION + 1))
    assert list(sqlite_schema.MIGRATIONS) == expected
    assert list(pg_schema.MIGRATIONS) == expected


def test_every_path_ends_at_the_same_schema_on_both_backends(
    tmp_path: Path, pg_dsn: str, pg_schemas: list[str]
) -> None:
    lite = migrated_sqlite(tmp_path, 0)
    pg = migrated_pg(pg_dsn, pg_schemas, 0)
    for version in range(1, SCHEMA_VERSION):
        assert migrated_sqlite(tmp_path, version) == lite, f"sqlite migrated from version {version}"
        assert migrated_pg(pg_dsn, pg_schemas, version) == pg, f"postgres migrated from version {version}"

    assert sorted(lite["tables"]) == sorted(pg["tables"]) == sorted(CORE_COLUMNS)
    for table, mine in lite["tables"].items():
        theirs = pg["tables"][table]
        assert set(mine["columns"]) == CORE_COLUMNS[table], table
        assert mine["columns"] == theirs["columns"], table
        assert mine["key"] == theirs["key"], table
        assert mine["unique"] == theirs["unique"], table
        assert mine["indexes"] == theirs["indexes"], table
    assert (
        lite["guards"]
        == pg["guards"]
        == {(table, op) for table in ("events", "cqrsctl_journal") for op in ("UPDATE", "DELETE")}
    )


# -- data carried forward ----------------------------------------------------------------------------


def test_leases_held_at_version_4_keep_their_meaning(
    tmp_path: Path, pg_dsn: str, pg_schemas: list[str]
) -> None:
    # Version 5 keeps leases in a table of their own; a lease held in a message row before
    # still holds its message (and its key), fences its owner's record, and ends on time.
    now = datetime(2030, 1, 1, tzinfo=UTC)
    until = now + timedelta(seconds=60)
    rows = [  # seq, key, status, claimed_by, claimed_until
        (1, "k", "pending", "A", until),
        (2, "k", "pending", None, None),
        (3, "j", "pending", "A", until),
        (4, "i", "pending", "B", until),
        (5, "h", "delivered", None, None),
    ]
    insert = (
        "INSERT INTO outbox (seq, message_id, topic, key, payload, headers, status, next_attempt_at,"
        " claimed_by, claimed_until, created_at) VALUES ({p}, {p}, 't', {p}, '{{}}', '{{}}', {p}, {p}, {p}, {p}, {p})"
    )
    path = tmp_path / "v4.db"
    sqlite_at(path, 4)
    conn = sqlite3.connect(path)
    conn.executemany(
        insert.format(p="?"),
        [
            (seq, f"m{seq}", key, status, _ts(now), who, None if at is None else _ts(at), _ts(now))
            for seq, key, status, who, at in rows
        ],
    )
    conn.commit()
    conn.close()
    name = f"t_{uuid.uuid4().hex}"
    pg_schemas.append(name)
    pg_at(pg_dsn, name, 4)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(name)))
        pg.cursor().executemany(
            insert.format(p="%s"),
            [(seq, f"m{seq}", key, status, now, who, at, now) for seq, key, status, who, at in rows],
        )
    for url in (f"sqlite:///{path}", with_schema(pg_dsn, name)):
        with open_store(url) as store:
            assert store.schema_version() == SCHEMA_VERSION
            with store.transaction() as tx:
                listed = {m.seq: (m.claimed_by, m.claimed_until) for m in tx.outbox.select()}
                assert listed == {s: (who, at) for s, _, _, who, at in rows}, url
                assert tx.outbox.claimers(now) == ["A", "B"]
                # 1 and 3 are A's, 4 is B's, and 2 waits behind 1.
                assert tx.outbox.claim("C", 10, now, until) == []
                assert tx.outbox.mark_delivered([1, 4], now, "A") == 1
                assert tx.outbox.release("B") == 1
                assert [m.seq for m in tx.outbox.claim("C", 10, now, now + timedelta(hours=1))] == [2, 4]
            later = until + timedelta(seconds=1)
            with store.transaction() as tx:
                assert [m.seq for m in tx.outbox.claim("D", 10, later, later + timedelta(seconds=60))] == [3]
                assert tx.outbox.mark_delivered([3], later, "A") == 0
                assert tx.outbox.mark_delivered([3], later, "D") == 1
