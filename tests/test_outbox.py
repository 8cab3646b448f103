"""The transactional outbox: rows written with dispatch, claims, drain, back-off, faults; both backends."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import rolled_back
from outbox_support import (
    Acct,
    Deposit,
    Deposited,
    Open,
    Receiver,
    app,
    check_order,
    deposit,
    fill,
    read_jsonl,
)
from typer.testing import CliRunner

from cqrsctl.app import App
from cqrsctl.cli import app as cli
from cqrsctl.errors import DomainError
from cqrsctl.services import outbox
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.sinks import open_sink
from cqrsctl.store import Store, open_store
from cqrsctl.store.base import NewMessage
from cqrsctl.times import parse_duration

STRESS = os.environ.get("CQRSCTL_STRESS") == "1"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def pending(store: Store) -> list[Any]:
    return outbox.list_messages(store, "pending", limit=None)


# -- writing ----------------------------------------------------------------------------


def test_dispatch_writes_outbox_rows_with_the_events(store: Store) -> None:
    d = Dispatcher(app, store)
    d.dispatch("Open", {"id": "a1", "owner": "Ada"}, metadata={"correlation_id": "corr-1"})
    d.dispatch("Note", {"id": "a1", "text": "not published"})
    r = d.dispatch("DepositTwice", {"id": "a1", "amount": 5})
    rows = outbox.list_messages(store, limit=None)
    assert [m.payload["event_type"] for m in rows] == ["Opened", "Deposited", "Deposited"]
    events = {e.event_id: e for e in store.read_stream("Acct-a1")}
    for m in rows:
        e = events[m.message_id]  # the message id is the event id
        assert m.status == "pending" and m.attempts == 0
        assert (m.topic, m.key, m.event_position) == ("Acct.events", "Acct-a1", e.global_position)
        p = m.payload
        assert (p["stream_id"], p["stream_version"], p["global_position"]) == (
            "Acct-a1",
            e.stream_version,
            e.global_position,
        )
        assert p["event_id"] == e.event_id and p["data"] == e.data
        assert p["recorded_at"].replace("Z", "+00:00") == e.recorded_at.isoformat()
        assert p["correlation_id"] == e.metadata["correlation_id"]
        assert p["causation_id"] == e.metadata["causation_id"]
    assert rows[0].payload["correlation_id"] == "corr-1"
    assert [m.message_id for m in rows[1:]] == r.event_ids


def test_a_rejected_command_writes_no_outbox_row(store: Store) -> None:
    d = Dispatcher(app, store)
    d.dispatch("Open", {"id": "a1", "owner": "Ada"})

    def boom(tx: Any, *args: Any) -> None:
        raise DomainError("rejected after the append")

    d.after_append.append(boom)
    with pytest.raises(DomainError):
        d.dispatch("Deposit", {"id": "a1", "amount": 1})
    assert len(outbox.list_messages(store, limit=None)) == 1
    assert store.stream_version("Acct-a1") == 1


def test_publish_rules_topic_and_key(store: Store) -> None:
    custom = App("custom")
    custom.command(aggregate=Acct, stream=lambda c: c.id)(Open)
    custom.command(aggregate=Acct, stream=lambda c: c.id)(Deposit)
    custom.publish(Acct)  # everything of the category, defaults
    custom.publish(Deposited, topic=lambda e: f"money.{e.data['amount'] % 2}", key="all")
    d = Dispatcher(custom, store)
    d.dispatch("Open", {"id": "x", "owner": "Bo"})
    d.dispatch("Deposit", {"id": "x", "amount": 3})
    rows = outbox.list_messages(store, limit=None)
    assert [(m.topic, m.key) for m in rows] == [("Acct.events", "Acct-x"), ("money.1", "all")]
    with pytest.raises(Exception, match="not an Event class"):
        custom.publish(42)  # type: ignore[arg-type]


# -- claims -----------------------------------------------------------------------------


def test_claims_are_exclusive_and_keep_order_per_key(store: Store) -> None:
    fill(store, accounts=2, deposits=4)  # a0: 3 messages, a1: 3 messages
    clock = Clock()
    now, until = clock(), clock() + timedelta(seconds=60)
    with store.transaction() as tx:
        first = tx.outbox.claim("A", 2, now, until)
    assert [(m.key, m.payload["stream_version"]) for m in first] == [("Acct-a0", 1), ("Acct-a1", 1)]
    with store.transaction() as tx:
        # a0 and a1 each have an earlier message leased to A: nothing else may go out yet.
        assert tx.outbox.claim("B", 10, now, until) == []
    with store.transaction() as tx:
        tx.outbox.mark_delivered([first[0].seq], now)
        second = tx.outbox.claim("B", 10, now, now + timedelta(hours=1))
    assert [(m.key, m.payload["stream_version"]) for m in second] == [("Acct-a0", 2), ("Acct-a0", 3)]
    # A's lease runs out: its undelivered message goes to whoever claims next.
    clock.advance(61)
    with store.transaction() as tx:
        third = tx.outbox.claim("C", 10, clock(), clock() + timedelta(seconds=60))
    assert [m.seq for m in third][:1] == [first[1].seq]
    assert {m.seq for m in third}.isdisjoint(m.seq for m in second)


def test_a_claim_is_one_lease_and_what_ends_a_lease_takes_its_messages_out(store: Store) -> None:
    fill(store, accounts=4, deposits=0)
    clock = Clock()
    now, until = clock(), clock() + timedelta(seconds=60)
    with store.transaction() as tx:
        a, b, c, d = (m.seq for m in tx.outbox.claim("A", 10, now, until))
    assert store.counts()["outbox_leases"] == 1
    assert outbox.retry(store, str(a), now=now) == 1  # a requeued message is no one's
    with store.transaction() as tx:
        assert tx.outbox.renew("A", [a, b], until + timedelta(seconds=60)) == 1
        assert tx.outbox.release("A", [c], "refused") == 1
        assert tx.outbox.mark_delivered([b, d], now, "A") == 2
    held = {m.seq: (m.claimed_by, m.last_error) for m in pending(store)}
    assert held == {a: (None, None), c: (None, "refused")}
    assert store.counts()["outbox_leases"] == 0
    with store.transaction() as tx:
        assert [m.seq for m in tx.outbox.claim("B", 10, now, until)] == [a, c]
        assert tx.outbox.claimers(now) == ["B"] and tx.outbox.claimers(until + timedelta(seconds=1)) == []


def test_leases_of_a_crashed_run_are_freed(store: Store) -> None:
    fill(store, accounts=1, deposits=0)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    import socket

    dead_owner = f"outbox:{socket.gethostname()}:{proc.pid}:abc"
    now = datetime.now(UTC)
    with store.transaction() as tx:
        assert len(tx.outbox.claim(dead_owner, 10, now, now + timedelta(hours=1))) == 1
    report = outbox.drain(store, open_sink("stdout"), owner="outbox:elsewhere:1:x")
    assert report.delivered == 1


# -- drain ------------------------------------------------------------------------------


def test_drain_to_a_file_delivers_everything_once_in_order(store: Store, tmp_path: Path) -> None:
    total = fill(store, accounts=7, deposits=60)
    path = tmp_path / "out.jsonl"
    report = outbox.drain(store, open_sink(f"file://{path}"), batch=16)
    assert (report.delivered, report.failed, report.exit_code) == (total, 0, 0)
    lines = read_jsonl(path)
    assert len(lines) == total and len({m["message_id"] for m in lines}) == total
    check_order([line["payload"] for line in lines])
    assert all(line["topic"] == "Acct.events" and line["key"] == line["payload"]["key"] for line in lines)
    st = outbox.status(store)
    assert st.counts == {"pending": 0, "delivered": total, "dead": 0} and st.oldest_pending is None
    again = outbox.drain(store, open_sink(f"file://{path}"))
    assert again.delivered == 0 and again.exit_code == 0 and len(read_jsonl(path)) == total


def test_the_file_sink_writes_each_message_as_peek_shows_it(store: Store, tmp_path: Path) -> None:
    """Sent bytes are the payload's JSON as orjson writes it, however the backend keeps it."""
    fill(store, accounts=2, deposits=3)
    odd = {"text": 'ünï 🚀 "q"\n', "amount": 0.1, "big": 2**53 + 1, 7: None, "nested": {"b": [1.5e300, -0.0]}}
    now = datetime.now(UTC)
    with store.transaction() as tx:
        tx.outbox.add([NewMessage("odd-1", None, "t", "k", odd, {"event-type": "Odd"}, now)])
    expected = [orjson.dumps(m) for m in outbox.peek(store, limit=None)]
    path = tmp_path / "out.jsonl"
    report = outbox.drain(store, open_sink(f"file://{path}"), batch=4)
    assert report.delivered == len(expected) == 6
    assert path.read_bytes().splitlines() == expected


def test_drain_bounds_report_work_left(store: Store, tmp_path: Path) -> None:
    total = fill(store, accounts=3, deposits=30)
    sink = open_sink(f"file://{tmp_path / 'o.jsonl'}")
    report = outbox.drain(store, sink, max_messages=10, batch=4)
    assert (report.delivered, report.stopped, report.remaining, report.exit_code) == (
        10,
        "max",
        total - 10,
        13,
    )
    report = outbox.drain(store, sink, stop=lambda: True)
    assert (report.delivered, report.stopped, report.exit_code) == (0, "signal", 13)
    report = outbox.drain(store, sink, timeout=0)
    assert report.stopped == "timeout" and report.exit_code == 13
    assert outbox.drain(store, sink).delivered == total - 10
    assert outbox.status(store).counts["pending"] == 0


def test_backoff_then_dead_then_retry(store: Store) -> None:
    d = Dispatcher(app, store)
    d.dispatch("Open", {"id": "k", "owner": "Ada"})
    d.dispatch("Deposit", {"id": "k", "amount": 1})  # same key: must wait for the first
    clock = Clock()
    fails = 3
    with Receiver(lambda n: 500 if n < fails else 200) as rx:
        sink = open_sink(rx.url)
        policy = outbox.Backoff(base=10, cap=1000)
        run = lambda: outbox.drain(store, sink, max_attempts=3, backoff=policy, clock=clock)  # noqa: E731
        r = run()
        assert (r.delivered, r.failed, r.dead, r.exit_code) == (0, 1, 0, 12)
        assert len(rx.requests) == 1  # the second message of the key was not sent
        first, second = pending(store)
        assert first.attempts == 1 and "HTTP 500" in (first.last_error or "") and second.attempts == 0
        wait = (first.next_attempt_at - clock()).total_seconds()
        assert 5 <= wait <= 10  # base 10 s with equal jitter
        r = run()  # nothing is due yet: a clean, empty run
        assert (r.delivered, r.failed, r.exit_code, len(rx.requests)) == (0, 0, 0, 1)
        clock.advance(wait)
        r = run()
        assert (r.failed, len(rx.requests)) == (1, 2)
        wait = (pending(store)[0].next_attempt_at - clock()).total_seconds()
        assert 10 <= wait <= 20  # doubled
        clock.advance(wait)
        r = run()
        # Dead after 3 attempts; a dead message no longer holds its key back, so the
        # second one goes out in the same run.
        assert (r.dead, r.delivered, r.exit_code) == (1, 1, 12)
        assert [m.status for m in outbox.list_messages(store, limit=None)] == ["dead", "delivered"]
        dead = outbox.list_messages(store, "dead")[0]
        assert dead.attempts == 3 and "HTTP 500" in (dead.last_error or "")
        assert outbox.retry(store, dead=True, now=clock()) == 1
        r = run()
        assert (r.delivered, r.exit_code) == (1, 0)
        assert outbox.status(store).counts == {"pending": 0, "delivered": 2, "dead": 0}


def test_unreachable_sink_keeps_messages_pending_with_the_error(store: Store) -> None:
    fill(store, accounts=1, deposits=1)
    sink = open_sink("amqp://user:s3cret@127.0.0.1:1/%2F?exchange=x", timeout=2)
    report = outbox.drain(store, sink)
    assert report.exit_code == 12 and report.delivered == 0
    assert "amqp://user:***@127.0.0.1:1/" in (report.error or "") and "s3cret" not in (report.error or "")
    rows = pending(store)
    assert len(rows) == 2 and all(m.attempts == 0 and m.claimed_by is None for m in rows)
    assert "unavailable" in (rows[0].last_error or "") and "s3cret" not in (rows[0].last_error or "")


# -- CLI --------------------------------------------------------------------------------


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_cli_status_list_show_retry_purge_drain(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as s:
        total = fill(s, accounts=2, deposits=3)
    db = ["--db", store_url]
    r = run_cli(*db, "--json", "outbox", "status")
    assert r.exit_code == 0, r.output
    assert '"pending":5' in r.stdout and '"due":5' in r.stdout
    r = run_cli(*db, "--json", "outbox", "list", "--status", "pending", "--limit", "2")
    lines = [line for line in r.stdout.splitlines() if line]
    assert r.exit_code == 0 and len(lines) == 2
    import orjson

    mid = orjson.loads(lines[0])["message_id"]
    r = run_cli(*db, "--json", "outbox", "show", mid)
    assert r.exit_code == 0 and orjson.loads(r.stdout)["payload"]["message_id"] == mid
    assert run_cli(*db, "outbox", "show", "nope").exit_code == 6
    assert run_cli(*db, "outbox", "list", "--status", "weird").exit_code == 2
    assert run_cli(*db, "outbox", "drain", "--sink", "gopher://x").exit_code == 2
    path = tmp_path / "o.jsonl"
    r = run_cli(*db, "--json", "outbox", "drain", "--sink", f"file://{path}", "--max", "2")
    assert r.exit_code == 13 and orjson.loads(r.stdout)["delivered"] == 2
    r = run_cli(*db, "outbox", "drain", "--sink", f"file://{path}")
    assert r.exit_code == 0 and "delivered 3" in r.stderr
    assert len(read_jsonl(path)) == total
    assert run_cli(*db, "outbox", "retry", mid).exit_code == 2  # delivered: nothing to retry
    assert run_cli(*db, "outbox", "retry").exit_code == 2
    r = run_cli(*db, "--json", "outbox", "purge", "--delivered", "--older-than", "1h")
    assert r.exit_code == 0 and orjson.loads(r.stdout) == {"purged": 0}
    r = run_cli(*db, "--json", "outbox", "purge", "--delivered", "--older-than", "0s")
    assert orjson.loads(r.stdout) == {"purged": total}
    assert run_cli(*db, "outbox", "purge", "--older-than", "1d").exit_code == 2
    assert run_cli(*db, "outbox", "purge", "--delivered", "--older-than", "soon").exit_code == 2


def test_parse_duration_and_backoff() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90") == timedelta(seconds=90)
    b = outbox.Backoff(base=2, cap=100)
    assert [b.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 10)] == [2, 4, 8, 100]
    assert [b.delay(n, rng=lambda: 0.0) for n in (1, 2, 3, 10)] == [1, 2, 4, 50]


# -- faults and concurrency ----------------------------------------------------------------


def drain_cmd(url: str, sink: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cqrsctl", "-q", "--db", url, "outbox", "drain", "--sink", sink, *extra]


def test_kill_9_mid_drain_loses_nothing_and_duplicates_at_most_a_batch(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    total = fill(store, accounts=25, deposits=(4000 if STRESS else 1000) - 25)
    path = tmp_path / "crash.jsonl"
    batch, kills, target = 5, 0, 60 if STRESS else 20
    rng = random.Random(7)
    deadline = time.monotonic() + 240
    while kills < target and time.monotonic() < deadline:
        # A fast machine may drain everything in fewer runs than kills wanted: keep work queued
        # so that every run is killed mid-drain rather than finishing.
        if outbox.status(store).counts.get("pending", 0) < 300:
            total += deposit(store, accounts=25, count=300)
        before = path.stat().st_size if path.exists() else 0
        proc = subprocess.Popen(drain_cmd(store_url, f"file://{path}", "--batch", str(batch)))
        # Kill once it is delivering (the file grows), at a random moment after that.
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > before:
                break
            time.sleep(0.001)
        time.sleep(rng.random() * 0.01)
        if proc.poll() is not None:
            continue  # it emptied the outbox first; the top-up above gives the next run work
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= target, f"only {kills} kills in the time allowed"
    final = subprocess.run(drain_cmd(store_url, f"file://{path}"), timeout=120)
    assert final.returncode == 0
    lines = read_jsonl(path)
    ids = [line["message_id"] for line in lines]
    assert len(set(ids)) == total  # every message at least once
    duplicates = len(ids) - total
    assert duplicates <= kills * batch, (duplicates, kills)
    check_order([line["payload"] for line in lines])
    assert outbox.status(store).counts == {"pending": 0, "delivered": total, "dead": 0}


def test_parallel_drains_deliver_each_message_once(store: Store, store_url: str, tmp_path: Path) -> None:
    total = fill(store, accounts=40, deposits=(5000 if STRESS else 1000) - 40)
    overlapped = False
    for round_ in range(5):
        # A round where one run still emptied the outbox alone proves nothing about overlap
        # and is repeated.
        if round_:
            total += deposit(store, accounts=40, count=1000)
        paths = [tmp_path / f"round{round_}-run{i}.jsonl" for i in range(4)]
        # Hold the claim lock (PostgreSQL's claim lock, SQLite's write lock) while the drains
        # start, so they queue on it and begin together rather than one after another.
        with rolled_back(store) as tx:
            now = datetime.now(UTC)
            tx.outbox.claim("gate", 1, now, now)
            procs = [subprocess.Popen(drain_cmd(store_url, f"file://{p}", "--batch", "10")) for p in paths]
            time.sleep(3)
        for p in procs:
            assert p.wait(timeout=180) == 0
        runs = [[line["message_id"] for line in read_jsonl(p)] for p in paths]
        for p in paths:  # each run saw each key in order
            last: dict[str, int] = {}
            for pl in (line["payload"] for line in read_jsonl(p)):
                assert pl["stream_version"] > last.get(pl["key"], 0)
                last[pl["key"]] = pl["stream_version"]
        if sum(1 for run in runs if run) >= 2:
            overlapped = True
            break
    delivered = [line["message_id"] for p in tmp_path.glob("round*.jsonl") for line in read_jsonl(p)]
    assert len(delivered) == total and len(set(delivered)) == total  # nobody delivered a message twice
    assert overlapped, "in five rounds the runs never overlapped"


# -- the daemon's relay -----------------------------------------------------------------------


def test_daemon_outbox_worker_drains_once_and_while_running(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    import threading

    from cqrsctl.services.daemon import Daemon
    from cqrsctl.services.workers import OutboxWorker

    total = fill(store, accounts=3, deposits=10)
    path = tmp_path / "d.jsonl"
    worker = OutboxWorker(f"file://{path}", batch=4, poll=0.05)
    Daemon(store, app, [worker], poll=0.05).run(once=True)
    assert len(read_jsonl(path)) == total and worker.info()["delivered"] == total
    assert not worker.sink.is_open  # closed when the daemon stopped

    # The daemon gets its own store (connection), as it would in its own process.
    daemon_store = open_store(store_url)
    runner = Daemon(daemon_store, app, [worker], poll=0.05)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        Dispatcher(app, store).dispatch("Deposit", {"id": "a0", "amount": 99})
        deadline = time.monotonic() + 20
        while len(read_jsonl(path)) < total + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(read_jsonl(path)) == total + 1
    finally:
        runner.stop()
        thread.join(10)
        daemon_store.close()
    assert not thread.is_alive()
    check_order([line["payload"] for line in read_jsonl(path)])


def test_daemon_cli_drains_the_outbox(store: Store, store_url: str, tmp_path: Path) -> None:
    total = fill(store, accounts=2, deposits=5)
    path = tmp_path / "daemon.jsonl"
    app_ref = f"{Path(__file__).parent / 'outbox_support.py'}:app"
    cmd = [sys.executable, "-m", "cqrsctl", "--db", store_url, "--app", app_ref, "daemon", "--once"]
    proc = subprocess.run([*cmd, "--outbox-sink", f"file://{path}"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(path)) == total
    bad = subprocess.run([*cmd, "--outbox-sink", "gopher://x"], capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"unsupported sink" in bad.stderr
