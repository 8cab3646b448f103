"""The daemon's workers, side by side: projections, sagas and the outbox relay.

Each is a `Worker` (see `daemon`) that a `Daemon` runs on its loop. `ProjectionWorker`
runs projections under leases, spreading them across daemons; `SagaWorker` runs the
app's sagas, reactions and due deadlines; `OutboxWorker(sink_url)` delivers the outbox.

The outbox relay drains on a thread of its own with its own store connection and sink,
so a slow or stuck sink never holds up the daemon's loop (its projections and sagas keep
turning); `daemon --once` drains inline, one batch per tick. After the sink fails the
worker waits (doubling up to a minute) before it tries again. Cron drains and daemons can
run side by side: claims keep them off each other's messages.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..app import App
from ..sinks import Sink, open_sink
from ..store import Store, open_store
from . import outbox
from . import projections as proj
from .daemon import Daemon, Worker
from .owners import dead_here, owner_id

log = logging.getLogger(__name__)


def for_app(
    app: App,
    *,
    projections: bool = True,
    names: Sequence[str] | None = None,
    sagas: bool = True,
    outbox: str | Sink | None = None,
    retries: int = 3,
    backoff: float = 0.2,
) -> list[Worker]:
    """The workers a daemon runs for `app`: its projections (`names`, or all), its sagas and
    reactions, and with an `outbox` sink the relay; none for what the app does not have.
    Unknown projection names and bad sink URLs fail here, before anything starts."""
    chosen: list[Worker] = []
    if projections and app.projections:
        proj.select(app, names)
        chosen.append(ProjectionWorker(names, retries=retries, backoff=backoff))
    if sagas and (app.sagas or app.reactions):
        chosen.append(SagaWorker())
    if outbox:
        chosen.append(
            OutboxWorker(open_sink(outbox, format=app.outbox_format) if isinstance(outbox, str) else outbox)
        )
    return chosen


class ProjectionWorker(Worker):
    """Runs projections, each under a lease, taking at most its share of them."""

    name = "projections"

    def __init__(
        self,
        names: Sequence[str] | None = None,
        *,
        batch: int = proj.STEP_BATCH,
        retries: int = 3,
        backoff: float = 0.2,
        claim_every: float = 0.5,
    ) -> None:
        self.names = list(names) if names else None
        self.batch, self.retries, self.backoff, self.claim_every = batch, retries, backoff, claim_every
        self.runners: dict[str, proj.Runner] = {}
        self.owned: set[str] = set()
        self.failed: set[str] = set()
        self.processed = 0
        self._last_claim = 0.0
        # The heartbeat thread renews and reports; the loop acts on its report.
        self._lock = threading.Lock()
        self._lost: set[str] = set()
        self._holders: Counter[str] | None = None

    def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        for cls in proj.select(daemon.app, self.names):
            self.runners[cls.name] = proj.Runner(
                daemon.store, daemon.app, cls, daemon.id, batch=self.batch, lease=daemon.lease,
                retries=self.retries, backoff=self.backoff,
            )  # fmt: skip

    def share(self) -> int:
        return math.ceil(len(self.runners) / max(1, self.daemon.peers))

    def _claim(self) -> None:
        self._last_claim = time.monotonic()
        share = self.share()
        for name, runner in self.runners.items():
            if len(self.owned) >= share:
                return
            if name in self.owned:
                continue
            if runner.claim() == "claimed":
                with self._lock:
                    self.owned.add(name)
                self.failed.discard(name)
                log.info(f"{name}: taken (owner {self.daemon.id})")

    def tick(self) -> bool:
        self._apply_heartbeat()
        if time.monotonic() - self._last_claim >= self.claim_every:
            self._claim()
        more = False
        for name in sorted(self.owned):
            step = self.runners[name].step()
            self.processed += step.processed
            if step.outcome == "progressed":
                more = True
            elif step.outcome in ("lost", "stale"):
                with self._lock:
                    self.owned.discard(name)
                if step.outcome == "stale":
                    self.runners[name].release()
                log.info(f"{name}: {'lease lost' if step.outcome == 'lost' else 'stale version, left alone'}")
            elif step.outcome == "failed" and name not in self.failed:
                self.failed.add(name)
            elif step.outcome == "caught-up":
                self.failed.discard(name)
        return more

    def next_due(self) -> float | None:
        waits = [
            r.retry_at - time.monotonic() for n, r in self.runners.items() if n in self.owned and r.retry_at
        ]
        waits.append(self.claim_every if len(self.owned) < len(self.runners) else math.inf)
        due = min(waits)
        return None if due == math.inf else max(due, 0.0)

    def busy(self) -> bool:
        return any(self.runners[n].retry_at > time.monotonic() for n in self.owned)

    def heartbeat(self) -> None:
        with self._lock:
            mine = sorted(self.owned)
        with self.daemon.store.transaction() as tx:
            tr = tx.tracking
            held: set[str] = set(tr.renew(mine, self.daemon.id, self.daemon.lease)) if mine else set()
            holders = Counter(
                cp.owner for cp in tr.checkpoints()
                if cp.name in self.runners and cp.owner and cp.lease_valid and not dead_here(cp.owner)
            )  # fmt: skip
        with self._lock:
            self._lost |= set(mine) - held
            self._holders = holders

    def _apply_heartbeat(self) -> None:
        with self._lock:
            lost, self._lost = self._lost, set()
            holders, self._holders = self._holders, None
        for name in lost & self.owned:
            log.info(f"{name}: lease lost")
        with self._lock:
            self.owned -= lost
        if holders is None:
            return
        # Spread the work: never hold more than ceil(N/D); hand one over while another
        # daemon holds fewer than floor(N/D) and we hold more.
        peers, total = self.daemon.peers, len(self.runners)
        low, high = total // peers, self.share()
        starving = peers > len(holders) or any(n < low for n in holders.values())
        give_count = len(self.owned) - high
        if give_count <= 0 and starving and len(self.owned) > max(low, 1):
            give_count = 1
        if give_count > 0:
            give = sorted(self.owned)[-give_count:]
            with self.daemon.store.transaction() as tx:
                tx.tracking.release(give, self.daemon.id)
            with self._lock:
                self.owned -= set(give)
            # Leave them to the others for a moment before claiming again.
            self._last_claim = time.monotonic() + 2 * self.daemon.heartbeat_every
            log.info(f"handed over {', '.join(give)} ({peers} daemons)")

    def stop(self) -> None:
        if self.owned:
            with self.daemon.store.transaction() as tx:
                tx.tracking.release(sorted(self.owned), self.daemon.id)
            with self._lock:
                self.owned.clear()

    def info(self) -> dict[str, Any]:
        with self._lock:
            owned = sorted(self.owned)
        return {"owned": owned, "failed": sorted(self.failed), "processed": self.processed}


class SagaWorker(Worker):
    """Runs the app's sagas and reactions: new events in small batches, due deadlines.

    Saga work takes a lock per batch, so among several daemons one does it at a time;
    the others find the lock taken and go on with their other workers.
    """

    name = "sagas"

    def __init__(
        self, batch: int = 100, deadline_check: float = 1.0, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.batch, self.deadline_check, self.clock = batch, deadline_check, clock
        self.processed = 0
        self.runner: Any = None

    def start(self, daemon: Daemon) -> None:
        from .sagas import SagaRunner

        clock = {} if self.clock is None else {"clock": self.clock}
        self.runner = SagaRunner(daemon.app, daemon.store, batch=self.batch, **clock)

    def tick(self) -> bool:
        report = self.runner.run_once(max_batches=1)
        done = report.events + report.deadlines_fired
        self.processed += done
        # Work done may have produced events for other workers (or more for us): go round again.
        return done > 0

    def next_due(self) -> float | None:
        return self.deadline_check  # deadlines come due without any event to wake us

    def info(self) -> dict[str, Any]:
        return {"processed": self.processed}


class OutboxWorker(Worker):
    name = "outbox"

    def __init__(
        self,
        sink: str | Sink,
        *,
        batch: int = 100,
        max_attempts: int = 10,
        backoff: outbox.Backoff = outbox.Backoff(),
        lease: float = 60.0,
        poll: float = 1.0,
    ) -> None:
        self.sink = open_sink(sink) if isinstance(sink, str) else sink
        self.batch, self.max_attempts, self.backoff, self.lease = batch, max_attempts, backoff, lease
        self.poll = poll
        self.owner = owner_id("outbox")
        self.delivered = self.failed = self.dead = 0
        self.last_error: str | None = None
        self.pause = 0.0  # after a sink failure: seconds to wait before the next try
        self.resume_at = 0.0
        self.daemon: Daemon | None = None
        self.thread: threading.Thread | None = None
        self.store: Store | None = None  # the thread's own connection
        self._halt = threading.Event()
        self._wake = threading.Event()

    def start(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._halt.clear()
        if daemon.once or ":memory:" in daemon.store.url:
            return  # inline: --once is a catch-up run, and a memory database has one connection
        self.store = open_store(daemon.store.url, migrate=False)
        self.thread = threading.Thread(target=self._loop, name="cqrsctl-outbox", daemon=True)
        self.thread.start()

    def _drain(self, store: Store, max_messages: int | None) -> bool:
        """One drain; True when it stopped with more to do at once."""
        daemon = self.daemon
        assert daemon is not None
        report = outbox.drain(
            store,
            self.sink,
            max_messages=max_messages,
            batch=self.batch,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            lease=self.lease,
            stop=lambda: self._halt.is_set() or daemon.stopping,
            owner=self.owner,
            keep_open=True,
        )
        self.delivered += report.delivered
        self.failed += report.failed
        self.dead += report.dead
        for e in report.errors[:5]:
            log.warning(f"outbox: message {e['message_id']} attempt {e['attempts']}: {e['error']}")
        if report.error:
            self.last_error = report.error
            self.pause = min(max(self.pause * 2, 1.0), 60.0)
            self.resume_at = time.monotonic() + self.pause
            log.warning(f"outbox: {report.error} (next try in {self.pause:.0f}s)")
            return False
        self.pause = 0.0
        return report.stopped == "max" and report.remaining > 0

    def _loop(self) -> None:
        assert self.daemon is not None and self.store is not None
        while not self._halt.is_set():
            try:
                self._drain(self.store, None)
            except Exception as exc:  # the database went away, most likely: wait, go on
                self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
                self.pause = min(max(self.pause * 2, 1.0), 60.0)
                self.resume_at = time.monotonic() + self.pause
                log.warning(f"outbox: {self.last_error} (next try in {self.pause:.0f}s)")
            wait = max(self.poll, self.resume_at - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            while not self._halt.is_set() and time.monotonic() < self.resume_at:
                self._halt.wait(self.resume_at - time.monotonic())

    def tick(self) -> bool:
        assert self.daemon is not None
        if self.thread is not None:
            self._wake.set()  # appends may have published messages: look now, not at the next poll
            return False
        if time.monotonic() < self.resume_at:
            return False
        return self._drain(self.daemon.store, self.batch)

    def next_due(self) -> float | None:
        if self.thread is not None:
            return None
        # Back-offs come due without any append to wake the daemon.
        return max(self.poll, self.resume_at - time.monotonic())

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()
        if self.thread is not None:
            # A send in flight ends by its deadline; the drain then releases what it holds.
            self.thread.join(self.sink.timeout + outbox.GRACE_SECONDS + 3)
            if self.thread.is_alive():
                log.warning("outbox: the relay did not stop in time; its claims expire or are freed")
                return  # it still uses the sink and its store: leave both to it
            self.thread = None
        if self.sink.is_open:
            self.sink.close()
            self.sink.is_open = False
        if self.store is not None:
            self.store.close()
            self.store = None

    def info(self) -> dict[str, Any]:
        return {
            "sink": self.sink.name,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "last_error": self.last_error,
        }
