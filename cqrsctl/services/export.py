"""Export a projection's read model to a file: a portable SQLite database, CSV, JSON or
JSON Lines, from either backend.

The rows are read in one snapshot of the store (every table and the checkpoint as of the
same moment) and streamed: memory stays flat however large the read model. The file is
written beside the target under a temporary name and renamed into place at the end, so
a failed or interrupted export leaves nothing behind, and a reader never sees half a file.

Portable column types become (see docs/projections.md, "Exporting a read model"):

=========  ==================  ==================  ==================
type       SQLite file         CSV                 JSON / JSON Lines
=========  ==================  ==================  ==================
text       TEXT                as is               string
int        INTEGER             digits              number
float      REAL                digits              number
decimal    TEXT (exact)        exact digits        string (exact)
bool       INTEGER 0/1         true/false          true/false
json       TEXT (JSON)         JSON text           the value itself
timestamp  TEXT (ISO 8601 Z)   ISO 8601 Z          ISO 8601 Z string
=========  ==================  ==================  ==================
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..errors import FileAccessError, NotFoundError, UsageError
from ..store import Store, iso
from ..store.tracking import ReadModels, Table
from .projections import projection_class

if TYPE_CHECKING:
    from ..app import App

# File name endings and the format each writes.
FORMATS = {".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite", ".csv": "csv", ".json": "json"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}
# The table of an exported SQLite file that says what it holds.
ABOUT_TABLE = "cqrsctl_export"
BATCH = 1000  # rows fetched and written at a time

# Python type of each portable column type in the SQLite file (sqlite-utils' mapping).
_SQLITE_TYPES: dict[str, type] = {
    "text": str, "int": int, "float": float, "decimal": str, "bool": int, "json": str, "timestamp": str,
}  # fmt: skip


@dataclass
class ExportResult:
    """What an export wrote."""

    projection: str
    version: int
    file: str
    format: str
    # Rows per table, in the order the projection declares its tables.
    tables: dict[str, int] = field(default_factory=dict)
    # The projection's checkpoint in the snapshot read (None: it never ran).
    position: int | None = None
    stored_version: str | None = None

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "version": self.version,
            "file": self.file,
            "format": self.format,
            "tables": self.tables,
            "rows": self.rows,
            "position": self.position,
            "stored_version": self.stored_version,
        }


def format_of(target: Path) -> str:
    """The format a file name asks for, from its ending."""
    fmt = FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {str(target)!r}: name the file .db (SQLite), .csv, .json or .jsonl"
        )
    return fmt


def export_read_model(
    store: Store,
    app: App,
    name: str,
    target: str | Path,
    *,
    table: str | None = None,
    force: bool = False,
    limit: int | None = None,
) -> ExportResult:
    """Write projection `name`'s read model to `target`, in the format its ending names
    (.db, .sqlite, .sqlite3, .csv, .json, .jsonl). A SQLite file holds every table (or
    `table`) and a `cqrsctl_export` table saying what it is; the other formats hold one
    table, so a projection with several needs `table`. `limit`: at most that many rows
    per table, in key order. An existing `target` is replaced only with `force`."""
    target = Path(target)
    cls = projection_class(app, name)
    fmt = format_of(target)
    tables = _chosen(cls.name, cls.tables, table, fmt)
    if limit is not None and limit < 0:
        raise UsageError(f"limit must not be negative, got {limit}")
    _check_target(target, force)
    result = ExportResult(cls.name, cls.version, str(target), fmt)
    with store.reader(snapshot=True) as tx:
        rm = tx.read_models
        missing = [t for t in tables if not rm.table_exists(t)]
        if missing:
            raise NotFoundError(
                f"read-model table {missing[0]} does not exist yet: run `cqrsctl projections catch-up {cls.name}`"
                " or the daemon"
            )
        cp = tx.tracking.get(cls.name)
        if cp is not None:
            result.position, result.stored_version = cp.position, cp.version
        with _replacing(target, force) as tmp:
            if fmt == "sqlite":
                _write_sqlite(tmp, rm, tables, limit, result, tx.tracking.now())
            else:
                ((t, spec),) = tables.items()
                rows = _counted(rm.rows(t, spec, limit, BATCH), result, t)
                with open(tmp, "wb") as f:
                    _WRITERS[fmt](f, spec, rows)
                    _sync(f)
    return result


def _chosen(name: str, tables: dict[str, Table], table: str | None, fmt: str) -> dict[str, Table]:
    if table is not None:
        if table not in tables:
            raise UsageError(f"projection {name!r} has no table {table!r} (tables: {', '.join(tables)})")
        return {table: tables[table]}
    if fmt != "sqlite" and len(tables) > 1:
        raise UsageError(
            f"projection {name!r} has tables {', '.join(tables)}: choose one for {fmt} (--table),"
            " or export to a .db file"
        )
    return dict(tables)


def _check_target(target: Path, force: bool) -> None:
    """Refuse before reading anything: an existing target (without `force`), anything but
    a regular file, or a directory that does not exist."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise FileAccessError(f"cannot write {target}: no such directory {target.parent}") from None
        return
    except OSError as exc:
        raise FileAccessError(f"cannot write {target}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise FileAccessError(f"cannot write {target}: it exists and is not a regular file")
    if not force:
        raise FileAccessError(f"{target} exists: give --force to replace it")
    if _is_store(target):
        raise FileAccessError(f"{target} is a cqrsctl store: an export never replaces one")


def _is_store(path: Path) -> bool:
    """Whether `path` is a SQLite cqrsctl store (`--to bank.db --force` in the store's own
    directory must not replace it). A SQLite file that cannot be looked into counts as one."""
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cqrsctl_schema'").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return True
    return found is not None


class _replacing:
    """A temporary file beside `target`, renamed over it on success and removed otherwise."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target, self.force = target, force

    def __enter__(self) -> Path:
        self.tmp = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.tmp")
        try:  # created as any new file is (the umask applies), and only if it is not there
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            raise FileAccessError(f"cannot write {self.target}: {exc.strerror}") from None
        return self.tmp

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            try:
                self._place()
            except OSError as error:
                self.tmp.unlink(missing_ok=True)
                raise FileAccessError(f"cannot write {self.target}: {error.strerror}") from None
            return
        self.tmp.unlink(missing_ok=True)
        # The source's errors are the store's own by now: a driver error is the file's.
        if isinstance(exc, OSError | sqlite3.Error):
            raise FileAccessError(
                f"cannot write {self.target}: {getattr(exc, 'strerror', None) or exc}"
            ) from None

    def _place(self) -> None:
        if self.force:
            os.replace(self.tmp, self.target)
        else:
            # A link fails if the target appeared meanwhile: never replace what we did not check.
            try:
                os.link(self.tmp, self.target)
            except FileExistsError:
                self.tmp.unlink()
                raise FileAccessError(f"{self.target} exists: give --force to replace it") from None
            self.tmp.unlink()
        _sync_dir(self.target.parent)


def _sync(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every system opens directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _counted(rows: Iterator[dict[str, Any]], result: ExportResult, table: str) -> Iterator[dict[str, Any]]:
    result.tables[table] = 0
    for row in rows:
        result.tables[table] += 1
        yield row


# -- values per format -----------------------------------------------------------------------------------


def _converter(kind: str, for_sqlite: bool) -> Callable[[Any], Any] | None:
    """Python value (as the store gives it for a column type) -> the file's value."""
    if kind == "decimal":  # positional notation: 0.0000001, never 1E-7
        return lambda v: None if v is None else (format(v, "f") if isinstance(v, Decimal) else str(v))
    if kind == "timestamp":
        return lambda v: None if v is None else (iso(v) if isinstance(v, datetime) else str(v))
    if kind == "bool" and for_sqlite:
        return lambda v: None if v is None else int(v)
    if kind == "json" and for_sqlite:
        return lambda v: None if v is None else orjson.dumps(v).decode()
    return None


def _converted(spec: Table, rows: Iterator[dict[str, Any]], for_sqlite: bool) -> Iterator[dict[str, Any]]:
    convert = [(c, f) for c, k in spec.columns.items() if (f := _converter(k, for_sqlite)) is not None]
    for row in rows:
        for column, f in convert:
            row[column] = f(row[column])
        yield row


def _write_sqlite(
    path: Path,
    rm: ReadModels,
    tables: dict[str, Table],
    limit: int | None,
    result: ExportResult,
    now: datetime,
) -> None:
    import sqlite_utils

    db = sqlite_utils.Database(path)
    try:
        # The file is renamed into place only once complete and synced: no journal needed.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        for name, spec in tables.items():
            columns = {c: _SQLITE_TYPES[k] for c, k in spec.columns.items()}
            pk = spec.key[0] if len(spec.key) == 1 else tuple(spec.key)
            created = db.table(name).create(columns, pk=pk, not_null=spec.key)
            for i, index in enumerate(spec.indexes):
                created.create_index(list(index), index_name=f"{name}__ix{i}")
            rows = _converted(spec, _counted(rm.rows(name, spec, limit, BATCH), result, name), True)
            created.insert_all(rows, batch_size=BATCH)
        db.table(ABOUT_TABLE).insert(
            {
                "projection": result.projection,
                "version": result.version,
                "position": result.position,
                "stored_version": result.stored_version,
                "exported_at": iso(now),
                "tables": orjson.dumps(
                    {n: {"columns": s.columns, "key": list(s.key)} for n, s in tables.items()}
                ).decode(),
            }
        )
    finally:
        db.close()
    with open(path, "rb+") as f:
        _sync(f)


def _write_csv(f: IO[bytes], spec: Table, rows: Iterator[dict[str, Any]]) -> None:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text, lineterminator="\n")
    names = list(spec.columns)
    writer.writerow(names)
    cells = [_cell_of(spec.columns[c]) for c in names]
    for row in _converted(spec, rows, False):
        writer.writerow([cell(row[c]) for c, cell in zip(names, cells, strict=True)])
    text.flush()
    text.detach()


def _cell_of(kind: str) -> Callable[[Any], str]:
    if kind == "bool":
        return lambda v: "" if v is None else ("true" if v else "false")
    if kind == "json":
        return lambda v: "" if v is None else orjson.dumps(v).decode()
    return lambda v: "" if v is None else str(v)


def _write_json(f: IO[bytes], spec: Table, rows: Iterator[dict[str, Any]]) -> None:
    f.write(b"[")
    first = True
    for row in _converted(spec, rows, False):
        f.write((b"\n" if first else b",\n") + orjson.dumps(row))
        first = False
    f.write(b"]\n" if first else b"\n]\n")


def _write_jsonl(f: IO[bytes], spec: Table, rows: Iterator[dict[str, Any]]) -> None:
    for row in _converted(spec, rows, False):
        f.write(orjson.dumps(row) + b"\n")


_WRITERS: dict[str, Callable[[IO[bytes], Table, Iterator[dict[str, Any]]], None]] = {
    "csv": _write_csv,
    "json": _write_json,
    "jsonl": _write_jsonl,
}

__all__ = ["ABOUT_TABLE", "FORMATS", "ExportResult", "export_read_model", "format_of"]
