"""`cqrsctl daemon`: run the app's projections, sagas and outbox relay continuously."""

from __future__ import annotations

import logging

import typer

from ..errors import UsageError
from ..services import daemon as service
from ..services import projections as projection_service
from ..services import workers
from . import logs
from .runtime import MAX_INT, Runtime, duration_option, runtime

log = logging.getLogger("cqrsctl.daemon")


def daemon(
    ctx: typer.Context,
    projections: str = typer.Option(
        None, "--projections", help="Comma-separated projections to run (default: all of the app's)."
    ),
    no_projections: bool = typer.Option(False, "--no-projections", help="Run no projections."),
    no_sagas: bool = typer.Option(False, "--no-sagas", help="Do not run the app's sagas and reactions."),
    outbox_sink: str = typer.Option(
        None, "--outbox-sink", envvar="CQRSCTL_OUTBOX_SINK", help="Also drain the outbox to this sink URL."
    ),
    no_outbox: bool = typer.Option(False, "--no-outbox", help="Do not drain the outbox (overrides the env)."),
    once: bool = typer.Option(False, "--once", help="Process what is there, then exit."),
    poll_interval: float = duration_option(
        None, "--poll-interval", help="Time between looks at the store (default 0.15s SQLite, 1s PostgreSQL)."
    ),
    lease: float = duration_option(
        f"{projection_service.LEASE_SECONDS:g}s",
        "--lease",
        help="How long a dead daemon's work stays locked.",
    ),
    retry_delay: float = duration_option(
        "0.2s", "--retry-delay", help="First back-off after a handler fails (×5 per attempt)."
    ),
    retries: int = typer.Option(
        3, "--retries", min=0, max=MAX_INT, help="Retries of a failing handler before `failed`."
    ),
    metrics: str = typer.Option(
        None, "--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics."
    ),
) -> None:
    """Run the app's projections, sagas and outbox relay continuously; stop with Ctrl-C or SIGTERM.

    Several daemons may share one database: each projection runs in exactly one of them,
    work spreads across them, and a dead one's projections are taken over within seconds.

    Example: cqrsctl --app samples/bank/app.py daemon --projections balances,daily_totals
    """
    rt = runtime(ctx)
    if poll_interval is not None and poll_interval < 0.01:
        raise UsageError("--poll-interval must be at least 0.01s")
    if lease < 1:
        raise UsageError("--lease must be at least 1s")
    store, app = rt.store(), rt.app()
    logs.show_info()  # the daemon's log is what it has to say
    names = [n.strip() for n in (projections or "").split(",") if n.strip()]
    chosen = workers.for_app(
        app, projections=not no_projections, names=names, sagas=not no_sagas,
        outbox=None if no_outbox else outbox_sink, retries=retries, backoff=retry_delay,
    )  # fmt: skip
    if not chosen:
        log.warning("nothing to run: the app has no projections or sagas (or all were turned off)")
        return
    stall = None if once else service.restart_process
    _run(
        rt, service.Daemon(store, app, chosen, poll=poll_interval, lease=lease, on_stall=stall), metrics, once
    )


def _run(rt: Runtime, runner: service.Daemon, metrics: str | None, once: bool) -> None:
    """Run the daemon until it stops, serving its metrics meanwhile when asked to."""
    stop_metrics = None
    if metrics:
        from ..services import metrics as metrics_service
        from ..store import open_store

        collector = metrics_service.StoreCollector(
            lambda: open_store(rt.settings.db, migrate=False), runner.app, lambda: runner.workers
        )
        stop_metrics = metrics_service.serve(metrics, collector)
        log.info(f"metrics at http://{metrics}/metrics")
    try:
        with runner.stopping_on_signals():
            runner.run(once=once)
    finally:
        if stop_metrics is not None:
            stop_metrics()


def register(app: typer.Typer) -> None:
    app.command()(daemon)
