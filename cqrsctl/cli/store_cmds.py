"""Commands on the store itself: init, append, streams, events, export, import, doctor (an app, when set, checks appends and upcasts what is shown)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import typer

from ..errors import FileAccessError, NotFoundError, UnhealthyError, UsageError, ValidationError
from ..services import contract, journal, sources, transfer
from ..services import doctor as doctor_service
from ..services.events import (
    append_batch,
    check_batch,
    follow,
    parse_append_lines,
    start_position,
    upcast_all,
)
from ..services.grouping import DEFAULT_GROUP_MS, Grouping
from ..store import NewEvent, parse_expected
from ..store.base import utcnow
from ..times import parse_duration, parse_iso
from .runtime import MAX_INT, Runtime, confirm, parse_json_object, plural, runtime

streams_app = typer.Typer(no_args_is_help=True, help="Inspect streams.")


def init(
    ctx: typer.Context, sql: bool = typer.Option(False, "--sql", help="Print the DDL instead of running it.")
) -> None:
    """Create or migrate the store's tables (idempotent).

    Example: cqrsctl --db sqlite:///bank.db init
    """
    rt = runtime(ctx)
    if sql:
        store = rt.store(migrate=False)
        sys.stdout.write(store.ddl())
        return
    store = rt.store(migrate=False)
    result = store.initialise(rt.actor)
    if rt.output.json:
        rt.output.data(
            {"schema_version": result["to_version"], "backend": store.backend, "repaired": result["repaired"]}
        )
        return
    for problem in result["repaired"]:
        rt.output.say(f"repaired: {problem}")
    rt.output.say(f"store ready: schema version {result['to_version']} ({store.backend})")


_SCHEMA_VERSION_OPTION = typer.Option(
    None,
    "--schema-version",
    min=1,
    max=2**31 - 1,
    help="Schema version of the event's data (default: the app's current version of TYPE, else 1).",
)
_FILE_OPTION = typer.Option(
    None,
    "--file",
    "-f",
    help='JSONL batch, one {"stream","type","data","metadata","event_id","expected_version"} per line; - for stdin. All lines commit together or not at all, unless --group.',
)
_GROUP_OPTION = typer.Option(
    None,
    "--group",
    min=1,
    max=MAX_INT,
    help="With --file: commit N lines per transaction, each in a savepoint; the first failing line rolls back alone and stops the batch.",
)
_GROUP_MS_OPTION = typer.Option(
    None,
    "--group-ms",
    min=0,
    max=MAX_INT,
    help=f"With --group: a transaction takes no more lines once it is MS old (default {DEFAULT_GROUP_MS:g}).",
)


def append(
    ctx: typer.Context,
    stream: str = typer.Argument(None, help="Stream id, e.g. Account-A-1 (omit with --file)."),
    event_type: str = typer.Argument(None, metavar="TYPE", help="Event type, e.g. MoneyDeposited."),
    data: str = typer.Option(None, "--data", "-d", help="Event data as a JSON object."),
    metadata: str = typer.Option(None, "--metadata", "-m", help="Event metadata as a JSON object."),
    expected_version: str = typer.Option(
        "any", "--expected-version", "-e", help="any, no-stream, exists, or the exact current version."
    ),
    event_id: str = typer.Option(
        None, "--event-id", help="Event UUID (appending the same id again is a no-op)."
    ),
    schema_version: int = _SCHEMA_VERSION_OPTION,
    unchecked: bool = typer.Option(
        False, "--unchecked", help="Do not check the data against the app's event class."
    ),
    file: str = _FILE_OPTION,
    group: int = _GROUP_OPTION,
    group_ms: float = _GROUP_MS_OPTION,
) -> None:
    """Append an event to a stream, or a JSONL batch atomically (or in groups); checked against the app's classes when one is set.

    Example: cqrsctl append Audit-1 NoteAdded --data '{"text": "checked"}' --expected-version no-stream
    """
    rt = runtime(ctx)
    # Unchecked, the app is needed only for the default schema version of a single event.
    app: Any = (
        None if unchecked and (file is not None or schema_version is not None) else rt.app(required=False)
    )
    check = app is not None and not unchecked
    if file is not None:
        if stream or event_type or data:
            raise typer.BadParameter("give either STREAM TYPE --data or --file, not both")
        _append_file(rt, app if check else None, file, group, group_ms)
        return
    if group is not None or group_ms is not None:
        raise UsageError("--group and --group-ms are for batches (--file F.jsonl, or -)")
    if not stream or not event_type:
        raise typer.BadParameter("STREAM and TYPE are required (or use --file)")
    if data is None:
        raise typer.BadParameter("--data is required")
    event = NewEvent(
        event_type,
        parse_json_object(data, "--data"),
        parse_json_object(metadata, "--metadata") if metadata else {},
        _uuid(event_id) if event_id else None,
        schema_version or contract.current_version(app, event_type),
    )
    if check:
        contract.check_new_events(app, [event])
    result = rt.store().append(stream, [event], parse_expected(expected_version))
    if rt.output.json:
        rt.output.data(result)
    else:
        note = " (already there: nothing appended)" if result.duplicate else ""
        rt.output.say(f"{stream} is at version {result.version}, position {result.positions[-1]}{note}")


def _append_file(rt: Runtime, app: Any, file: str, group: int | None, group_ms: float | None) -> None:
    """`append --file`: the whole batch checked first (against `app` when given), then appended."""
    if group is None and group_ms is not None:
        raise UsageError("--group-ms needs --group")
    items = parse_append_lines(_read_input(file))
    if app is not None:
        check_batch(app, items)
    grouping = None if group is None else Grouping(group, DEFAULT_GROUP_MS if group_ms is None else group_ms)
    with rt.output.progress("appending", len(items)) as advance:
        report = append_batch(rt.store(), items, grouping=grouping, on_progress=advance)
    if rt.output.json:
        rt.output.records(report.results)
    else:
        n = sum(len(r.positions) for r in report.results)
        rt.output.say(f"appended {plural(n, 'event')} in {plural(len(report.results), 'append')}")
    if report.failure is not None:
        raise report.failure


def _uuid(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError(f"--event-id is not a UUID: {value!r}") from None


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise FileAccessError(f"cannot read {name}: {exc.strerror}") from None


@streams_app.command("list")
def streams_list(
    ctx: typer.Context,
    category: str = typer.Option(None, "--category", "-c", help="Only streams of this category."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=MAX_INT, help="At most this many streams."),
) -> None:
    """List streams with their version and first/last positions.

    Example: cqrsctl streams list --category Account --limit 20
    """
    rt = runtime(ctx)
    streams = rt.output.page(rt.reading().list_streams(category, limit + 1), limit)
    if rt.output.json:
        rt.output.records(streams)
        return
    rt.output.table(
        ("stream", "category", "version", "first", "last", "updated"),
        (
            (s.stream_id, s.category, s.version, s.first_position, s.last_position, s.updated_at)
            for s in streams
        ),
    )


@streams_app.command("show")
def streams_show(
    ctx: typer.Context,
    stream: str = typer.Argument(..., help="Stream id."),
    from_version: int = typer.Option(1, "--from-version", min=1, max=MAX_INT, help="First version to show."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, max=MAX_INT, help="At most this many events."),
    raw: bool = typer.Option(False, "--raw", help="Show events as stored, without the app's upcasters."),
) -> None:
    """Show the events of one stream (upcast to the app's current versions when an app is set).

    Example: cqrsctl streams show Account-A-0001 --from-version 3
    """
    rt = runtime(ctx)
    store = rt.reading()
    events = store.read_stream(stream, from_version, limit=None if limit is None else limit + 1)
    if not events and store.stream_version(stream) == 0:
        raise NotFoundError(f"stream {stream!r} not found")
    shown = rt.output.page(events, limit)
    _render_events(rt, shown if raw else list(upcast_all(rt.app(required=False), shown)))


def _render_events(rt: Any, events: Sequence[Any]) -> None:
    if rt.output.json:
        rt.output.records(events)
        return
    rt.output.table(
        ("pos", "stream", "ver", "type", "data", "recorded"),
        (
            (
                e.global_position,
                e.stream_id,
                e.stream_version,
                e.event_type,
                orjson.dumps(e.data).decode()[:80],
                e.recorded_at,
            )
            for e in events
        ),
    )


def events(
    ctx: typer.Context,
    from_position: int = typer.Option(
        0, "--from-position", min=0, max=MAX_INT, help="Start after this global position."
    ),
    category: list[str] = typer.Option(None, "--category", "-c", help="Only these categories (repeatable)."),
    event_type: list[str] = typer.Option(None, "--type", "-t", help="Only these event types (repeatable)."),
    limit: int = typer.Option(
        100, "--limit", "-n", min=1, max=MAX_INT, help="At most this many events (without --follow)."
    ),
    follow_: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Keep printing new events as they commit (JSON Lines unless --format says otherwise).",
    ),
    start: str = typer.Option(
        None,
        "--from",
        help="Where to start: start (the first event), end (only new ones) or a global position.",
    ),
    raw: bool = typer.Option(False, "--raw", help="Show events as stored, without the app's upcasters."),
) -> None:
    """Read events across all streams in global order (upcast when an app is set).

    Example: cqrsctl events --category Account --from-position 100 --json
    """
    rt = runtime(ctx)
    store = rt.reading()
    if start is not None:
        if from_position:
            raise UsageError("give --from or --from-position, not both")
        from_position = start_position(store, start)
    app = None if raw else rt.app(required=False)
    if follow_:
        if not rt.output.json:
            rt.output.format = "jsonl"  # a table cannot grow: following prints records as they come
        rt.output.records(upcast_all(app, follow(store, from_position, category or None, event_type or None)))
        return
    found = store.read_all(from_position, limit + 1, category or None, event_type or None)
    _render_events(rt, list(upcast_all(app, rt.output.page(found, limit))))


def export(
    ctx: typer.Context,
    stream: str = typer.Option(None, "--stream", help="Only this stream."),
    category: str = typer.Option(None, "--category", help="Only this category."),
    output: Path = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    upcast: bool = typer.Option(
        False, "--upcast", help="Write events as the app's current versions (through its upcasters)."
    ),
) -> None:
    """Export events as JSON Lines in global order (for `import` into any backend).

    Example: cqrsctl --db sqlite:///bank.db export -o bank.jsonl
    """
    rt = runtime(ctx)
    app = rt.app() if upcast else None
    store = rt.reading()
    if output is None:
        n = transfer.export_events(store, sys.stdout.buffer, stream=stream, category=category, app=app)
    else:
        try:
            f = output.open("wb")
        except OSError as exc:
            raise FileAccessError(f"cannot write {output}: {exc.strerror}") from None
        try:
            with f:
                n = transfer.export_events(store, f, stream=stream, category=category, app=app)
        except OSError as exc:
            raise FileAccessError(f"cannot write {output}: {exc.strerror}") from None
    rt.output.say(f"exported {n} events")


def import_(
    ctx: typer.Context,
    file: Path = typer.Argument(
        None, help="A JSONL file written by `cqrsctl export`, or a DynamoDB export with --input-format."
    ),
    source: str = typer.Option(
        None,
        "--from",
        help="Read a NestJS Kafka event store instead: kafka://host:port?topics=PATTERN (globs, comma-separated).",
    ),
    input_format: str = typer.Option(
        "cqrsctl",
        "--input-format",
        help="What FILE is: cqrsctl (an export) or dynamodb-export (plain or .gz).",
    ),
    on_gap: str = typer.Option(
        "stop",
        "--on-gap",
        help="With --from or dynamodb-export, a stream that skips versions: stop (import nothing, exit 19)"
        " or report (import each stream up to its first gap).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check everything and say what would be imported; write nothing."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask before importing into a store that has events."
    ),
) -> None:
    """Import events keeping event ids, stream versions and order; re-importing is a no-op.

    Sources: a `cqrsctl export` file; a NestJS Kafka event store (--from kafka://…, read from
    the beginning); a DynamoDB export (--input-format dynamodb-export). The whole input is
    checked before anything is written.

    Example: cqrsctl --db postgresql://postgres@localhost/prod import bank.jsonl
    """
    rt = runtime(ctx)
    if input_format not in ("cqrsctl", "dynamodb-export"):
        raise UsageError(f"--input-format must be cqrsctl or dynamodb-export, not {input_format!r}")
    if (source is None) == (file is None):
        raise UsageError("give either FILE or --from URL")
    if source is None and input_format == "cqrsctl":
        assert file is not None
        _import_export(rt, file, dry_run, yes)
        return
    if dry_run:
        raise UsageError("--dry-run is available for cqrsctl export files only")
    _import_source(rt, source, file, input_format, on_gap)


def _import_export(rt: Runtime, file: Path, dry_run: bool, yes: bool) -> None:
    """`import FILE` of a `cqrsctl export`."""
    total = transfer.check_export(file)
    store = rt.store()
    if not dry_run and store.head() > 0:
        confirm(
            rt, f"The store already holds events (head {store.head()}): import {total} more into it?", yes
        )
    with rt.output.progress("importing", total) as advance:
        result = transfer.import_file(store, file, dry_run=dry_run, actor=rt.actor, on_progress=advance)
    if rt.output.json:
        rt.output.data(result)
    elif dry_run:
        rt.output.say(
            f"would import {result.imported} events and skip {result.skipped} already present;"
            " nothing changed (--dry-run)"
        )
    else:
        rt.output.say(f"imported {result.imported} events, skipped {result.skipped} already present")


def _import_source(
    rt: Runtime, source: str | None, file: Path | None, input_format: str, on_gap: str
) -> None:
    """`import --from URL`, or a file of another event store."""
    events = sources.open_source(source, file, input_format)
    with rt.output.progress("reading", None) as advance:
        staged = sources.stage(events, on_gap=on_gap, on_read=advance)
    with staged, rt.output.progress("importing", staged.report.to_import) as advance:
        report = staged.import_into(rt.store(), on_progress=advance)
    if rt.output.json:
        rt.output.data(report.to_dict())
        return
    for d in report.duplicates[:10]:
        what = "re-delivered" if d["same_event"] else f"another event ({d['event_id']}) at that version"
        rt.output.say(
            f"duplicate: {d['stream_id']} version {d['version']} at {d['at']}: {what}; kept {d['first_at']}"
        )
    for g in report.gaps[:10]:
        after = f"version {g['after_version']}" if g["after_version"] else "the start"
        rt.output.say(
            f"gap: {g['stream_id']} skips from {after} to version {g['next_version']} at {g['at']};"
            " imported up to the gap"
        )
    rt.output.say(report.summary())


def doctor(
    ctx: typer.Context,
    max_lag: int = typer.Option(
        None,
        "--max-lag",
        min=0,
        max=MAX_INT,
        help="Unhealthy when a projection is more than N events behind.",
    ),
) -> None:
    """Check connectivity, schema, counts, projections and daemons; exit 10 when unhealthy.

    The report is printed in every case, a failed connection included; exit 7 only when the
    URL names no supported database. Projections are checked from their checkpoints; with
    --app (or CQRSCTL_APP) also against the app's code (stale versions, never run, tables
    unlike their declaration). An app named only in cqrsctl.toml is not imported.

    Example: cqrsctl doctor --json
    """
    rt = runtime(ctx)
    report = doctor_service.examine(rt.settings.db, lambda: rt.store(read_only=True), rt.named_app(), max_lag)
    if rt.output.json:
        rt.output.data(report)
    else:
        rt.output.fields(
            ((c.name, ("ok  " if c.ok else "FAIL") + " " + c.detail) for c in report.checks), "doctor"
        )
        if report.counts:
            rt.output.table(("table", "rows"), report.counts.items())
        for topic, rows in report.details.items():
            if rows:
                rt.output.table(list(rows[0]), (list(r.values()) for r in rows), title=topic)
    if not report.healthy:
        raise UnhealthyError("unhealthy: " + "; ".join(c.detail for c in report.checks if not c.ok))


def audit(
    ctx: typer.Context,
    since: str = typer.Option(
        None, "--since", help="Only entries this recent (7d, 12h) or since this ISO 8601 time."
    ),
    kind: list[str] = typer.Option(
        None,
        "--kind",
        "-k",
        help="Only this kind of operation, e.g. 'outbox purge' or 'projections' (repeatable).",
    ),
    limit: int = typer.Option(None, "--limit", "-n", min=1, max=MAX_INT, help="Only the last N entries."),
) -> None:
    """List the operations journal: every administrative operation, who ran it, when, and what it changed.

    Example: cqrsctl audit --since 7d --kind projections
    """
    rt = runtime(ctx)
    entries = journal.entries(rt.reading(), _since(since), kind or None, limit)
    if rt.output.json:
        rt.output.lines(entries)
        return
    rt.output.table(
        ("id", "at", "actor", "operation", "arguments", "result"),
        (
            (e.id, e.at, e.actor, e.kind, orjson.dumps(e.args).decode(), orjson.dumps(e.result).decode())
            for e in entries
        ),
    )


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        return utcnow() - parse_duration(text)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(append)
    app.add_typer(streams_app, name="streams")
    app.command()(events)
    app.command()(export)
    app.command("import")(import_)
    app.command()(doctor)
    app.command()(audit)
