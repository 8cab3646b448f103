"""Fresh databases, one per contender run, and connections to them for each contender.

SQLite: a new file in the work directory, deleted afterwards. PostgreSQL: a new schema
in the configured database, dropped afterwards; cqrsctl reaches it with its `?schema=`
URL option, eventsourcing with its POSTGRES_SCHEMA setting, the raw driver with
`search_path`.

Big seeded data sets (the rebuild's events) are seeded once per backend into a template
through the contender's own API, and each run gets a fresh copy: on SQLite a copy of the
file, on PostgreSQL a new database created from the template database (then dropped).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from .core import Ctx

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def pg_reason(dsn: str) -> str | None:
    """None when `dsn` answers a query, else why not."""
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def with_schema(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def drop_database(dsn: str, database: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        # A connection left open by a contender must fail the cleanup, not hang the run.
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass(frozen=True)
class Template:
    """A seeded database that fresh ones are copied from (see Ctx.seeded)."""

    backend: str
    path: Path
    database: str


class Fresh:
    """A fresh database for one contender run: ``with ctx.fresh("FULL") as db: ...``.

    `synchronous` is the SQLite durability the contender runs at (NORMAL or FULL; None
    for each library's own default). With `template`, the database starts as a copy of
    it. Objects passed to :meth:`closing` are closed before the database is removed;
    with `keep`, it is not removed (a template being seeded).
    """

    def __init__(
        self,
        ctx: Ctx,
        synchronous: str | None = None,
        *,
        template: Template | None = None,
        keep: bool = False,
    ) -> None:
        self.backend = ctx.backend
        self.admin_dsn = ctx.config.pg_dsn
        self.synchronous = synchronous
        self.template, self.keep = template, keep
        self.token = uuid.uuid4().hex[:12]
        self.workdir = ctx.config.workdir
        self.path = self.workdir / f"run-{self.token}.db"
        # A whole database when copying from (or seeding) a template, else a schema.
        self.database = f"bench_{self.token}" if template is not None or keep else ""
        self.schema = "public" if self.database else f"bench_{self.token}"
        self.dsn = with_database(self.admin_dsn, self.database) if self.database else self.admin_dsn
        self._closing: list[Any] = []
        self._files: list[Path] = []

    def __enter__(self) -> Fresh:
        if self.backend == "postgres":
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                if self.database:
                    self._create_database(conn)
                else:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        elif self.template is not None:
            shutil.copyfile(self.template.path, self.path)
        return self

    def _create_database(self, conn: Any) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
        if self.template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(self.template.database))
        for attempt in range(50):
            try:
                conn.execute(statement)
                return
            except psycopg.errors.ObjectInUse:
                # A pool closed a moment ago may still be leaving the template.
                if attempt == 49:
                    raise
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        for obj in reversed(self._closing):
            with contextlib.suppress(Exception):
                obj.close()
        self._closing.clear()
        if self.keep:
            if self.backend == "sqlite":
                # Fold the WAL into the file, so that a plain copy of the file is complete.
                with contextlib.closing(sqlite3.connect(self.path)) as conn:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        self.remove()

    def remove(self) -> None:
        if self.backend == "postgres":
            if self.database:
                drop_database(self.admin_dsn, self.database)
            else:
                drop_schema(self.admin_dsn, self.schema)
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        for path in self._files:
            path.unlink(missing_ok=True)

    def as_template(self) -> Template:
        return Template(self.backend, self.path, self.database)

    def closing(self, obj: Any) -> Any:
        self._closing.append(obj)
        return obj

    def file(self, suffix: str) -> Path:
        """A scratch file for this run (a sink's output), removed afterwards."""
        path = self.workdir / f"run-{self.token}{suffix}"
        self._files.append(path)
        return path

    # -- how each contender reaches it --------------------------------------------------

    def cqrsctl_url(self) -> str:
        if self.backend == "postgres":
            return with_schema(self.dsn, self.schema)
        url = f"sqlite:///{self.path}"
        return f"{url}?synchronous={self.synchronous.lower()}" if self.synchronous else url

    def es_env(self, **extra: str) -> dict[str, str]:
        """Settings for an eventsourcing Application on this database."""
        if self.backend == "postgres":
            info = conninfo_to_dict(self.dsn)
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": str(info.get("dbname", "postgres")),
                "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
                "POSTGRES_PORT": str(info.get("port", "5432")),
                "POSTGRES_USER": str(info.get("user", "postgres")),
                "POSTGRES_PASSWORD": str(info.get("password", "")),
                "POSTGRES_SCHEMA": self.schema,
            }
        else:
            # eventsourcing sets WAL and leaves synchronous at SQLite's default, FULL.
            env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(self.path)}
        env.update(extra)
        return env

    def raw(self) -> Any:
        """A bare driver connection in autocommit mode (the caller issues BEGIN/COMMIT)."""
        conn: Any
        if self.backend == "postgres":
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous or 'NORMAL'}")
        return self.closing(conn)
