"""`cqrsctl projections …`: list, status, rebuild, reset, catch-up, skip, retry, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import UsageError
from ..services import export as export_service
from ..services import projections as service
from .runtime import MAX_INT, confirm, duration, plural, runtime

projections_app = typer.Typer(no_args_is_help=True, help="Inspect, rebuild and run the app's projections.")


def _lag(seconds: float) -> str:
    if seconds < 1:
        return "0s" if seconds == 0 else f"{seconds:.2f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


@projections_app.command("list")
def list_(ctx: typer.Context) -> None:
    """One line per projection: version, state, position, head and lag.

    Example: cqrsctl --app samples/bank/app.py projections list
    """
    rt = runtime(ctx)
    rows = service.status(rt.reading(), rt.app())
    if rt.output.json:
        rt.output.records(rows)
        return
    rt.output.table(
        ("projection", "version", "state", "position", "head", "lag", "lag time"),
        [
            (
                s.name,
                s.version
                if s.stored_version in (None, str(s.version))
                else f"{s.stored_version} → {s.version}",
                s.state,
                s.position,
                s.head,
                s.lag_events,
                _lag(s.lag_seconds),
            )
            for s in rows
        ],
    )


@projections_app.command("status")
def status(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Projections to show (default: all)."),
) -> None:
    """Everything about each projection: state, lag, owner, last error and skipped events.

    Example: cqrsctl --app samples/bank/app.py projections status balances --json
    """
    rt = runtime(ctx)
    rows = service.status(rt.reading(), rt.app(), names)
    if rt.output.json:
        rt.output.records(rows)
        return
    for s in rows:
        fields: list[tuple[str, Any]] = [
            ("state", s.state),
            (
                "version",
                s.version
                if s.stored_version in (None, str(s.version))
                else f"{s.stored_version} (code: {s.version})",
            ),
            ("position", s.position),
            ("head", s.head),
            ("lag", f"{s.lag_events} events, {_lag(s.lag_seconds)}"),
            ("owner", s.owner or "-"),
            ("tables", ", ".join(s.tables)),
            ("handles", ", ".join(s.handles)),
        ]
        if s.error:
            fields.append(("error", s.error))
        if s.rebuild_position is not None:
            fields.append(("rebuild", f"shadow tables built to position {s.rebuild_position}"))
        for skipped in s.skipped:
            why = "; ".join(f"{k} {skipped[k]}" for k in ("reason", "error") if skipped.get(k))
            fields.append(
                (
                    "skipped",
                    f"position {skipped['position']} at {skipped['at']}" + (f": {why}" if why else ""),
                )
            )
        if s.last_retry:
            r = s.last_retry
            fields.append(
                ("last retry", f"{r['at']} by {r['actor']}: cleared {r['result'].get('error') or 'no error'}")
            )
        rt.output.fields(fields, title=s.name)


@projections_app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Projections to rebuild."),
    all_: bool = typer.Option(False, "--all", help="Rebuild every projection."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would happen; change nothing."),
    batch: int = typer.Option(
        service.REBUILD_BATCH, "--batch", min=1, max=MAX_INT, help="Events per transaction."
    ),
) -> None:
    """Replay all events into shadow tables, then swap them in atomically.

    Readers see the old tables until the swap. Interrupted (Ctrl-C, kill -9)? Run it again:
    it resumes, and the live tables were never touched.

    Example: cqrsctl --app samples/bank/app.py projections rebuild balances
    """
    rt = runtime(ctx)
    app = rt.app()
    if bool(names) == all_:
        raise UsageError("name the projections to rebuild, or give --all")
    chosen = sorted(app.projections) if all_ else list(names)
    for name in chosen:
        service.projection_class(app, name)
    store = rt.store()
    if dry_run:
        plans = [service.plan_rebuild(store, app, name) for name in chosen]
        if rt.output.json:
            rt.output.records(plans)
        else:
            for p in plans:
                rt.output.say(f"{p.name} v{p.version}: {p.note}")
        return
    results = []
    for name in chosen:
        plan = service.plan_rebuild(store, app, name)
        with rt.output.progress(f"rebuilding {name}", max(plan.head - plan.resume_from, 1)) as advance:
            result = service.rebuild(store, app, name, batch=batch, on_progress=advance, actor=rt.actor)
        results.append(result)
        if not rt.output.json:
            rt.output.say(
                f"{name} v{result.version}: {result.events} events in {result.seconds:.1f}s "
                f"({result.rate:,.0f}/s), now at position {result.position}"
                + (f" (resumed from {result.resumed_from})" if result.resumed_from else "")
            )
    if rt.output.json:
        rt.output.records(results)


@projections_app.command("reset")
def reset(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The projection to reset."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be dropped; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Drop a projection's tables and checkpoint; the next catch-up or daemon rebuilds it from the start.

    Example: cqrsctl --app samples/bank/app.py projections reset daily_totals
    """
    rt = runtime(ctx)
    store, app = rt.store(), rt.app()
    plan = service.reset(store, app, name, dry_run=True)
    what = ", ".join(f"{t} ({n} rows)" for t, n in plan["tables"].items()) or "no tables"
    at = "" if plan["position"] is None else f", forget its position {plan['position']}"
    if not dry_run:
        confirm(rt, f"Reset {name}: drop {what}{at}?", yes)
        plan = service.reset(store, app, name, actor=rt.actor)
    if rt.output.json:
        rt.output.data({**plan, "reset": not dry_run})
    elif dry_run:
        rt.output.say(f"{name}: would drop {what}{at}; nothing changed (--dry-run)")
    else:
        rt.output.say(f"{name}: dropped {what}{at}")


@projections_app.command("catch-up")
def catch_up(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Projections to run (default: all)."),
    timeout: float = typer.Option(
        None,
        "--timeout",
        parser=duration,
        metavar="DURATION",
        help="Stop after this long (exit 13): 50, 50s, 5m.",
    ),
    batch: int = typer.Option(
        service.STEP_BATCH, "--batch", min=1, max=MAX_INT, help="Events per transaction."
    ),
    retries: int = typer.Option(
        3, "--retries", min=0, max=MAX_INT, help="Retries of a failing handler before `failed`."
    ),
    retry_delay: float = typer.Option(
        "0.2s",
        "--retry-delay",
        parser=duration,
        metavar="DURATION",
        help="First back-off after a handler fails (×5 per attempt).",
    ),
) -> None:
    """Process what is new and exit (for cron). Exit 14 when a projection is failed or stale,
    13 when the timeout hit with work left.

    Example: cqrsctl --app samples/bank/app.py projections catch-up --timeout 50s
    """
    rt = runtime(ctx)
    store, app = rt.store(), rt.app()
    with rt.output.progress("catching up", None) as advance:
        results = service.catch_up(
            store, app, names, timeout=timeout, batch=batch, retries=retries, backoff=retry_delay,
            on_progress=advance,
        )  # fmt: skip
    if rt.output.json:
        rt.output.records(results)
    else:
        rt.output.table(
            ("projection", "outcome", "events", "position", "error"),
            [(r.name, r.outcome, r.processed, r.position, r.error or "") for r in results],
        )
    service.check_catch_up(results)


@projections_app.command("skip")
def skip(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The projection."),
    position: int = typer.Option(
        None,
        "--position",
        "-p",
        min=1,
        max=MAX_INT,
        help="Global position of the event to skip (default: the failed one).",
    ),
    reason: str = typer.Option(None, "--reason", help="Why (recorded with the skip and in the journal)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Never apply one event to this projection: the one it failed on, or the one at --position.

    The event must exist and not be processed yet; a projection failed on it resumes.
    `projections unskip` undoes it.

    Example: cqrsctl --app samples/bank/app.py projections skip balances --reason "bad import, see TICKET-12"
    """
    rt = runtime(ctx)
    store, app = rt.store(), rt.app()
    confirm(rt, f"Skip {'the failed event' if position is None else f'position {position}'} in {name}?", yes)
    cp = service.skip(store, app, name, position, reason, actor=rt.actor)
    if rt.output.json:
        rt.output.data(cp)
    else:
        done = cp.skipped[-1]["position"] if position is None else position
        rt.output.say(f"{name}: position {done} will be skipped (status {cp.status})")


@projections_app.command("unskip")
def unskip(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The projection."),
    position: int = typer.Option(..., "--position", "-p", min=1, max=MAX_INT, help="The skipped position."),
) -> None:
    """Undo a skip: the event is applied at the next catch-up, or at the next rebuild if the projection passed it.

    Example: cqrsctl --app samples/bank/app.py projections unskip balances --position 1042
    """
    rt = runtime(ctx)
    result = service.unskip(rt.store(), rt.app(), name, position, actor=rt.actor)
    if rt.output.json:
        rt.output.data(result)
    elif result["applies"] == "catch-up":
        rt.output.say(f"{name}: position {position} is no longer skipped; the next catch-up applies it")
    else:
        rt.output.say(
            f"{name}: position {position} is no longer skipped; the projection is past it, so the next"
            f" `cqrsctl projections rebuild {name}` applies it"
        )


@projections_app.command("retry")
def retry(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The failed projection."),
) -> None:
    """Put a failed projection back to work (after fixing its handler or the data).

    Example: cqrsctl --app samples/bank/app.py projections retry balances
    """
    rt = runtime(ctx)
    cp = service.retry(rt.store(), rt.app(), name, actor=rt.actor)
    if rt.output.json:
        rt.output.data(cp)
    else:
        rt.output.say(f"{name}: back to work from position {cp.position}")


@projections_app.command("export")
def export(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The projection."),
    to: Path = typer.Option(
        ..., "--to", help="The file: FILE.db (SQLite, every table), FILE.csv, FILE.json or FILE.jsonl."
    ),
    table: str = typer.Option(
        None, "--table", help="Only this table (needed for CSV and JSON when there are several)."
    ),
    limit: int = typer.Option(
        None, "--limit", "-n", min=0, max=MAX_INT, help="At most N rows per table, in key order."
    ),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
) -> None:
    """Write a projection's read model to a file other tools open: SQLite, CSV, JSON or JSON Lines.

    Reads one snapshot of the store from either backend; the file appears complete or not
    at all. Exit 15 when the file exists (without --force) or cannot be written.

    Example: cqrsctl --app samples/bank/app.py projections export balances --to balances.db
    """
    rt = runtime(ctx)
    app = rt.app()
    result = export_service.export_read_model(
        rt.reading(), app, name, to, table=table, force=force, limit=limit
    )
    if rt.output.json:
        rt.output.data(result)
    else:
        at = "never run" if result.position is None else f"position {result.position}"
        rt.output.say(
            f"{result.projection}: {plural(result.rows, 'row')} of {', '.join(result.tables)} ({at})"
            f" to {result.file}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(projections_app, name="projections")
