"""Commands that run the user's app: dispatch, replay, snapshots, query."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import typer

from ..errors import BatchError, FileAccessError, UsageError
from ..services import replay as replay_service
from ..services.dispatch import BatchReport, Dispatcher, DispatchResult, parse_batch
from ..services.grouping import DEFAULT_GROUP, DEFAULT_GROUP_MS
from ..services.query import run_query
from ..times import parse_timestamp
from .runtime import MAX_INT, Output, Runtime, confirm, parse_json_object, runtime

GROUP_OPTION = typer.Option(
    None,
    "--group",
    min=1,
    max=MAX_INT,
    help=f"In a batch, at most N commands per transaction (default {DEFAULT_GROUP}; 1: one each).",
)
GROUP_MS_OPTION = typer.Option(
    None,
    "--group-ms",
    min=0,
    max=MAX_INT,
    help=f"In a batch, a transaction takes no more commands once it is MS old (default {DEFAULT_GROUP_MS:g}).",
)

snapshots_app = typer.Typer(no_args_is_help=True, help="Inspect, take and delete aggregate snapshots.")


def dispatch(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Command name, e.g. OpenAccount; omit with --file."),
    data: str = typer.Option(None, "--data", "-d", help="Command data as a JSON object."),
    file: str = typer.Option(
        None, "--file", "-f", help='JSONL of {"command","data","id","metadata"} per line; - for stdin.'
    ),
    command_id: str = typer.Option(
        None, "--id", help="Command id; dispatching the same id again is a no-op."
    ),
    metadata: str = typer.Option(
        None, "--metadata", "-m", help="Metadata JSON (correlation_id, causation_id, actor…)."
    ),
    actor: str = typer.Option(None, "--actor", help="Who dispatches (recorded in event metadata)."),
    retries: int = typer.Option(
        None,
        "--retries",
        min=0,
        max=MAX_INT,
        help="Re-runs on a concurrency conflict (default: the app's, 3).",
    ),
    continue_on_error: bool = typer.Option(
        False, "--continue-on-error", help="In a batch, go on past failed lines."
    ),
    group: int = GROUP_OPTION,
    group_ms: float = GROUP_MS_OPTION,
) -> None:
    """Dispatch a command (or a JSONL batch): validate, load, decide, append, in one transaction.

    A batch commits its commands in groups (--group, --group-ms), each command in a savepoint
    of its own: one that fails rolls back alone, and a command counts as done only once its
    group has committed. It exits 0 when every line was dispatched or was already done; when
    its only failure is a first line that stopped it, with that failure's code (3, 5, …); else 14.

    Example: cqrsctl --app samples/bank/app.py dispatch OpenAccount --data '{"account_id":"A-1","owner":"Ada"}'
    """
    rt = runtime(ctx)
    app = rt.app()
    source = file if file is not None else ("-" if name == "-" else None)
    if source is None and (name is None or data is None):
        raise UsageError("give NAME --data JSON, or --file F.jsonl (- for stdin)")
    if source is not None and data is not None:
        raise UsageError("give either --data or --file, not both")
    if source is None and (group is not None or group_ms is not None):
        raise UsageError("--group and --group-ms are for batches (--file F.jsonl, or -)")
    dispatcher = Dispatcher(app, rt.store(), retries=retries, actor=actor)
    if source is None:
        meta = parse_json_object(metadata, "--metadata") if metadata else {}
        command = parse_json_object(data, "--data")
        _render_result(rt, dispatcher.dispatch(name, command, command_id=command_id, metadata=meta))
        return
    raw = sys.stdin.buffer.read() if source == "-" else _read(source)
    items = list(parse_batch(raw.splitlines(), None if name == "-" else name))
    with rt.output.progress("dispatching", len(items)) as advance:
        report = dispatcher.dispatch_many(
            items, continue_on_error=continue_on_error, on_progress=advance, **_grouping(group, group_ms)
        )
    _render_report(rt, report, continue_on_error, len(items))


def _grouping(group: int | None, group_ms: float | None) -> dict[str, Any]:
    return {
        "group": DEFAULT_GROUP if group is None else group,
        "group_ms": DEFAULT_GROUP_MS if group_ms is None else group_ms,
    }


def _render_result(rt: Runtime, result: DispatchResult) -> None:
    if rt.output.json:
        rt.output.data(result)
        return
    note = " (already dispatched: first result)" if result.duplicate else ""
    rt.output.say(f"{result.command} → {result.stream_id} at version {result.version}{note}")
    if not rt.output.quiet:
        rt.output.fields(
            [("command_id", result.command_id), ("stream", result.stream_id), ("version", result.version)]
            + [
                (f"event {i + 1}", f"{eid} @ {pos}")
                for i, (eid, pos) in enumerate(zip(result.event_ids, result.positions, strict=True))
            ]
        )


def _render_report(rt: Runtime, report: BatchReport, continue_on_error: bool, total: int) -> None:
    """The batch's report, then its exit code (see `dispatch`)."""
    if rt.output.json:
        rt.output.data(report)
    else:
        for failure in report.failures:
            rt.output.error(f"line {failure.line} ({failure.command}): {failure.message}")
        rt.output.say(
            f"dispatched {report.dispatched}, already done {report.duplicates}, failed {len(report.failures)}"
            + ("" if continue_on_error or not report.failures else " (stopped at the first failure)")
        )
    if not report.failures:
        return
    first = report.failures[0]
    # Lines already done count as done: a re-run of the same file exits as the first run did.
    if len(report.failures) == 1 and not continue_on_error and not (report.dispatched or report.duplicates):
        if rt.output.json:  # the report went to stdout; the reason still goes to stderr
            rt.output.error(f"line {first.line} ({first.command}): {first.message}", first.exit_code)
        raise typer.Exit(first.exit_code)
    raise BatchError(f"{len(report.failures)} of {total} commands failed (first: line {first.line})")


def _read(name: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise FileAccessError(f"cannot read {name}: {exc.strerror}") from None


def replay(
    ctx: typer.Context,
    aggregate: str = typer.Option(..., "--aggregate", "-a", help="Stream id, e.g. Account-A-1."),
    at_version: int = typer.Option(None, "--at-version", min=1, max=MAX_INT, help="State at this version."),
    as_of: str = typer.Option(None, "--as-of", help="State as of this UTC time (ISO 8601)."),
    events: bool = typer.Option(False, "--events", help="Show each event and the state after it."),
    diff: str = typer.Option(None, "--diff", help="What changed between two versions, e.g. 3..7."),
    no_snapshot: bool = typer.Option(
        False, "--no-snapshot", help="Fold from the first event, ignoring snapshots."
    ),
    raw: bool = typer.Option(
        False, "--raw", help="With --events: show the events as stored, not as upcast by the app."
    ),
    generic: bool = typer.Option(
        False, "--generic", help="Merge the events' data as stored, without importing the app."
    ),
) -> None:
    """Fold a stream into its aggregate and print the state.

    Without an app, or with --generic, the state is a merge of the events' data as stored.

    Example: cqrsctl --app samples/bank/app.py replay --aggregate Account-A-0001 --at-version 3
    """
    rt = runtime(ctx)
    app = None if generic else rt.app(required=False)
    store = rt.reading()
    when = parse_timestamp(as_of, "--as-of") if as_of else None
    if not generic and (app is None or app.aggregate_for(aggregate) is None):
        rt.output.say("note: no app aggregate for this stream; showing a generic fold (merge of event data)")
    if diff:
        lo, hi = replay_service.parse_range(diff)
        changes = replay_service.diff(store, app, aggregate, lo, hi)
        if rt.output.json:
            rt.output.data(changes)
        else:
            rows = [(k, _show(v["from"]), _show(v["to"])) for k, v in changes["changes"].items()]
            rt.output.table(("field", f"v{lo}", f"v{hi}"), rows, title=f"{aggregate} {lo}..{hi}")
        return
    if events:
        steps = replay_service.history(store, app, aggregate, at_version=at_version, as_of=when, raw=raw)
        if rt.output.json:
            rt.output.records(steps)
        else:
            _show_history(rt.output, aggregate, steps)
        return
    result = replay_service.replay(
        store, app, aggregate, at_version=at_version, as_of=when, use_snapshot=not no_snapshot
    )
    if rt.output.json:
        rt.output.data(result)
    else:
        rt.output.fields(
            [(k, _show(v)) for k, v in result.state.items()],
            title=f"{result.stream_id} ({result.aggregate}) at version {result.version}",
        )


def _show_history(out: Output, aggregate: str, steps: list[Any]) -> None:
    out.table(
        ("ver", "pos", "type", "data", "state after"),
        (
            (
                s.event.stream_version,
                s.event.global_position,
                s.event.event_type,
                _show(s.event.data),
                _show(s.state),
            )
            for s in steps
        ),
        title=aggregate,
    )


def _show(value: Any) -> str:
    if isinstance(value, Decimal):  # read-model rows carry exact amounts: show them plainly
        return str(value)
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


@snapshots_app.command("list")
def snapshots_list(
    ctx: typer.Context,
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=MAX_INT, help="At most this many."),
) -> None:
    """List stored snapshots.

    Example: cqrsctl snapshots list --json
    """
    rt = runtime(ctx)
    snaps = rt.output.page(replay_service.list_snapshots(rt.reading(), limit + 1), limit)
    if rt.output.json:
        rt.output.records(snaps)
    else:
        rt.output.table(
            ("stream", "aggregate", "version", "schema", "taken"),
            ((s.stream_id, s.aggregate_type, s.version, s.schema_version, s.taken_at) for s in snaps),
        )


@snapshots_app.command("take")
def snapshots_take(ctx: typer.Context, stream: str = typer.Argument(..., help="Stream id.")) -> None:
    """Fold a stream and store its snapshot now.

    Example: cqrsctl --app samples/bank/app.py snapshots take Account-A-0001
    """
    rt = runtime(ctx)
    snap = replay_service.take_snapshot(rt.store(), rt.app(), stream)
    if rt.output.json:
        rt.output.data(snap)
    else:
        rt.output.say(f"snapshot of {stream} at version {snap.version}")


@snapshots_app.command("delete")
def snapshots_delete(
    ctx: typer.Context,
    stream: str = typer.Argument(None, help="Stream id (omit with --all)."),
    all_: bool = typer.Option(False, "--all", help="Delete every snapshot."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (with --all)."),
) -> None:
    """Delete snapshots (they are only a cache: state is always rebuilt from events).

    Example: cqrsctl snapshots delete Account-A-0001
    """
    rt = runtime(ctx)
    if bool(stream) == all_:
        raise UsageError("give a STREAM or --all")
    if all_:
        confirm(rt, "Delete every snapshot (aggregates are then folded from all their events)?", yes)
    n = replay_service.delete_snapshots(rt.store(), None if all_ else stream, actor=rt.actor)
    if rt.output.json:
        rt.output.data({"deleted": n})
    else:
        rt.output.say(f"deleted {n} snapshot(s)")


def query(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Query name."),
    param: list[str] = typer.Option(None, "--param", "-p", help="k=v (repeatable)."),
) -> None:
    """Run a registered query of the app.

    Example: cqrsctl --app samples/bank/app.py query balance --param account_id=A-0001
    """
    rt = runtime(ctx)
    raw: dict[str, str] = {}
    for p in param or []:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects k=v, got {p!r}")
        raw[key] = value
    result = run_query(rt.app(), rt.store(), name, raw)
    if rt.output.json and isinstance(result, list) and all(isinstance(r, dict) for r in result):
        rt.output.records(result)
    elif rt.output.json or not isinstance(result, list | dict):
        rt.output.data(result)
    elif isinstance(result, dict):
        rt.output.fields([(k, _show(v)) for k, v in result.items()], title=name)
    elif result and all(isinstance(r, dict) for r in result):
        columns = list(result[0])
        rt.output.table(columns, ([_show(r.get(c)) for c in columns] for r in result), title=name)
    else:
        rt.output.data(result)


def register(app: typer.Typer) -> None:
    app.command()(dispatch)
    app.command()(replay)
    app.add_typer(snapshots_app, name="snapshots")
    app.command()(query)
