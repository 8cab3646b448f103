"""The outbox relay as a daemon worker: `drain` in small bounded steps, one sink connection.

`OutboxWorker(sink_url)` goes into `Daemon(workers=[...])`. Each tick drains at most one
batch, so projections and sagas in the same daemon keep turning; after the sink fails
the worker waits (doubling up to a minute) before it tries again. Cron drains and
daemons can run side by side: claims keep them off each other's messages.
"""

from __future__ import annotations

import time
from typing import Any

from ..sinks import Sink, open_sink
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

    def start(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def tick(self) -> bool:
        assert self.daemon is not None
        if time.monotonic() < self.resume_at:
            return False
        daemon = self.daemon
        report = outbox.drain(
            daemon.store,
            self.sink,
            max_messages=self.batch,
            batch=self.batch,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            lease=self.lease,
            stop=lambda: daemon.stopping,
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
        return report.delivered >= self.batch

    def next_due(self) -> float | None:
        # Back-offs come due without any append to wake the daemon.
        return max(self.poll, self.resume_at - time.monotonic())

    def stop(self) -> None:
        if self.sink.is_open:
            self.sink.close()
            self.sink.is_open = False

    def info(self) -> dict[str, Any]:
        return {
            "sink": self.sink.name,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "last_error": self.last_error,
        }
