"""Prometheus metrics for a running daemon (`cqrsctl daemon --metrics HOST:PORT`).

Every scrape takes one cheap look at the store (see monitor.py) through its own
connection, plus the counters of this daemon's workers. The names are documented in
docs/projections.md ("Metrics"); keep the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import UsageError
from ..store import Store
from .monitor import look

PROJECTION_STATES = ("idle", "running", "rebuilding", "failed", "stale-version")


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9108`, `[::1]:9108` or `:9108` (loopback) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics takes HOST:PORT, e.g. 127.0.0.1:9108, not {text!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class StoreCollector(Collector):
    """Collects on every scrape. `open_store` gives a fresh store for the scraping thread
    (a SQLite connection belongs to the thread that opened it)."""

    def __init__(
        self, open_store: Callable[[], Store], app: Any, workers: Callable[[], Sequence[Any]]
    ) -> None:
        self.open_store, self.app, self.workers = open_store, app, workers

    def collect(self) -> Iterator[Metric]:
        store = self.open_store()
        try:
            seen = look(store, self.app)
        finally:
            store.close()
        yield GaugeMetricFamily(
            "cqrsctl_events_head_position", "Global position of the newest event.", value=seen.head
        )
        position = GaugeMetricFamily(
            "cqrsctl_projection_position",
            "Global position a projection has processed up to.",
            labels=["projection"],
        )
        lag = GaugeMetricFamily(
            "cqrsctl_projection_lag_events", "Events a projection is behind the head.", labels=["projection"]
        )
        lag_s = GaugeMetricFamily(
            "cqrsctl_projection_lag_seconds", "Age of the oldest event a projection has not processed.",
            labels=["projection"],
        )  # fmt: skip
        state = GaugeMetricFamily(
            "cqrsctl_projection_state", "1 for the state a projection is in.", labels=["projection", "state"]
        )
        for p in seen.projections:
            position.add_metric([p["name"]], p["position"])
            lag.add_metric([p["name"]], p["lag_events"])
            if p["lag_seconds"] is not None:
                lag_s.add_metric([p["name"]], p["lag_seconds"])
            for st in PROJECTION_STATES:
                state.add_metric([p["name"], st], 1.0 if p["state"] == st else 0.0)
        yield from (position, lag, lag_s, state)
        outbox = GaugeMetricFamily(
            "cqrsctl_outbox_messages",
            "Outbox messages waiting (pending) or given up on (dead).",
            labels=["status"],
        )
        outbox.add_metric(["pending"], seen.outbox["pending"])
        outbox.add_metric(["dead"], seen.outbox["dead"])
        yield outbox
        yield GaugeMetricFamily(
            "cqrsctl_outbox_due_messages", "Pending messages due now.", value=seen.outbox["due"]
        )
        yield GaugeMetricFamily(
            "cqrsctl_outbox_oldest_pending_age_seconds", "Age of the oldest pending message (0 when none).",
            value=seen.outbox["oldest_pending_age_seconds"] or 0.0,
        )  # fmt: skip
        sagas = GaugeMetricFamily("cqrsctl_sagas", "Saga instances by status.", labels=["status"])
        for status, n in sorted(seen.sagas.items()):
            sagas.add_metric([status], n)
        yield sagas
        beat = GaugeMetricFamily(
            "cqrsctl_daemon_heartbeat_age_seconds", "Seconds since each running daemon's last heartbeat.",
            labels=["daemon"],
        )  # fmt: skip
        for d in seen.daemons:
            if d["heartbeat_age_seconds"] is not None:
                beat.add_metric([d["daemon_id"]], d["heartbeat_age_seconds"])
        yield beat
        yield from self._counters()

    def _counters(self) -> Iterator[Metric]:
        processed = CounterMetricFamily(
            "cqrsctl_daemon_events_processed", "Events this daemon's workers processed since it started.",
            labels=["worker"],
        )  # fmt: skip
        delivered = CounterMetricFamily(
            "cqrsctl_outbox_delivered", "Messages this daemon delivered to its sink."
        )
        failures = CounterMetricFamily(
            "cqrsctl_outbox_failures",
            "Failed delivery attempts of this daemon (dead: given up).",
            labels=["kind"],
        )
        total = {"delivered": 0, "failed": 0, "dead": 0}
        stopped = 0
        for worker in self.workers():
            info = worker.info()
            if worker.name == "outbox":
                for key in total:
                    total[key] += int(info.get(key, 0))
            else:
                processed.add_metric([worker.name], int(info.get("processed", 0)))
                stopped += len(info.get("failed", ()))
        delivered.add_metric([], total["delivered"])
        failures.add_metric(["failed"], total["failed"])
        failures.add_metric(["dead"], total["dead"])
        failed_projections = GaugeMetricFamily(
            "cqrsctl_daemon_failed_projections", "Projections this daemon stopped because their handler failed.",
            value=stopped,
        )  # fmt: skip
        yield from (processed, delivered, failures, failed_projections)


def serve(address: str, collector: StoreCollector) -> Callable[[], None]:
    """Serve /metrics on `address` in a background thread; returns the function that stops it."""
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
