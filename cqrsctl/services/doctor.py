"""Health checks of a store, for people and for monitoring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatabaseError
from ..store import Store, backend_of, iso, redact
from ..store.base import SCHEMA_VERSION


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Report:
    database: str
    backend: str
    checks: list[Check] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Row lists by topic ("projections", "daemons", …) for tables and --json.
    details: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "backend": self.backend,
            "healthy": self.healthy,
            "checks": [c.to_dict() for c in self.checks],
            "counts": self.counts,
            **self.details,
        }


def examine(url: str, opener: Callable[[], Store], app: Any = None, max_lag: int | None = None) -> Report:
    """The report for the store at `url`, always: a store that cannot be reached or read is a
    failed `connection` check. Only a URL that names no supported backend raises (exit 7)."""
    backend = backend_of(url)
    try:
        return diagnose(opener(), app, max_lag)
    except DatabaseError as exc:
        report = Report(redact(url), backend)
        report.checks.append(Check("connection", False, str(exc).replace(url, redact(url))))
        return report


def diagnose(store: Store, app: Any = None, max_lag: int | None = None) -> Report:
    """Connectivity, schema version and table counts. Reaching here means we connected."""
    report = Report(redact(store.url), store.backend)
    report.checks.append(Check("connection", True, f"connected ({store.backend})"))
    version = store.schema_version()
    if version == 0:
        report.checks.append(Check("schema", False, "not initialised: run `cqrsctl init`"))
        return report
    report.checks.append(
        Check(
            "schema", version == SCHEMA_VERSION, f"version {version} (this cqrsctl expects {SCHEMA_VERSION})"
        )
    )
    problems = store.schema_problems()
    report.checks.append(
        Check(
            "core tables",
            not problems,
            "; ".join(problems) + " (run `cqrsctl init`)" if problems else "all present, events append-only",
        )
    )
    report.counts = store.counts()
    report.checks.append(Check("durability", True, store.durability()))
    if problems:
        return report  # the checks below read those tables
    _daemon_checks(store, report)
    if app is None:
        _checkpoint_checks(store, report, max_lag)
    else:
        if app.projections:
            _projection_checks(store, app, report, max_lag)
        _read_model_checks(store, app, report)
    _saga_checks(store, report)
    return report


def _checkpoint_checks(store: Store, report: Report, max_lag: int | None) -> None:
    """Without the app, the projections its checkpoints name: unhealthy when one is failed
    or (with `max_lag`) behind. Versions against the code, and projections that never ran,
    need the app's declarations."""
    from .sagas import POSITION as SAGA_POSITION

    with store.reader() as tx:
        head = tx.tracking.head()
        # Projection checkpoints: not the saga runner's, and no colon (daemon:…, rebuild:…).
        rows = [cp for cp in tx.tracking.checkpoints() if ":" not in cp.name and cp.name != SAGA_POSITION]
    if not rows:
        return
    bad = []
    for cp in rows:
        lag = max(head - cp.position, 0)
        if cp.status == "failed":
            bad.append(f"{cp.name} failed at position {cp.error_position}")
        elif max_lag is not None and lag > max_lag:
            bad.append(f"{cp.name} is {lag} events behind (max {max_lag})")
    lagging = max(head - cp.position for cp in rows)
    detail = f"{len(rows)} ok, largest lag {max(lagging, 0)} events (from their checkpoints, without the app)"
    report.checks.append(Check("projections", not bad, "; ".join(bad) or detail))
    report.details["projections"] = [
        {
            "projection": cp.name,
            "state": "failed"
            if cp.status == "failed"
            else ("running" if cp.owner and cp.lease_valid else "idle"),
            "position": cp.position,
            "lag": max(head - cp.position, 0),
            "lag seconds": None,
            "error": cp.error,
        }
        for cp in rows
    ]


def _read_model_checks(store: Store, app: Any, report: Report) -> None:
    """With the app: the tables of each projection built at its current version have the
    columns it declares (a table changed in the code without a version bump shows here,
    before a handler fails on it)."""
    projections = getattr(app, "projections", None)
    if not projections:
        return
    bad, checked = [], 0
    with store.reader() as tx:
        built = {cp.name: cp.version for cp in tx.tracking.checkpoints()}
        for name, cls in sorted(projections.items()):
            if built.get(name) != str(cls.version):
                continue  # never run, or stale (the projections check says so)
            for table, spec in cls.tables.items():
                checked += 1
                found = tx.read_models.columns(table)
                if found is None:
                    bad.append(f"{name}: table {table} is missing")
                    continue
                missing = [c for c in spec.columns if c not in found]
                extra = [c for c in found if c not in spec.columns]
                if missing or extra:
                    bad.append(
                        f"{name}: table {table}"
                        + (f" lacks {', '.join(missing)}" if missing else "")
                        + (" and" if missing and extra else "")
                        + (f" has undeclared {', '.join(extra)}" if extra else "")
                    )
    if checked:
        detail = "; ".join(bad) + " (bump the projection's version and rebuild it)" if bad else ""
        report.checks.append(Check("read models", not bad, detail or f"{checked} tables as declared"))


def _daemon_checks(store: Store, report: Report) -> None:
    """Daemons by their heartbeats: one that still says `running` but renews nothing died."""
    from .daemon import daemons

    beats = daemons(store)
    alive = [d for d in beats if d.alive]
    dead = [d for d in beats if d.status == "running" and not d.alive]
    detail = f"{len(alive)} running"
    if dead:
        detail += f"; {len(dead)} without a heartbeat (died?): {', '.join(d.daemon_id for d in dead)}"
    report.checks.append(Check("daemons", True, detail))
    report.details["daemons"] = [
        {
            "daemon": d.daemon_id,
            "status": d.status if d.alive or d.status == "stopped" else "no heartbeat",
            "heartbeat": None if d.heartbeat_at is None else iso(d.heartbeat_at),
            "work": d.workers,
            "last error": d.error,
        }
        for d in beats
        if d.alive or d.status == "running"
    ]


def _projection_checks(store: Store, app: Any, report: Report, max_lag: int | None) -> None:
    """Unhealthy when a projection is failed, stale, or (with `max_lag`) more than `max_lag`
    events behind."""
    from .projections import status

    rows = status(store, app)
    bad = []
    for s in rows:
        if s.state == "failed":
            bad.append(f"{s.name} failed at position {s.error_position}")
        elif s.state == "stale-version":
            bad.append(f"{s.name} is stale (stored version {s.stored_version}, code {s.version}): rebuild it")
        elif max_lag is not None and s.lag_events > max_lag:
            bad.append(f"{s.name} is {s.lag_events} events behind (max {max_lag})")
    lagging = max((s.lag_events for s in rows), default=0)
    report.checks.append(
        Check("projections", not bad, "; ".join(bad) or f"{len(rows)} ok, largest lag {lagging} events")
    )
    report.details["projections"] = [
        {
            "projection": s.name,
            "state": s.state,
            "position": s.position,
            "lag": s.lag_events,
            "lag seconds": round(s.lag_seconds, 1),
            "error": s.error,
        }
        for s in rows
    ]


def _saga_checks(store: Store, report: Report) -> None:
    """Unhealthy when a saga is `failed`; `compensating` for long means a runner is stuck."""
    from ..store.base import utcnow
    from .sagas import list_sagas, saga_counts

    counts = saga_counts(store)
    if not counts:
        return
    stuck = [
        s.saga_id
        for s in list_sagas(store, "compensating")
        if (utcnow() - s.updated_at).total_seconds() > 300
    ]
    failed = counts.get("failed", 0)
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if stuck:
        detail += f"; stuck compensating: {', '.join(stuck[:5])}"
    if failed:
        detail += "; see `cqrsctl sagas list --status failed`"
    report.checks.append(Check("sagas", failed == 0, detail))
    report.details["sagas"] = [{"status": status, "count": n} for status, n in sorted(counts.items())]
