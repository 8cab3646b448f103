"""`cqrsctl top`: a live view of a store and its daemons."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..services.monitor import Monitor
from ..times import age
from .runtime import duration, runtime

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(int(v / top * (len(BARS) - 1) + 0.5), len(BARS) - 1)] for v in values)


def _n(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}"


def render(view: dict[str, Any], source: str) -> Group:
    """The screen: a header line, then projections, daemons, outbox and sagas."""
    head = Text.assemble(
        ("cqrsctl top ", "bold"),
        f"{source}  {view['at']}  head {view['head']:,}  ",
        ("events/s ", "bold"),
        _n(view["events_per_second"]),
        "  ",
        sparkline(view["events_rate_history"]),
    )
    projections = Table("projection", "state", "position", "lag", "lag trend", "rate/s", "owner", title="projections",
                        title_justify="left", expand=False)  # fmt: skip
    for p in view["projections"]:
        style = "red" if p["state"] in ("failed", "stale-version") else ""
        projections.add_row(
            Text(p["name"]), Text(p["state"], style=style), _n(p["position"]), _n(p["lag_events"]),
            sparkline(p.get("lag_history", [])), _n(p.get("rate")), Text(p["owner"] or "-"),
        )  # fmt: skip
    daemons = Table(
        "daemon", "status", "heartbeat age", "holds", "processed", title="daemons", title_justify="left"
    )
    for d in view["daemons"]:
        style = "" if d["status"] == "running" else "red"
        daemons.add_row(
            Text(d["daemon_id"]), Text(d["status"], style=style), age(d["heartbeat_age_seconds"]),
            Text(d["holds"] or "-"), _n(d["processed"]),
        )  # fmt: skip
    ob = view["outbox"]
    outbox = Table(
        "pending", "due", "dead", "oldest pending", "delivered/s", title="outbox", title_justify="left"
    )
    outbox.add_row(
        _n(ob["pending"]), _n(ob["due"]), Text(_n(ob["dead"]), style="red" if ob["dead"] else ""),
        age(ob["oldest_pending_age_seconds"]), _n(ob["delivered_per_second"]),
    )  # fmt: skip
    sagas = Table(*(view["sagas"] or {"sagas": 0}), title="sagas", title_justify="left")
    sagas.add_row(*(_n(n) for n in (view["sagas"] or {"sagas": 0}).values()))
    return Group(head, projections, daemons, outbox, sagas)


def top(
    ctx: typer.Context,
    once: bool = typer.Option(
        False,
        "--once",
        help="Look twice, --interval apart (for the rates), print once and exit (for scripts).",
    ),
    interval: float = typer.Option(
        "1s", "--interval", parser=duration, metavar="DURATION", help="Time between refreshes."
    ),
) -> None:
    """A live view of the store: events/s, projections, daemons, outbox and sagas; Ctrl-C quits.

    Cheap on a busy store: each refresh reads positions, checkpoints, heartbeats and the
    outbox backlog through indexes; rates come from the difference between refreshes.
    With --once (and --format json for scripts) it prints one view and exits. Projections
    are shown from their checkpoints, or with --app (or CQRSCTL_APP) as the app declares
    them; an app named only in cqrsctl.toml is not imported.

    Example: cqrsctl --app samples/bank/app.py top --once --format json
    """
    rt = runtime(ctx)
    if interval <= 0:
        raise typer.BadParameter("--interval must be more than 0")
    monitor = Monitor(rt.store(migrate=False), rt.named_app())
    source = rt.store().backend
    if once:
        monitor.refresh()
        time.sleep(interval)
        view = monitor.refresh()
        if rt.output.json:
            rt.output.data(view)
        else:
            rt.output.out.print(render(view, source))
        return
    with Live(
        render(monitor.refresh(), source), console=rt.output.out, auto_refresh=False, screen=False
    ) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(monitor.refresh(), source), refresh=True)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command()(top)
