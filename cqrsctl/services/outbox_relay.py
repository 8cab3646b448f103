"""The outbox relay as a daemon worker: `drain` on a thread of its own, one sink connection.

`OutboxWorker(sink_url)` goes into `Daemon(workers=[...])`. A running daemon drains on
the worker's own thread and store connection, so a slow or stuck sink never holds up the
daemon's loop (its projections and sagas keep turning); `daemon --once` drains inline, one
batch per tick. After the sink fails the worker waits (doubling up to a minute) before it
tries again. Cron drains and daemons can run side by side: claims keep them off each
other's messages.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..sinks import Sink, open_sink
from ..store import Store, open_store
from . import outbox
from .daemon import Daemon, Worker
from .owners import owner_id


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
            daemon.log(f"outbox: message {e['message_id']} attempt {e['attempts']}: {e['error']}")
        if report.error:
            self.last_error = report.error
            self.pause = min(max(self.pause * 2, 1.0), 60.0)
            self.resume_at = time.monotonic() + self.pause
            daemon.log(f"outbox: {report.error} (next try in {self.pause:.0f}s)")
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
                self.daemon.log(f"outbox: {self.last_error} (next try in {self.pause:.0f}s)")
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
                if self.daemon is not None:
                    self.daemon.log("outbox: the relay did not stop in time; its claims expire or are freed")
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
