"""What `cqrsctl top` and the daemon's metrics endpoint show: one cheap look at a store.

A look reads the head position, the checkpoints, the daemons' heartbeats, the outbox
backlog (pending and dead rows through the status index, never the delivered ones) and
the sagas that are not finished. The finished sagas (completed, compensated) are counted
only every `FINISHED_EVERY` seconds: that table only grows. Rates come from the
difference between two looks, so nothing is counted to compute them.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..store import Store, iso
from ..store.tracking import Checkpoint
from .daemon import DAEMON_PREFIX, DaemonInfo
from .projections import REBUILD_PREFIX

ACTIVE_SAGAS = ("in_progress", "compensating", "failed", "timed_out")
FINISHED_SAGAS = ("completed", "compensated")
FINISHED_EVERY = 30.0
HISTORY = 30  # samples kept for sparklines


@dataclass
class Look:
    """The state of a store at one moment (`at`), as cheap reads give it."""

    at: datetime
    clock: float  # time.monotonic() of the look, for rates
    head: int
    projections: list[dict[str, Any]]
    daemons: list[dict[str, Any]]
    outbox: dict[str, Any]
    outbox_seq: int
    sagas: dict[str, int]


def look(store: Store, app: Any = None, finished_sagas: dict[str, int] | None = None) -> Look:
    """One look. `finished_sagas`: counts of finished sagas to reuse instead of counting them."""
    with store.reader() as tx:
        tr = tx.tracking
        now, head = tr.now(), tr.head()
        checkpoints = tr.checkpoints()
        pending, due, dead, oldest, seq = tx.outbox.backlog(now)
        sagas = tx.sagas.counts(ACTIVE_SAGAS if finished_sagas is not None else None)
    sagas = {**(finished_sagas or {}), **sagas}
    daemons = _daemon_rows(checkpoints, now)
    projections = _projection_rows(store, app, checkpoints, head)
    outbox = {
        "pending": pending,
        "due": due,
        "dead": dead,
        "oldest_pending_age_seconds": None
        if oldest is None
        else round(max((now - oldest).total_seconds(), 0.0), 3),
    }
    return Look(now, time.monotonic(), head, projections, daemons, outbox, seq, sagas)


def _daemon_rows(checkpoints: list[Checkpoint], now: datetime) -> list[dict[str, Any]]:
    """The daemons worth watching: running, or gone without saying so."""
    daemons = []
    for cp in checkpoints:
        if cp.name.startswith(DAEMON_PREFIX):
            d = DaemonInfo.from_checkpoint(cp)
            if not d.alive and d.status != "running":
                continue  # stopped cleanly: nothing to watch
            age = None if d.heartbeat_at is None else max((now - d.heartbeat_at).total_seconds(), 0.0)
            daemons.append(
                {
                    "daemon_id": d.daemon_id,
                    "status": d.status if d.alive else "no heartbeat",
                    "heartbeat_age_seconds": None if age is None else round(age, 3),
                    "holds": d.workers,
                    "processed": cp.position,
                    "error": d.error,
                }
            )
    return daemons


def _projection_rows(
    store: Store, app: Any, checkpoints: list[Checkpoint], head: int
) -> list[dict[str, Any]]:
    from .projections import status as projection_status
    from .sagas import POSITION as SAGA_POSITION

    if app is not None and getattr(app, "projections", None):
        projections = [
            {
                "name": s.name,
                "state": s.state,
                "position": s.position,
                "lag_events": s.lag_events,
                "lag_seconds": round(s.lag_seconds, 3),
                "owner": s.owner,
            }
            for s in projection_status(store, app)
        ]
    else:  # no app: what the checkpoints say
        projections = [
            {
                "name": cp.name,
                "state": "failed"
                if cp.status == "failed"
                else ("running" if cp.owner and cp.lease_valid else "idle"),
                "position": cp.position,
                "lag_events": max(head - cp.position, 0),
                "lag_seconds": None,
                "owner": cp.owner if cp.lease_valid else None,
            }
            for cp in checkpoints
            if not cp.name.startswith((DAEMON_PREFIX, REBUILD_PREFIX))
            and ":" not in cp.name
            and cp.name != SAGA_POSITION
        ]
    return projections


def _rate(now: float | None, then: float | None, seconds: float) -> float | None:
    if now is None or then is None or seconds <= 0:
        return None
    return round(max(now - then, 0) / seconds, 2)


@dataclass
class Monitor:
    """Successive looks at one store, with the rates between them and short histories."""

    store: Store
    app: Any = None
    previous: Look | None = None
    lag_history: dict[str, deque[int]] = field(default_factory=dict)
    rate_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    _finished: dict[str, int] | None = None
    _finished_at: float = 0.0

    def refresh(self) -> dict[str, Any]:
        """A new look, as the view `top` draws and `top --once --format json` prints."""
        reuse = self._finished if time.monotonic() - self._finished_at < FINISHED_EVERY else None
        current = look(self.store, self.app, reuse)
        if reuse is None:
            self._finished = {k: v for k, v in current.sagas.items() if k in FINISHED_SAGAS}
            self._finished_at = time.monotonic()
        prev = self.previous
        seconds = current.clock - prev.clock if prev else 0.0
        events_rate = _rate(current.head, prev.head if prev else None, seconds)
        if events_rate is not None:
            self.rate_history.append(events_rate)
        before = {p["name"]: p for p in prev.projections} if prev else {}
        for p in current.projections:
            old = before.get(p["name"])
            p["rate"] = _rate(p["position"], old["position"] if old else None, seconds)
            history = self.lag_history.setdefault(p["name"], deque(maxlen=HISTORY))
            history.append(p["lag_events"])
            p["lag_history"] = list(history)
        delivered = None
        if prev is not None and seconds > 0:
            # Rows that left the backlog = new rows - growth of the backlog (delivered, mostly).
            added = current.outbox_seq - prev.outbox_seq
            grew = (current.outbox["pending"] + current.outbox["dead"]) - (
                prev.outbox["pending"] + prev.outbox["dead"]
            )
            delivered = round(max(added - grew, 0) / seconds, 2)
        self.previous = current
        return {
            "at": iso(current.at),
            "head": current.head,
            "events_per_second": events_rate,
            "events_rate_history": list(self.rate_history),
            "projections": current.projections,
            "daemons": current.daemons,
            "outbox": {**current.outbox, "delivered_per_second": delivered},
            "sagas": dict(sorted(current.sagas.items())),
        }
