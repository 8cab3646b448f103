"""The harness: measurements, contenders, sizes, and the loop that runs them.

A measurement is a set of contender functions and the table rows they fill. A contender
function takes a :class:`Ctx`, does its own setup on a fresh database (untimed), times
only the work being measured, and returns its figures as ``{metric: value}``. It raises
:class:`Unavailable` when it cannot run here (a cqrsctl piece not written yet, a service
that is down); the table then shows ``n/a`` instead of the run stopping.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .db import Fresh, Template

BACKENDS = ("sqlite", "postgres")
COLUMNS = ("raw", "eventsourcing", "cqrsctl")


class Unavailable(Exception):
    """This contender cannot run here; the message says why (shown as n/a)."""


@contextmanager
def needs_cqrsctl(what: str) -> Iterator[None]:
    """Turn a missing cqrsctl module (work in progress) into n/a rather than a crash."""
    try:
        yield
    except ImportError as exc:
        raise Unavailable(f"{what}: {exc}") from None


# -- sizes -------------------------------------------------------------------------------

# Per preset: how much work each measurement does. "target" is the size the spec names;
# "default" is cut so a full run on both backends stays under 15 minutes on 2 shared
# cores (commit-bound measurements run at the disk's fsync rate, a few hundred per second).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "dispatch_commands": 60,
        "dispatch_accounts": 6,
        "append_events": 1_000,
        "append_batch": 100,
        "replay_events": 500,
        "replay_reps": 1,
        "rebuild_events": 3_000,
        "rebuild_accounts": 100,
        "latency_appends": 8,
        "poll_ms": 10,
        "outbox_messages": 300,
        "outbox_batch": 100,
        "writer_ms": 200,
    },
    "quick": {
        "dispatch_commands": 200,
        "dispatch_accounts": 20,
        "append_events": 5_000,
        "append_batch": 100,
        "replay_events": 5_000,
        "replay_reps": 1,
        "rebuild_events": 50_000,
        "rebuild_accounts": 2_000,
        "latency_appends": 25,
        "poll_ms": 10,
        "outbox_messages": 1_000,
        "outbox_batch": 100,
        "writer_ms": 1_000,
    },
    "default": {
        "dispatch_commands": 2_000,
        "dispatch_accounts": 200,
        "append_events": 50_000,
        "append_batch": 100,
        "replay_events": 10_000,
        "replay_reps": 3,
        "rebuild_events": 250_000,
        "rebuild_accounts": 2_000,
        "latency_appends": 200,
        "poll_ms": 10,
        "outbox_messages": 10_000,
        "outbox_batch": 100,
        "writer_ms": 2_000,
    },
    "target": {
        "dispatch_commands": 20_000,
        "dispatch_accounts": 2_000,
        "append_events": 200_000,
        "append_batch": 100,
        "replay_events": 10_000,
        "replay_reps": 5,
        "rebuild_events": 1_000_000,
        "rebuild_accounts": 2_000,
        "latency_appends": 1_000,
        "poll_ms": 10,
        "outbox_messages": 50_000,
        "outbox_batch": 100,
        "writer_ms": 5_000,
    },
}


# -- what a measurement declares -----------------------------------------------------------

Contender = Callable[["Ctx"], dict[str, float]]


@dataclass(frozen=True)
class Row:
    """One line of a table: a metric, and which contender fills each column (None: —)."""

    label: str
    metric: str
    unit: str
    raw: str | None
    eventsourcing: str | None
    cqrsctl: str | None
    higher_is_better: bool = True
    backends: tuple[str, ...] = BACKENDS

    def contender(self, column: str) -> str | None:
        return getattr(self, column)  # type: ignore[no-any-return]


@dataclass
class Measurement:
    name: str
    title: str
    contenders: dict[str, Contender]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def rows_for(self, backend: str) -> list[Row]:
        return [r for r in self.rows if backend in r.backends]

    def needed(self, backend: str) -> list[str]:
        names: list[str] = []
        for row in self.rows_for(backend):
            for column in COLUMNS:
                name = row.contender(column)
                if name and name not in names:
                    names.append(name)
        return names


def durability_contenders(
    raw: Callable[..., dict[str, float]], eventsourcing: Contender, cqrsctl: Callable[..., dict[str, float]]
) -> dict[str, Contender]:
    """The contenders `durability_rows` names: raw and cqrsctl at each SQLite durability
    (a `synchronous` keyword) and at the backend's default, eventsourcing at its own."""
    return {
        "raw": raw,
        "raw@FULL": partial(raw, synchronous="FULL"),
        "raw@NORMAL": partial(raw, synchronous="NORMAL"),
        "eventsourcing": eventsourcing,
        "cqrsctl": cqrsctl,
        "cqrsctl@FULL": partial(cqrsctl, synchronous="FULL"),
        "cqrsctl@NORMAL": partial(cqrsctl, synchronous="NORMAL"),
    }


def durability_rows(label: str, metric: str, unit: str, higher_is_better: bool = True) -> list[Row]:
    """Rows of a write measurement. SQLite gets two: at synchronous=FULL (what
    eventsourcing runs) and at NORMAL (cqrsctl's default, no eventsourcing figure);
    PostgreSQL has one durability (synchronous_commit=on for everyone)."""
    return [
        Row(f"{label}, synchronous=FULL", metric, unit, "raw@FULL", "eventsourcing", "cqrsctl@FULL",
            higher_is_better, ("sqlite",)),
        Row(f"{label}, synchronous=NORMAL", metric, unit, "raw@NORMAL", None, "cqrsctl@NORMAL",
            higher_is_better, ("sqlite",)),
        Row(label, metric, unit, "raw", "eventsourcing", "cqrsctl", higher_is_better, ("postgres",)),
    ]  # fmt: skip


# -- running ------------------------------------------------------------------------------


@dataclass
class Config:
    sizes: dict[str, int]
    pg_dsn: str
    nats_url: str
    workdir: Path
    runs: int = 3
    verbose: bool = True
    # Seeded templates of the backend being run, by key (see Ctx.seeded).
    templates: dict[Any, Template] = field(default_factory=dict)


@dataclass
class Ctx:
    """What a contender gets: its backend, the sizes, and fresh databases on demand."""

    backend: str
    config: Config
    run: int = 0

    @property
    def sizes(self) -> dict[str, int]:
        return self.config.sizes

    def fresh(self, synchronous: str | None = None, template: Template | None = None) -> Fresh:
        """A new database for this run (SQLite: a new file; PostgreSQL: a new schema), empty,
        or a copy of `template`."""
        from .db import Fresh

        return Fresh(self, synchronous, template=template)

    def seeded(self, key: Any, seed: Callable[[Fresh], None]) -> Template:
        """A template database seeded once by `seed(db)` and kept for the other runs of
        this backend; runs copy it with ``ctx.fresh(template=...)``."""
        from .db import Fresh

        found = self.config.templates.get(key)
        if found is None:
            started = time.monotonic()
            with Fresh(self, keep=True) as db:
                seed(db)
            found = self.config.templates[key] = db.as_template()
            self.log(f"[{self.backend}] seeded {key} in {time.monotonic() - started:.1f}s")
        return found

    def log(self, text: str) -> None:
        if self.config.verbose:
            print(text, file=sys.stderr, flush=True)


@dataclass
class Outcome:
    """What one contender did over all its runs on one backend."""

    status: str = "ok"  # ok | n/a | error
    reason: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    def stats(self, metric: str) -> tuple[float, float, float] | None:
        values = self.samples.get(metric)
        if not values:
            return None
        return statistics.median(values), min(values), max(values)


@dataclass
class BackendResult:
    backend: str
    available: bool = True
    reason: str = ""
    # measurement name -> contender name -> outcome
    outcomes: dict[str, dict[str, Outcome]] = field(default_factory=dict)
    seconds: float = 0.0


def run_backend(backend: str, measurements: list[Measurement], config: Config) -> BackendResult:
    result = BackendResult(backend)
    started = time.monotonic()
    if backend == "postgres":
        from .db import pg_reason

        reason = pg_reason(config.pg_dsn)
        if reason:
            result.available, result.reason = False, f"PostgreSQL unavailable: {reason}"
            print(f"[{backend}] skipped: {result.reason}", file=sys.stderr)
            return result
    try:
        for m in measurements:
            names = m.needed(backend)
            outcomes = {name: Outcome() for name in names}
            result.outcomes[m.name] = outcomes
            for run in range(config.runs):
                # Rotate the order each run so a slow spell of the machine is shared out.
                shift = run % len(names) if names else 0
                for name in names[shift:] + names[:shift]:
                    outcome = outcomes[name]
                    if outcome.status != "ok":
                        continue
                    ctx = Ctx(backend, config, run)
                    t0 = time.monotonic()
                    try:
                        figures = m.contenders[name](ctx)
                    except Unavailable as exc:
                        outcome.status, outcome.reason = "n/a", str(exc)
                        ctx.log(f"[{backend}] {m.name} · {name}: n/a ({exc})")
                        continue
                    except Exception as exc:
                        outcome.status = "error"
                        outcome.reason = f"{type(exc).__name__}: {exc}".strip()
                        ctx.log(f"[{backend}] {m.name} · {name}: ERROR\n{traceback.format_exc()}")
                        continue
                    for metric, value in figures.items():
                        outcome.samples.setdefault(metric, []).append(float(value))
                    shown = ", ".join(f"{k}={_short(v)}" for k, v in figures.items())
                    ctx.log(
                        f"[{backend}] {m.name} · {name} run {run + 1}/{config.runs}: {shown}"
                        f" ({time.monotonic() - t0:.1f}s)"
                    )
    finally:
        drop_templates(config)
    result.seconds = time.monotonic() - started
    return result


def drop_templates(config: Config) -> None:
    from .db import drop_database

    for template in config.templates.values():
        if template.backend == "postgres":
            drop_database(config.pg_dsn, template.database)
        else:
            template.path.unlink(missing_ok=True)
    config.templates.clear()


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
