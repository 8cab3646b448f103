"""The daemon: one loop running a list of workers (projections, sagas and the outbox relay:
see `workers`), with heartbeats, leases, wake-ups and a clean stop.

The loop gives every worker a `tick()` (a bounded piece of work), and when none has more
to do right away, waits for a wake-up — a PostgreSQL NOTIFY (the store notifies on every
append), the poll interval, or a worker's own timer. NOTIFY is only a hint: a lost
notification costs one poll interval, never an event.

Heartbeats (the daemon's row, lease renewal) run on a thread of their own, so a handler
that takes long keeps its leases while the process lives; a process that is stopped
(SIGSTOP) or frozen renews nothing, and its leases run out after `lease` seconds.

Errors of the database (a dropped connection, a restarted server) are logged and the
loop backs off and goes on; a watchdog thread notices a loop that stopped turning
(stuck in a call that never returns) and calls `on_stall` (the CLI restarts the process).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..app import App
from ..redaction import scrub
from ..signals import on_stop
from ..store import Store
from ..store.tracking import Checkpoint
from . import projections as proj
from .owners import dead_here, owner_id

DAEMON_PREFIX = "daemon:"
HEARTBEAT_SECONDS = 1.0
STALL_SECONDS = 60.0
STOP_SECONDS = 5.0  # after SIGTERM, how long the step in hand may take before the process exits anyway

log = logging.getLogger(__name__)


class Worker(ABC):
    """A unit of the daemon's work. Every method runs on the daemon's loop thread."""

    name: str = "worker"

    def start(self, daemon: Daemon) -> None:
        """Called once before the first tick."""
        return None

    @abstractmethod
    def tick(self) -> bool:
        """Do a bounded amount of work; return True when more is ready at once."""

    def heartbeat(self) -> None:
        """Called about every `heartbeat` seconds on the heartbeat thread (not the loop's):
        renew leases. Must not wait on the loop."""
        return None

    def next_due(self) -> float | None:
        """Seconds until this worker wants a tick even without a wake-up (None: no timer)."""
        return None

    def busy(self) -> bool:
        """Work is waiting on a timer (a retry back-off): `--once` waits for it."""
        return False

    def stop(self) -> None:
        """Called once when the daemon stops: release leases."""
        return None

    def info(self) -> dict[str, Any]:
        """A few facts for the daemon's heartbeat and `doctor`."""
        return {}


@dataclass
class DaemonInfo:
    """A daemon as its heartbeat shows it."""

    daemon_id: str
    status: str  # running | stopped
    alive: bool
    started_at: datetime | None
    heartbeat_at: datetime | None
    workers: str
    error: str | None

    @classmethod
    def from_checkpoint(cls, cp: Checkpoint) -> DaemonInfo:
        return cls(
            cp.name[len(DAEMON_PREFIX) :], cp.status, cp.status == "running" and cp.lease_valid,
            cp.created_at, cp.updated_at, cp.version or "", cp.error,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        from ..store import iso

        return {
            "daemon_id": self.daemon_id,
            "status": self.status,
            "alive": self.alive,
            "started_at": None if self.started_at is None else iso(self.started_at),
            "heartbeat_at": None if self.heartbeat_at is None else iso(self.heartbeat_at),
            "workers": self.workers,
            "error": self.error,
        }


def daemons(store: Store) -> list[DaemonInfo]:
    with store.reader() as tx:
        return [DaemonInfo.from_checkpoint(cp) for cp in tx.tracking.checkpoints(DAEMON_PREFIX)]


class Daemon:
    """Runs `workers` until stopped. `poll` is the idle wait between looks at the store
    (default: the store's poll interval; a store that notifies wakes it sooner)."""

    def __init__(
        self,
        store: Store,
        app: App,
        workers: Sequence[Worker],
        *,
        poll: float | None = None,
        lease: float = proj.LEASE_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
        stall: float = STALL_SECONDS,
        stop_within: float = STOP_SECONDS,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self.store, self.app, self.workers = store, app, list(workers)
        self.poll = poll if poll is not None else store.poll_interval
        self.lease, self.heartbeat_every, self.stall = lease, heartbeat, stall
        self.stop_within = stop_within
        self.on_stall = on_stall
        self.id = owner_id("daemon")
        self.peers = 1
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._exit_code = 13
        self._wake = threading.Event()
        self._beat = time.monotonic()  # the loop's last sign of life, for the watchdog
        self._listener: threading.Thread | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.once = False  # set by run(): workers may do their work inline then

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the step in hand (safe from a signal handler or thread)."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextmanager
    def stopping_on_signals(self, exit_code: int = 13) -> Iterator[None]:
        """While inside, SIGINT and SIGTERM stop the loop after the step in hand (main thread
        only). If that step is not over within `stop_within` seconds (a handler that hangs),
        or at a second signal, the process exits at once with `exit_code`, its leases given
        back when the database answers within a second: what the step did is not
        committed, and whoever takes the work over does it again."""
        self._exit_code = exit_code
        with on_stop(self._on_signal, lambda: self._force("a second signal")):
            yield

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._force("a second signal")
            return
        self.stop()
        timer = threading.Timer(
            self.stop_within, self._force, (f"the step in hand ran past {self.stop_within:g}s",)
        )
        timer.daemon = True
        timer.start()

    def _force(self, why: str) -> None:
        if self._stopped.is_set():
            return
        log.error(f"stopping at once ({why}): the work in hand is abandoned, not committed")
        releasing = threading.Thread(target=self._release_all, daemon=True)
        releasing.start()
        releasing.join(1.0)
        sys.stderr.flush()
        os._exit(self._exit_code)

    def _release_all(self) -> None:
        for worker in self.workers:
            try:
                worker.stop()
            except Exception:
                pass
        try:
            self._unregister()
        except Exception:
            pass

    # -- the loop --------------------------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        """Run until `stop()`; with `once`, until every worker has nothing left to do."""
        self.once = once
        self._register()
        for worker in self.workers:
            worker.start(self)
        self._heartbeat()  # the first before any claim, so the work spreads from the start
        beats = threading.Thread(target=self._beating, name="cqrsctl-heartbeat", daemon=True)
        beats.start()
        if not once:
            self._listener = threading.Thread(target=self._listen, name="cqrsctl-listen", daemon=True)
            self._listener.start()
        watchdog = threading.Thread(target=self._watch, name="cqrsctl-watchdog", daemon=True)
        watchdog.start()
        log.info(
            f"daemon {self.id} started: {', '.join(w.name for w in self.workers)}",
            extra={"daemon_id": self.id, "workers": [w.name for w in self.workers]},
        )
        backoff = 0.0
        try:
            while not self._stop.is_set():
                self._beat = time.monotonic()
                try:
                    more = False
                    for worker in self.workers:
                        if self._stop.is_set():
                            break
                        more = worker.tick() or more
                    backoff = 0.0
                except Exception as exc:  # the database went away, most likely: back off, go on
                    self.errors += 1
                    self.last_error = scrub(
                        f"{type(exc).__name__}: {' '.join(str(exc).split())}", self.store.url
                    )[:500]
                    backoff = min(max(backoff * 2, 0.1), 5.0)
                    log.warning(f"error: {self.last_error} (retrying in {backoff:.1f}s)")
                    self._sleep(backoff)
                    continue
                if once and not more and not any(w.busy() for w in self.workers):
                    break
                if not more:
                    self._wait()
        finally:
            self._stop.set()
            for worker in self.workers:
                try:
                    worker.stop()
                except Exception as exc:
                    log.warning(f"{worker.name}: could not release its leases: {exc}")
            try:
                self._unregister()
            except Exception:
                pass
            self._stopped.set()
            log.info(f"daemon {self.id} stopped", extra={"daemon_id": self.id})

    def _wait(self) -> None:
        timeout = self.poll
        for worker in self.workers:
            due = worker.next_due()
            if due is not None:
                timeout = min(timeout, due)
        self._sleep(timeout)
        self._wake.clear()

    def _sleep(self, seconds: float) -> None:
        # In short slices: a signal handler sets the event, but the check must not wait long.
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, 0.25)):
                return

    # -- heartbeats ------------------------------------------------------------------------------

    def _row(self) -> str:
        return DAEMON_PREFIX + self.id

    def _describe(self) -> str:
        parts = []
        for worker in self.workers:
            info = worker.info()
            owned = info.get("owned")
            parts.append(f"{worker.name}" + (f"[{','.join(owned)}]" if owned is not None else ""))
        return " ".join(parts)

    def _register(self) -> None:
        with self.store.transaction() as tx:
            tr = tx.tracking
            tr.put(
                Checkpoint(
                    self._row(),
                    status="running",
                    version=self._describe(),
                    owner=self.id,
                    lease_until=tr.now() + timedelta(seconds=self.lease),
                )  # fmt: skip
            )

    def _beating(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self._heartbeat()
            except Exception as exc:  # the loop logs the database's troubles; keep trying
                self.last_error = f"heartbeat: {type(exc).__name__}: {' '.join(str(exc).split())}"[:500]

    def _heartbeat(self) -> None:
        with self.store.transaction() as tx:
            tr = tx.tracking
            cp = tr.get(self._row(), lock=True) or Checkpoint(self._row(), status="running", owner=self.id)
            done = sum(int(w.info().get("processed", 0)) for w in self.workers)
            cp.position, cp.version, cp.error = done, self._describe(), self.last_error
            cp.lease_until = tr.now() + timedelta(seconds=self.lease)
            cp.status, cp.owner = "running", self.id
            tr.put(cp)
            # A daemon of this host whose process is gone is no peer, whatever its lease says.
            self.peers = max(1, sum(
                1 for d in tr.checkpoints(DAEMON_PREFIX)
                if d.status == "running" and d.lease_valid and not dead_here(d.owner)
            ))  # fmt: skip
        for worker in self.workers:
            worker.heartbeat()

    def _unregister(self) -> None:
        with self.store.transaction() as tx:
            tr = tx.tracking
            cp = tr.get(self._row(), lock=True)
            if cp is not None:
                cp.status, cp.owner, cp.lease_until = "stopped", None, None
                tr.put(cp)

    # -- wake-ups and the watchdog ------------------------------------------------------------------

    def _listen(self) -> None:
        """Wait for the store's wake-ups in a thread of its own; reconnects for ever."""
        delay = 0.1
        with self.store.wakeups() as wakeups:
            while not self._stop.is_set():
                try:
                    if wakeups.wait(0.5):
                        self._wake.set()
                    delay = 0.1
                except Exception as exc:
                    if not self._stop.is_set():
                        reason = scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}", self.store.url)
                        log.warning(f"listener: {reason} (reconnecting)")
                        self._stop.wait(delay)
                        delay = min(delay * 2, 5.0)

    def _watch(self) -> None:
        while not self._stop.wait(min(self.stall / 4, 5.0)):
            idle = time.monotonic() - self._beat
            if idle > self.stall:
                log.error(f"the loop has not turned for {idle:.0f}s: stalled")
                if self.on_stall is not None:
                    self.on_stall()
                self._beat = time.monotonic()


def restart_process() -> None:
    """An `on_stall` for command-line daemons: replace this process with a fresh copy."""
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
