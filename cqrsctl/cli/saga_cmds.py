"""`cqrsctl sagas`: inspect, run and retry sagas."""

from __future__ import annotations

import orjson
import typer

from ..services import sagas as saga_service
from ..times import parse_timestamp
from .runtime import MAX_INT, runtime

sagas_app = typer.Typer(no_args_is_help=True, help="Inspect, run and retry sagas (process managers).")


@sagas_app.command("list")
def sagas_list(
    ctx: typer.Context,
    status: str = typer.Option(
        None, "--status", "-s", help="in_progress, completed, compensating, compensated, failed, timed_out."
    ),
    saga_type: str = typer.Option(None, "--type", "-t", help="Only sagas of this type."),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=MAX_INT, help="At most this many."),
) -> None:
    """List saga instances.

    Example: cqrsctl sagas list --status failed --json
    """
    rt = runtime(ctx)
    records = rt.output.page(saga_service.list_sagas(rt.reading(), status, saga_type, limit + 1), limit)
    if rt.output.json:
        rt.output.records(saga_service.saga_view(r, []) for r in records)
        return
    rt.output.table(
        ("saga", "type", "status", "step", "updated", "error"),
        (
            (
                r.saga_id,
                r.saga_type,
                r.status,
                f"{r.current_step}/{len(r.steps)}",
                r.updated_at,
                r.error_message or "",
            )
            for r in records
        ),
    )


@sagas_app.command("show")
def sagas_show(
    ctx: typer.Context, saga_id: str = typer.Argument(..., help="Saga id, e.g. TransferSaga-Transfer-T1.")
) -> None:
    """Show one saga: its steps, commands, compensations and pending deadlines.

    Example: cqrsctl sagas show TransferSaga-Transfer-T-1 --json
    """
    rt = runtime(ctx)
    view = saga_service.show_saga(rt.reading(), saga_id)
    if rt.output.json:
        rt.output.data(view)
        return
    rt.output.fields(
        [
            ("saga", view["saga_id"]),
            ("type", view["saga_type"]),
            ("status", view["status"]),
            ("step", f"{view['current_step']}/{view['total_steps']}"),
            ("created", view["created_at"]),
            ("updated", view["updated_at"]),
            *([("error", view["error_message"])] if "error_message" in view else []),
        ],
        title="saga",
    )
    rows = []
    for i, step in enumerate(view["steps"]):
        result = view["results"].get(step["name"])
        if result and "command" in result:
            detail = f"{result['command']} → {result['stream']} v{result['version']}"
        elif result:
            detail = f"{step.get('waiting_for', 'event')} at position {result['position']}"
        elif step.get("waiting_for"):
            detail = f"waiting for {step['waiting_for']}"
        else:
            detail = step.get("error", "")
        rows.append((i + 1, step["name"], step["status"], detail))
    rt.output.table(("#", "step", "status", "command / detail"), rows, title="steps")
    if view["compensation_actions"]:
        rt.output.table(
            ("step", "status", "detail"),
            (
                (c["step"], c["status"], c.get("error") or orjson.dumps(c.get("result")).decode())
                for c in view["compensation_actions"]
            ),
            title="compensation",
        )
    if view["deadlines"]:
        rt.output.table(
            ("deadline", "due", "status"),
            ((d["name"], d["due_at"], d["status"]) for d in view["deadlines"]),
            title="deadlines",
        )


@sagas_app.command("run")
def sagas_run(
    ctx: typer.Context,
    once: bool = typer.Option(
        True,
        "--once",
        help="Process what is due and exit (for cron; the only mode: `cqrsctl daemon` runs sagas continuously).",
    ),
    now: str = typer.Option(
        None, "--now", help="Take this UTC time as now for deadlines (testing, back-fills)."
    ),
    batch: int = typer.Option(
        saga_service.BATCH, "--batch", min=1, max=MAX_INT, help="Events per transaction."
    ),
) -> None:
    """Advance sagas: handle new events, fire due deadlines, dispatch their commands.

    Example: cqrsctl --app samples/bank/app.py sagas run --once
    """
    rt = runtime(ctx)
    when = None if now is None else parse_timestamp(now, "--now")
    runner = saga_service.SagaRunner(
        rt.app(), rt.store(), batch=batch, **({"clock": lambda: when} if when else {})
    )
    report = runner.run_once()
    if rt.output.json:
        rt.output.data(report)
    else:
        rt.output.say(
            f"events {report.events}, sagas started {report.started}, advanced {report.advanced},"
            f" deadlines fired {report.deadlines_fired}, commands {report.commands}"
            + (" (another runner holds the saga lock)" if report.locked else "")
        )


@sagas_app.command("retry")
def sagas_retry(ctx: typer.Context, saga_id: str = typer.Argument(..., help="Id of a failed saga.")) -> None:
    """Retry the compensation of a failed saga.

    Example: cqrsctl --app samples/bank/app.py sagas retry TransferSaga-Transfer-T9
    """
    rt = runtime(ctx)
    record = saga_service.SagaRunner(rt.app(), rt.store()).retry(saga_id, actor=rt.actor)
    if rt.output.json:
        rt.output.data(saga_service.saga_view(record, []))
    else:
        rt.output.say(f"{record.saga_id} is now {record.status}")


def register(app: typer.Typer) -> None:
    app.add_typer(sagas_app, name="sagas")
