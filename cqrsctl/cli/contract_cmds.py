"""`app show` and `contract check|lock|diff`: what the app declares, and whether the
stored events still fit it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import ContractError
from ..services import contract
from .runtime import Output, runtime

app_group = typer.Typer(no_args_is_help=True, help="Inspect the app given with --app.")
contract_app = typer.Typer(
    no_args_is_help=True, help="Event contracts: check that the current code reads every stored event."
)


@app_group.command("show")
def app_show(ctx: typer.Context) -> None:
    """List the app's commands, events, aggregates, queries, projections and sagas.

    Example: cqrsctl --app samples/bank/app.py app show
    """
    rt = runtime(ctx)
    info = contract.describe(rt.app())
    if rt.output.json:
        rt.output.data(info)
        return
    out = rt.output
    out.table(
        ("command", "aggregate", "fields"),
        ((c["name"], c["aggregate"], _fields(c["fields"])) for c in info["commands"]),
        title=f"{info['name']}: commands",
    )
    out.table(
        ("event", "class", "version", "upcasters", "fields"),
        (
            (
                e["type"],
                e["class"] or "(none)",
                e["schema_version"] or "",
                ", ".join(e["upcasters"]),
                _fields(e["fields"]),
            )
            for e in info["events"]
        ),
        title="events",
    )
    out.table(
        ("aggregate", "category", "handles"),
        ((a["class"], a["category"], ", ".join(a["handles"])) for a in info["aggregates"]),
        title="aggregates",
    )
    if info["queries"]:
        out.table(
            ("query", "params", "about"),
            ((q["name"], _fields(q["params"]), q["doc"]) for q in info["queries"]),
            title="queries",
        )
    if info["projections"]:
        out.table(
            ("projection", "version", "tables", "handles"),
            (
                (p["name"], p["version"], ", ".join(p["tables"]), ", ".join(p["handles"]))
                for p in info["projections"]
            ),
            title="projections",
        )
    if info["sagas"] or info["reactions"]:
        rows = [
            (s["name"], ", ".join(s["starts_on"]), " -> ".join(st["name"] for st in s["steps"]))
            for s in info["sagas"]
        ]
        rows += [(r["name"], r["on"], "(reaction)") for r in info["reactions"]]
        out.table(("saga", "starts on", "steps"), rows, title="sagas")


def _fields(fields: list[dict[str, Any]]) -> str:
    return ", ".join(f"{f['name']}: {f['type']}" + ("" if f["required"] else "?") for f in fields)


@contract_app.command("check")
def contract_check(
    ctx: typer.Context,
    sample: int = typer.Option(
        None, "--sample", min=1, help="Decode only the N oldest and newest events of each type and version."
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Also fail (exit 17) on warnings: stored types without a class, orphan handlers.",
    ),
) -> None:
    """Decode the stored events with the app's current classes and upcasters; exit 17 when any fails.

    Example: cqrsctl --app samples/bank/app.py contract check --sample 1000
    """
    rt = runtime(ctx)
    app = rt.app()
    store = rt.store()
    with rt.output.progress("checking", None if sample else store.head()) as advance:
        report = contract.check(app, store, sample=sample, on_progress=advance)
    if rt.output.json:
        rt.output.data(report)
    else:
        _show_check(rt.output, report)
    failures = report.failures()
    if strict and not failures and report.warnings:
        raise ContractError(f"{len(report.warnings)} warning(s), first: {report.warnings[0]}")
    if failures:
        if not rt.output.json:
            for line in failures[1:]:
                rt.output.error(line)
        raise ContractError(
            failures[0] if len(failures) == 1 else f"{failures[0]} (and {len(failures) - 1} more types)"
        )
    rt.output.say(f"ok: every checked event decodes with {app.name}")


def _show_check(out: Output, report: contract.ContractReport) -> None:
    out.table(
        (
            "event type",
            "class",
            "current",
            "stored",
            "versions",
            "upcasters",
            "checked",
            "failed",
            "first failure",
        ),
        (
            (
                t.event_type,
                t.class_name or "(none)",
                "" if t.current_version is None else f"v{t.current_version}",
                t.stored,
                ", ".join(f"v{v}: {n}" for v, n in sorted(t.versions.items())),
                _chain(t),
                t.checked,
                t.failed,
                "" if t.first_failure is None else f"position {t.first_failure.position}",
            )
            for t in report.types
        ),
        title=f"{report.checked} of {report.events} events checked in {report.seconds:.1f} s",
    )
    if report.never_stored:
        out.say("never stored: " + ", ".join(report.never_stored))
    for line in report.warnings:
        out.say(f"warning: {line}")


_FILE_HELP = "The contract file, kept in your repository."


@contract_app.command("lock")
def contract_lock(
    ctx: typer.Context,
    file: Path = typer.Option(Path(contract.LOCK_FILE), "--file", "-f", help=_FILE_HELP),
) -> None:
    """Write the app's event contract (each type's JSON schema per version) to a file.

    Example: cqrsctl --app samples/bank/app.py contract lock --file samples/bank/cqrsctl-contract.json
    """
    rt = runtime(ctx)
    doc, changes = contract.write_lock(rt.app(), file)
    if rt.output.json:
        rt.output.data({"file": str(file), "event_types": len(doc["events"]), "changes": changes})
        return
    for change in changes:
        rt.output.say(f"{'breaking' if change.breaking else 'compatible'}: {change}")
    rt.output.say(f"wrote {file}: {len(doc['events'])} event types")


@contract_app.command("diff")
def contract_diff(
    ctx: typer.Context,
    file: Path = typer.Option(Path(contract.LOCK_FILE), "--file", "-f", help=_FILE_HELP),
) -> None:
    """Compare the app's events with the contract file; exit 18 on a breaking change.

    Example: cqrsctl --app samples/bank/app.py contract diff --file samples/bank/cqrsctl-contract.json
    """
    rt = runtime(ctx)
    changes = contract.diff(rt.app(), contract.read_lock(file))
    if rt.output.json:
        rt.output.data({"file": str(file), "breaking": sum(c.breaking for c in changes), "changes": changes})
    elif changes:
        rt.output.table(
            ("kind", "event type", "change"),
            (("breaking" if c.breaking else "compatible", c.event_type, c.what) for c in changes),
            title=f"changes since {file}",
        )
    else:
        rt.output.say(f"no changes since {file}")
    contract.raise_if_breaking(changes)


def _chain(t: contract.TypeCheck) -> str:
    if t.missing_upcasters:
        return "missing " + ", ".join(f"v{v}->v{v + 1}" for v in t.missing_upcasters)
    return ", ".join(f"v{v}->v{v + 1}" for v in t.upcasters)


def register(app: typer.Typer) -> None:
    app.add_typer(app_group, name="app")
    app.add_typer(contract_app, name="contract")
