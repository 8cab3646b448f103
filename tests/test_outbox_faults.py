"""Slow and stuck sinks, lost leases, dead runs, drain counters; both backends.

Each test waits for conditions with deadlines; the bounds asserted (a drain stopping
within the send timeout plus a few seconds) have generous margins for a loaded machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from outbox_support import Receiver, app, check_order, deposit, fill

from cqrsctl.errors import UsageError
from cqrsctl.services import outbox
from cqrsctl.services.daemon import Daemon, Worker
from cqrsctl.services.workers import OutboxWorker
from cqrsctl.sinks import Sink, open_sink
from cqrsctl.store import Store
from cqrsctl.store.base import OutboxMessage


class Trickler:
    """An HTTP endpoint that answers a status line, then one header line every `every`
    seconds, and never finishes: each read gets bytes, so per-read timeouts never fire."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/events"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                n = 0
                while not self.stop.wait(self.every):
                    conn.sendall(f"X-Trickle-{n}: still coming\r\n".encode())
                    n += 1
            except OSError:
                return

    def __enter__(self) -> Trickler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def drain_cmd(url: str, sink: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cqrsctl", "-q", "--db", url, "outbox", "drain", "--sink", sink, *extra]


def claimed(store: Store) -> list[OutboxMessage]:
    return [m for m in outbox.list_messages(store, "pending", limit=None) if m.claimed_by]


# -- a stuck sink: every call has a hard deadline; SIGTERM stops the drain ---------------------


def test_a_trickling_http_answer_is_cut_at_the_send_timeout(store: Store, store_url: str) -> None:
    fill(store, accounts=1, deposits=2)
    with Trickler() as peer:
        began = time.monotonic()
        run = subprocess.run(
            drain_cmd(store_url, peer.url, "--max", "1", "--send-timeout", "2", "--timeout", "5"),
            capture_output=True,
            timeout=60,
        )
        took = time.monotonic() - began
    assert run.returncode == 12, run.stderr  # a failed attempt, retried later
    assert took < 2 + 10, took  # the send timeout, plus process start-up with a wide margin
    first = outbox.list_messages(store, "pending", limit=1)[0]
    assert first.attempts == 1 and "no complete answer" in (first.last_error or "")
    assert claimed(store) == []  # nothing left leased


def test_sigterm_stops_a_drain_stuck_in_a_send_and_a_second_signal_at_once(
    store: Store, store_url: str
) -> None:
    fill(store, accounts=3, deposits=20)
    with Trickler() as peer:
        # First signal: the send in flight runs to its deadline (3 s), the rest is handed back.
        proc = subprocess.Popen(drain_cmd(store_url, peer.url, "--send-timeout", "3"), stderr=subprocess.PIPE)
        wait_for(lambda: peer.requests >= 1, 60, "the first request")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopped_after = time.monotonic() - signalled
        assert code == 12, proc.stderr.read() if proc.stderr else b""  # the cut send is a failed attempt
        assert stopped_after <= 3 + 5, stopped_after  # the documented bound: send timeout + 5 s
        assert claimed(store) == []

        # Second signal: no waiting for the send (whose timeout is now 60 s).
        seen = peer.requests
        proc = subprocess.Popen(
            drain_cmd(store_url, peer.url, "--send-timeout", "60"), stderr=subprocess.PIPE
        )
        wait_for(lambda: peer.requests > seen, 60, "a request of the second run")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert time.monotonic() - signalled < 10
        assert code == 130
    assert claimed(store) == []  # the abort still handed its claims back


class Hanging(Sink):
    """A client library that ignores every deadline: its send never returns."""

    def __init__(self) -> None:
        super().__init__("test://hanging", timeout=1)
        self.release = threading.Event()

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        self.release.wait()
        return [None] * len(messages)


def test_a_sink_call_that_ignores_its_deadline_is_abandoned(store: Store) -> None:
    fill(store, accounts=2, deposits=3)
    sink = Hanging()
    began = time.monotonic()
    report = outbox.drain(store, sink)
    took = time.monotonic() - began
    sink.release.set()
    assert took < 1 + outbox.GRACE_SECONDS + 5, took
    assert report.exit_code == 12 and "did not return within" in (report.error or "")
    assert report.delivered == 0 and claimed(store) == []
    first = outbox.list_messages(store, "pending", limit=1)[0]
    assert first.attempts == 0 and "did not return" in (first.last_error or "")  # not the message's fault


class Ticks(Worker):
    """Stands for the daemon's projections and sagas: counts the loop's turns."""

    name = "ticks"

    def __init__(self) -> None:
        self.count = 0

    def tick(self) -> bool:
        self.count += 1
        return False


def test_a_stuck_sink_does_not_freeze_the_daemon_loop(store: Store, store_url: str) -> None:
    fill(store, accounts=2, deposits=10)
    with Trickler() as peer:
        ticks = Ticks()
        relay = OutboxWorker(open_sink(peer.url, timeout=3), poll=0.05)
        daemon = Daemon(store, app, [relay, ticks], poll=0.05)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: peer.requests >= 1, 30, "the relay's first request")
            during = ticks.count
            wait_for(lambda: ticks.count >= during + 10, 5, "the loop to turn while the sink is stuck")
        finally:
            signalled = time.monotonic()
            daemon.stop()
            thread.join(30)
        assert not thread.is_alive()
        assert time.monotonic() - signalled <= 3 + 5
    assert claimed(store) == []


# -- leases: never send on one that may have run out; fencing of the delivery record ----------


def test_a_slow_receiver_never_gets_a_message_twice_from_overlapping_drains(
    store: Store, store_url: str
) -> None:
    # Each request takes 0.2 s; a lease of 2 s covers 10 of them. Renewed only between
    # chunks of 20, a second drain started at 2.5 s would take over messages still being sent.
    total = fill(store, accounts=24, deposits=0)
    with Receiver(lambda n: (time.sleep(0.2), 200)[1]) as rx:
        cmd = drain_cmd(store_url, rx.url, "--lease", "2s", "--batch", "20")
        first = subprocess.Popen(cmd)
        wait_for(lambda: len(rx.requests) >= 1, 60, "the first drain's first request")
        time.sleep(2.5)
        second = subprocess.Popen(cmd)
        assert first.wait(timeout=120) == 0
        assert second.wait(timeout=120) == 0
        ids = [p["message_id"] for p in rx.payloads()]
    assert len(ids) == total and len(set(ids)) == total  # every message, none twice
    check_order(rx.payloads())


class PausingSink(Sink):
    """Delivers one message at a time; on the first it stands for a run paused past its
    lease: the clock jumps beyond the lease and another run claims what this one held."""

    batch_size = 1

    def __init__(self, store: Store, clock: Any, lease: float) -> None:
        super().__init__("test://pausing")
        self.store, self.clock, self.lease = store, clock, lease
        self.sent: list[str] = []

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        self.sent += [m.message_id for m in messages]
        if len(self.sent) == 1:
            self.clock.now += timedelta(seconds=self.lease + 1)
            now = self.clock.now
            with self.store.transaction() as tx:
                tx.outbox.claim("outbox:elsewhere:1:other", 100, now, now + timedelta(seconds=60))
        return [None] * len(messages)


def test_a_run_that_lost_its_lease_sends_nothing_more_and_says_why(store: Store) -> None:
    fill(store, accounts=1, deposits=4)

    class Clock:
        now = datetime(2030, 1, 1, tzinfo=UTC)

        def __call__(self) -> datetime:
            return self.now

    clock = Clock()
    sink = PausingSink(store, clock, lease=30)
    report = outbox.drain(store, sink, lease=30, clock=clock, owner="outbox:here:1:mine")
    assert len(sink.sent) == 1  # nothing sent after the lease ran out
    assert report.exit_code == 12 and report.error is not None
    assert "lost the lease" in report.error and "paused" in report.error
    # Fencing: the first message's delivery belongs to its new holder, which sends it again.
    held = claimed(store)
    assert len(held) == 5 and {m.claimed_by for m in held} == {"outbox:elsewhere:1:other"}


def test_a_delivery_record_is_fenced_by_the_lease_holder(store: Store) -> None:
    fill(store, accounts=1, deposits=0)
    now = datetime.now(UTC)
    with store.transaction() as tx:
        (m,) = tx.outbox.claim("A", 10, now, now + timedelta(seconds=1))
    later = now + timedelta(seconds=5)
    with store.transaction() as tx:
        assert [x.seq for x in tx.outbox.claim("B", 10, later, later + timedelta(seconds=60))] == [m.seq]
        assert tx.outbox.mark_delivered([m.seq], later, "A") == 0  # A's lease ran out: its record is refused
        assert tx.outbox.mark_delivered([m.seq], later, "B") == 1
    assert outbox.status(store).counts["delivered"] == 1


# -- a killed drain's claims are freed whenever a dead same-host owner is seen -----------------


def test_claims_of_a_dead_run_are_freed_even_when_the_claim_comes_back_full(
    store: Store, tmp_path: Path
) -> None:
    fill(store, accounts=30, deposits=30)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = f"outbox:{socket.gethostname()}:{proc.pid}:dead"
    now = datetime.now(UTC)
    with store.transaction() as tx:
        assert len(tx.outbox.claim(dead, 5, now, now + timedelta(hours=1))) == 5
    # Other keys fill a whole batch; before, the dead run's keys waited out its lease.
    report = outbox.drain(store, open_sink(f"file://{tmp_path / 'o.jsonl'}"), max_messages=10, batch=10)
    assert report.delivered == 10
    assert [m for m in claimed(store) if m.claimed_by == dead] == []


def test_a_killed_drain_does_not_hold_its_keys_for_the_lease(store: Store, store_url: str) -> None:
    fill(store, accounts=5, deposits=15)
    with Receiver(lambda n: (time.sleep(0.1), 200)[1]) as rx:
        victim = subprocess.Popen(drain_cmd(store_url, rx.url, "--lease", "300s", "--batch", "50"))
        wait_for(lambda: len(rx.requests) >= 2, 60, "the first drain to be sending")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        held = claimed(store)
        assert held and all(str(victim.pid) in (m.claimed_by or "") for m in held)
        began = time.monotonic()
        after = subprocess.run(drain_cmd(store_url, rx.url, "--lease", "300s"), timeout=120)
        assert after.returncode == 0
        assert time.monotonic() - began < 60  # far inside the dead run's 300 s lease
    assert outbox.status(store).counts["pending"] == 0
    check_order(rx.payloads())


# -- counters -----------------------------------------------------------------------------------


def test_max_bounds_deliveries_and_remaining_counts_what_is_still_due(store: Store) -> None:
    total = fill(store, accounts=6, deposits=54)
    with Receiver() as rx:
        report = outbox.drain(store, open_sink(rx.url), max_messages=50, batch=100)
        assert (report.delivered, report.stopped, report.remaining, report.exit_code) == (
            50,
            "max",
            total - 50,
            13,
        )
        assert report.released == 0 and len(rx.requests) == 50  # it claimed no more than it may deliver
    # A refused message does not count towards --max.
    with Receiver(lambda n: 500 if n == 0 else 200) as rx:
        report = outbox.drain(store, open_sink(rx.url), max_messages=5, batch=3)
        assert (report.delivered, report.failed, report.stopped) == (5, 1, "max")
    # Not stopped, yet messages still due: another run holds them. `remaining` says so.
    deposit(store, accounts=6, count=30)
    now = datetime.now(UTC)
    with store.transaction() as tx:
        held = len(tx.outbox.claim(f"outbox:elsewhere:{os.getpid()}:live", 3, now, now + timedelta(hours=1)))
    with Receiver() as rx:
        report = outbox.drain(store, open_sink(rx.url))
    assert report.stopped is None and report.exit_code == 0 and report.delivered > 0
    assert report.remaining >= held and report.remaining == outbox.status(store).due


# -- HTTP: requests for different keys at once ------------------------------------------------


def test_http_concurrency_sends_different_keys_at_once_and_keeps_order(store: Store) -> None:
    total = fill(store, accounts=4, deposits=20)
    busy = peak = 0
    lock = threading.Lock()

    def answer(n: int) -> int:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        time.sleep(0.05)
        with lock:
            busy -= 1
        return 500 if n == 5 else 200  # one refusal: its key's later messages must wait

    with Receiver(answer) as rx:
        report = outbox.drain(store, open_sink(rx.url + "?concurrency=4"), backoff=outbox.Backoff(0.01, 0.01))
        assert (report.failed, report.exit_code) == (1, 12)
        time.sleep(0.05)  # past the back-off
        again = outbox.drain(store, open_sink(rx.url + "?concurrency=4"))
        assert report.delivered + again.delivered == total and again.exit_code == 0
        payloads = rx.payloads()
    assert peak > 1  # requests overlapped
    assert len({p["message_id"] for p in payloads}) == total
    check_order(payloads)  # the refused message's key waited for it
    with pytest.raises(UsageError):
        open_sink(rx.url + "?concurrency=0")
