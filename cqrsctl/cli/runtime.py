"""What every command shares: settings, the output object, the store and app, opened lazily."""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..config import Settings
from ..errors import DatabaseError, NotConfirmedError, UsageError, ValidationError
from ..redaction import redact, scrub
from ..store import Store, iso, open_store


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def to_json(value: Any) -> bytes:
    return orjson.dumps(
        value,
        default=_default,
        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME,
    )


def plain(value: Any) -> Any:
    """The JSON form of a value as Python data (dicts, lists, str, numbers, None)."""
    return orjson.loads(to_json(value))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def error_json(message: str, exit_code: int | None, kind: str | None) -> str:
    return orjson.dumps({"error": message, "exit_code": exit_code, "type": kind}).decode()


def duration(value: Any) -> float:
    """Seconds as `50`, `50s`, `1.5s`, `5m`, `2h`, `7d`: the one duration syntax of every option
    (use as `typer.Option(..., parser=duration, metavar="DURATION")`)."""
    if isinstance(value, int | float):
        return float(value)
    from ..times import parse_duration

    try:
        seconds = parse_duration(str(value), zero=True).total_seconds()
    except UsageError:
        seconds = -1.0
    if seconds < 0:
        raise ValueError(f"{value!r} is not a duration: use e.g. 50, 50s, 5m, 2h")
    return seconds


def duration_option(default: Any, *names: str, help: str) -> Any:
    """An option in seconds written as a DURATION (`50`, `50s`, `5m`): see `duration`."""
    return typer.Option(default, *names, parser=duration, metavar="DURATION", help=help)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f}/s", style="progress.data.speed")


FORMATS = ("table", "json", "jsonl", "csv", "tsv")


# Control characters (C0, DEL, C1) and the invisible ones that reorder text: data must
# never move the cursor, retitle the window or clear the screen.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def safe(text: str) -> str:
    """`text` with control characters shown escaped (`\\x1b`), for a terminal or a log."""
    return text.translate(_UNSAFE)


# Off a terminal (cron logs, pipes) tables are as wide as their content: nothing is
# wrapped or cut, whatever the width of the terminal that is not there.
_UNBOUNDED = 1_000_000


class Output:
    """Data to stdout (a table for people; JSON, JSON Lines, CSV or TSV for scripts); talk and errors to stderr.

    The shape rule (docs/cli.md "Output formats"): a command prints either records (zero or
    more objects of one kind) or one result object. `json` prints one document (an array of
    records, or the object), `jsonl` one object per line, `csv`/`tsv` a header then one row
    per record (nested values as JSON text). Keys are snake_case; numbers are numbers.
    """

    def __init__(self, format: str = "table", quiet: bool = False, verbose: bool = False) -> None:
        self.format, self.quiet, self.verbose = format, quiet, verbose
        self.out = Console(soft_wrap=False)
        if not self.out.is_terminal:
            self.out = Console(soft_wrap=False, width=_UNBOUNDED)
        self.err = Console(stderr=True)
        self._more: str | None = None  # the "more than N" hint, said after the table it belongs to

    @property
    def json(self) -> bool:
        """Machine output (any format but `table`): commands print data, not tables or talk."""
        return self.format != "table"

    @property
    def interactive(self) -> bool:
        return not self.json and not self.quiet and self.err.is_terminal

    def data(self, value: Any) -> None:
        """One result: an object (or, from `query`, any JSON value)."""
        if self.format in ("csv", "tsv"):
            self.records(value if isinstance(value, list) else [value])
            return
        sys.stdout.buffer.write(to_json(value) + b"\n")
        sys.stdout.flush()

    def records(self, items: Iterable[Any]) -> None:
        """Records in the chosen format, written as they come (for --follow), flushed per record."""
        write, flush = sys.stdout.buffer.write, sys.stdout.flush
        if self.format == "json":
            write(to_json(list(items)) + b"\n")
            flush()
        elif self.format in ("csv", "tsv"):
            self._delimited(items)
        else:
            for item in items:
                write(to_json(item) + b"\n")
                flush()

    lines = records

    def _delimited(self, items: Iterable[Any]) -> None:
        if self.format == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
        else:  # no quoting: a tab, newline or backslash inside a value is escaped with a backslash
            writer = csv.writer(
                sys.stdout, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar="\\",
                lineterminator="\n",
            )  # fmt: skip
        columns: list[str] | None = None
        for item in items:
            record = plain(item)
            if not isinstance(record, dict):
                record = {"value": record}
            if columns is None:
                columns = list(record)
                writer.writerow(columns)
            writer.writerow([_cell(record.get(c)) for c in columns])
            sys.stdout.flush()

    def page(self, items: Sequence[Any], limit: int | None) -> Sequence[Any]:
        """`items` were read with `limit + 1`: return the first `limit`, and on a terminal say,
        below the table, when more exist (never counted: a count of a busy events table is a scan)."""
        if limit is None or len(items) <= limit:
            return items
        if not self.json and not self.quiet and self.out.is_terminal:
            self._more = f"… more than {limit:,}; use --limit to see more"
        return items[:limit]

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
        # Cells and titles are Text, never markup: stored data may hold "[...]".
        table = Table(*columns, title=None if title is None else Text(safe(title)), header_style="bold")
        for row in rows:
            table.add_row(
                *(
                    Text("" if v is None else (iso(v) if isinstance(v, datetime) else safe(str(v))))
                    for v in row
                )
            )
        self.out.print(table)
        if self._more is not None:
            self.out.file.flush()
            self.err.print(self._more, highlight=False, markup=False)
            self._more = None

    def fields(self, pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
        self.table(("field", "value"), pairs, title)

    def say(self, message: str) -> None:
        """A line for people (stderr), silenced by --quiet and --json."""
        if not self.quiet and not self.json:
            self.err.print(safe(message), highlight=False, markup=False, soft_wrap=True)

    def debug(self, message: str) -> None:
        if self.verbose:
            self.err.print(Text(safe(message), style="dim"), highlight=False, soft_wrap=True)

    def error(self, message: str, exit_code: int | None = None, kind: str | None = None) -> None:
        """One line on stderr; under `--json`/`--format json*` a JSON object instead."""
        if self.format in ("json", "jsonl"):
            sys.stdout.flush()
            sys.stderr.write(error_json(message, exit_code, kind) + "\n")
            sys.stderr.flush()
            return
        self.err.print(Text("error:", style="bold red"), Text(safe(message)), highlight=False, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Any]:
        """Yields `advance(n)`; draws a bar only for a person at a terminal."""
        if not self.interactive:
            yield lambda n=1: None
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)


class Runtime:
    """Passed to every command as `ctx.obj`."""

    def __init__(self, settings: Settings, output: Output, debug: bool) -> None:
        self.settings, self.output, self.debug = settings, output, debug
        self.actor = ""  # for the operations journal; set from --actor
        self._store: Store | None = None
        self._app: Any = None

    def store(self, migrate: bool = True, *, read_only: bool = False) -> Store:
        """The store; `read_only` neither creates a missing SQLite file nor migrates."""
        if self._store is None:
            self._store = open_store(
                self.settings.db, migrate=migrate and not read_only, create=not read_only
            )
        return self._store

    def reading(self) -> Store:
        """The store for a command that only reads: it must exist, and is not migrated."""
        store = self.store(read_only=True)
        if store.schema_version() == 0:
            raise DatabaseError(f"no store at {redact(self.settings.db)}; run `cqrsctl init`")
        return store

    def app(self, required: bool = True) -> Any:
        """The app, imported on first use. Commands call this only when their result depends
        on the app's code (docs/guards.md, "Reading never writes"); `required=False` returns
        None when no app is named."""
        if self._app is None and (self.settings.app or required):
            from ..loader import load_app

            if not self.settings.app:
                raise UsageError("no app given: use --app module:attr, CQRSCTL_APP or `app` in cqrsctl.toml")
            self._app = load_app(self.settings.app)
        return self._app

    def named_app(self) -> Any:
        """The app when it is named for this run (`--app` or CQRSCTL_APP), else None: for
        the commands that report on the store (doctor, top), which must not run the code a
        cqrsctl.toml in whatever directory they are started from points at."""
        if self.settings.source.get("app", "").startswith("config"):
            return None
        return self.app(required=False)

    def scrub(self, message: str) -> str:
        return scrub_urls(message, self.settings.db)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def scrub_urls(message: str, *urls: str | None) -> str:
    """`message` without the secrets of `urls`, of any URL among the arguments, or of the
    sink URL in the environment."""
    argv = [a for a in sys.argv[1:] if "://" in a]
    return scrub(message, *urls, *argv, os.environ.get("CQRSCTL_OUTBOX_SINK"))


# The largest integer the stores hold (64-bit signed): the bound of every count and position option.
MAX_INT = 2**63 - 1


def finite(value: float | None) -> float | None:
    """A callback for options in seconds: `inf` and `nan` are not durations."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number of seconds")
    return value


def confirm(rt: Runtime, question: str, yes: bool) -> None:
    """Ask before a destructive operation when a person is at the terminal; `--yes` skips
    the question, and without a terminal (cron, scripts) nobody is asked."""
    if yes or not sys.stdin.isatty() or not rt.output.err.is_terminal:
        return
    if not typer.confirm(question, default=False, err=True):
        raise NotConfirmedError("not confirmed: nothing changed")


def runtime(ctx: typer.Context) -> Runtime:
    obj = ctx.find_root().obj
    assert isinstance(obj, Runtime)
    return obj


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
