"""`cqrsctl projections …`: list, status, rebuild, reset, catch-up, skip, retry."""

from __future__ import annotations

from typing import Any

import typer

from ..errors import UsageError
from ..services import projections as service
from .runtime import duration, runtime

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
    rows = service.status(rt.store(), rt.app())
    if rt.output.json:
        rt.output.records(rows)
        return
    rt.output.table(
        ("projection", "version", "state", "position", "head", "lag", "lag time"),
        [
            (
                s.name,
                s.version if s.stored_version in (None, str(s.version)) else f"{s.stored_version} → {s.version}",
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
    rows = service.status(rt.store(), rt.app(), names)
    if rt.output.json:
        rt.output.records(rows)
        return
    for s in rows:
        fields: list[tuple[str, Any]] = [
            ("state", s.state),
            ("version", s.version if s.stored_version in (None, str(s.version)) else f"{s.stored_version} (code: {s.version})"),
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
        for skipped in map(service.skip_view, s.skipped):
            fields.append(("skipped", f"position {skipped['position']} at {skipped['at']}" + (f": {skipped['reason']}" if skipped.get("reason") else "")))
        rt.output.fields(fields, title=s.name)


@projections_app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Projections to rebuild."),
    all_: bool = typer.Option(False, "--all", help="Rebuild every projection."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would happen; change nothing."),
    batch: int = typer.Option(service.REBUILD_BATCH, "--batch", min=1, help="Events per transaction."),
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
            seen = [0]

            def progress(done: int, total: int, advance: Any = advance, seen: list[int] = seen) -> None:
                advance(done - seen[0])
                seen[0] = done

            result = service.rebuild(store, app, name, batch=batch, on_progress=progress, log=rt.output.debug)
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
) -> None:
    """Drop a projection's tables and checkpoint; the next catch-up or daemon rebuilds it from the start.

    Example: cqrsctl --app samples/bank/app.py projections reset daily_totals
    """
    rt = runtime(ctx)
    service.reset(rt.store(), rt.app(), name)
    if rt.output.json:
        rt.output.data({"name": name, "reset": True})
    else:
        rt.output.say(f"{name}: tables dropped and checkpoint removed")


@projections_app.command("catch-up")
def catch_up(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Projections to run (default: all)."),
    timeout: float = typer.Option(
        None, "--timeout", parser=duration, metavar="DURATION", help="Stop after this long (exit 13): 50, 50s, 5m."
    ),
    batch: int = typer.Option(service.STEP_BATCH, "--batch", min=1, help="Events per transaction."),
    retries: int = typer.Option(3, "--retries", min=0, help="Retries of a failing handler before `failed`."),
    retry_delay: float = typer.Option(
        "0.2s", "--retry-delay", parser=duration, metavar="DURATION", help="First back-off after a handler fails (×5 per attempt)."
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
            on_progress=advance, log=rt.output.debug,
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
    position: int = typer.Option(..., "--position", "-p", min=1, help="Global position of the event to skip."),
    reason: str = typer.Option(None, "--reason", help="Why (recorded with the skip)."),
) -> None:
    """Never apply the event at POSITION to this projection; a projection failed on it resumes.

    Example: cqrsctl --app samples/bank/app.py projections skip balances --position 1042
    """
    rt = runtime(ctx)
    cp = service.skip(rt.store(), rt.app(), name, position, reason)
    if rt.output.json:
        rt.output.data(cp)
    else:
        rt.output.say(f"{name}: position {position} will be skipped (status {cp.status})")


@projections_app.command("retry")
def retry(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The failed projection."),
) -> None:
    """Put a failed projection back to work (after fixing its handler or the data).

    Example: cqrsctl --app samples/bank/app.py projections retry balances
    """
    rt = runtime(ctx)
    cp = service.retry(rt.store(), rt.app(), name)
    if rt.output.json:
        rt.output.data(cp)
    else:
        rt.output.say(f"{name}: back to work from position {cp.position}")


def register(app: typer.Typer) -> None:
    app.add_typer(projections_app, name="projections")
