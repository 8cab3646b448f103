"""The daemon on both backends: following appends, clean stops, heartbeats, gap safety
under concurrent writers, kill -9 at random moments (daemon and rebuild), and on
PostgreSQL several daemons at once and dropped connections."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import command, subprocess_env
from projection_support import (
    TRACED,
    app,
    append_random,
    checkpoint_and_totals,
    oracle_totals,
    table_totals,
)

from cqrsctl.services import projections as P
from cqrsctl.services.daemon import Daemon, daemons
from cqrsctl.services.workers import ProjectionWorker
from cqrsctl.store import NewEvent, Store, open_store

SUPPORT = str(Path(__file__).with_name("projection_support.py"))
STRESS = os.environ.get("CQRSCTL_STRESS") == "1"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def start_daemon(url: str, *args: str, app_ref: str = SUPPORT + ":app", env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        command("--db", url, "--app", app_ref, "daemon", "--poll-interval", "0.05", *args),
        stdout=subprocess.DEVNULL,
        stderr=out,
        env=subprocess_env(env),
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def caught_up(store: Store) -> bool:
    return table_totals(store) == oracle_totals(store)


# -- one daemon -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_follows_appends_and_stops_cleanly(
    store: Store, store_url: str, tmp_path: Path, sig: int
) -> None:
    append_random(store, 200, seed=1)
    log = tmp_path / "daemon.log"
    proc = start_daemon(store_url, log=log)
    try:
        wait_for(lambda: caught_up(store), 30, "the first catch-up")
        for seed in range(3):
            append_random(store, 50, seed=10 + seed, batch=5)
            wait_for(lambda: caught_up(store), 10, "new events to show")
        beats = wait_for(
            lambda: [d for d in daemons(store) if d.alive and "totals" in d.workers], 5, "a heartbeat"
        )
        assert len(beats) == 1 and len(daemons(store)) == 1
        status = {s.name: s for s in P.status(store, app)}
        assert status["totals"].state == "running" and status["totals"].owner == beats[0].daemon_id
        started = time.monotonic()
        assert stop(proc, sig) == 0
        assert time.monotonic() - started < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "started" in text and "stopped" in text and "Traceback" not in text
    # Stopped cleanly: leases given back, heartbeat says so, nothing half-done.
    assert [d.status for d in daemons(store)] == ["stopped"]
    assert {s.name: s.state for s in P.status(store, app)} == {"counts": "idle", "totals": "idle"}
    position, rows = checkpoint_and_totals(store)
    assert position == store.head() and rows == oracle_totals(store)


def test_daemon_once_in_process(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    append_random(store, 300, seed=2)
    # Straight onto the library's logger: a command line run earlier in this process may
    # have stopped it from propagating to the root, where caplog listens.
    logger = logging.getLogger("cqrsctl")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="cqrsctl"):
            Daemon(store, app, [ProjectionWorker()]).run(once=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert caught_up(store)
    assert any("stopped" in r.getMessage() for r in caplog.records)
    assert [d.status for d in daemons(store)] == ["stopped"]


def test_daemon_stop_from_another_thread(store: Store, store_url: str) -> None:
    own = open_store(store_url)  # a store (a SQLite connection) is used by one thread at a time
    daemon = Daemon(own, app, [ProjectionWorker()], poll=0.05)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        append_random(store, 100, seed=3)
        wait_for(lambda: caught_up(store), 10, "catch-up")
    finally:
        started = time.monotonic()
        daemon.stop()
        thread.join(5)
        own.close()
    assert not thread.is_alive() and time.monotonic() - started < 2


def test_poison_event_in_the_daemon_fails_one_projection(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    append_random(store, 20, seed=4)
    bad = store.append("S-1", [NewEvent("Added", {"n": 1, "poison": True})]).positions[0]
    append_random(store, 20, seed=5)
    proc = start_daemon(
        store_url, "--retry-delay", "0.01", "--retries", "2", env={"CQRSCTL_TEST_POISON_FLAG": str(flag)}
    )
    try:
        failed = wait_for(
            lambda: [s for s in P.status(store, app) if s.state == "failed"], 20, "the projection to fail"
        )
        assert [s.name for s in failed] == ["totals"] and failed[0].error_position == bad
        wait_for(lambda: {s.name: s.lag_events for s in P.status(store, app)}["counts"] == 0, 10, "counts")
        flag.unlink()
        P.retry(store, app, "totals")
        wait_for(lambda: caught_up(store), 10, "the retried projection")
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- gap safety ------------------------------------------------------------------------------------------

_WRITER = """
import random, sys
from cqrsctl.store import NewEvent, open_store
url, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open_store(url) as store:
    for i in range(count):
        stream = f"S-{rng.randrange(8)}"
        store.append(stream, [NewEvent("Added", {"n": 1}) for _ in range(rng.randrange(1, 4))])
"""


def test_gap_safety_with_concurrent_writers(store: Store, store_url: str) -> None:
    writers, per_writer = (12, 400) if STRESS else (6, 80)
    proc = start_daemon(store_url, "--projections", "counts,totals")
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, store_url, str(i), str(per_writer)], env=subprocess_env()
            )
            for i in range(writers)
        ]
        for p in procs:
            assert p.wait(120) == 0
        total = sum(1 for _ in store.iter_all())

        def counted() -> bool:
            with store.reader() as tx:
                rows = (
                    tx.read_models.execute("SELECT n FROM counts")
                    if tx.read_models.table_exists("counts")
                    else []
                )
            return sum(r["n"] for r in rows) == total

        wait_for(counted, 30, "the projection to count every event")
        wait_for(lambda: caught_up(store), 10, "totals")
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- kill -9 at random moments ---------------------------------------------------------------------------


def test_kill_dash_nine_of_daemon_and_rebuild(store: Store, store_url: str) -> None:
    rounds = 30 if STRESS else 6  # per kind: 2 x 6 kills per backend, 24 in a run on both backends
    rng = random.Random(42)
    append_random(store, 15_000, seed=6, batch=500)
    kills = 0
    for i in range(rounds * 2):
        append_random(store, 1500, seed=100 + i, batch=100)
        if i % 2 == 0:
            args = ["daemon", "--poll-interval", "0.05"]
        else:
            args = ["projections", "rebuild", "totals", "--batch", "500"]
        proc = subprocess.Popen(
            command("--db", store_url, "--app", SUPPORT + ":app", *args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=subprocess_env(),
        )
        time.sleep(rng.uniform(0.3, 1.5))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        # Whatever moment it died at, the checkpoint and the table are a consistent pair.
        position, rows = checkpoint_and_totals(store)
        assert rows == oracle_totals(store, position), (
            f"round {i}: table differs from events up to {position}"
        )
    assert kills >= rounds  # most rounds must really have died mid-work
    # Restarted: a rerun rebuild resumes or starts afresh, and then equals the events.
    done = subprocess.run(
        command("--db", store_url, "--app", SUPPORT + ":app", "projections", "rebuild", "totals"),
        capture_output=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert caught_up(store)
    P.check_catch_up(P.catch_up(store, app))
    assert table_totals(store) == oracle_totals(store)
    with store.reader() as tx:
        assert not tx.read_models.table_exists("totals__rebuild")


# -- PostgreSQL: several daemons, dropped connections ---------------------------------------------------


def _owners(store: Store) -> dict[str, str | None]:
    with store.reader() as tx:
        return {
            cp.name: (cp.owner if cp.lease_valid else None)
            for cp in tx.tracking.checkpoints()
            if cp.name in TRACED
        }


def _check_trace(path: Path, killed: int) -> dict[str, set[int]]:
    """Per projection, handler entries and exits strictly alternate, each exit by the
    process that entered: no two daemons ever ran one projection's handler at once.
    Only the process killed with -9 may have entered without leaving (its transaction
    died with it)."""
    inside: dict[str, str | None] = defaultdict(lambda: None)
    pids: dict[str, set[int]] = defaultdict(set)
    for line in path.read_text().splitlines():
        kind, name, pid, _ = line.split()
        if kind == "enter":
            if inside[name] == str(killed):
                inside[name] = None
            assert inside[name] is None, f"{name}: {pid} entered while {inside[name]} was inside"
            inside[name] = pid
        else:
            assert inside[name] == pid, f"{name}: exit by {pid} while {inside[name]} was inside"
            inside[name] = None
        pids[name].add(int(pid))
    return pids


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_three_daemons_share_work_exclusively_and_take_over(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    env = {"CQRSCTL_TEST_TRACE": str(trace)}
    traced_ref = SUPPORT + ":traced_app"
    logs = [tmp_path / f"d{i}.log" for i in range(3)]
    procs = [start_daemon(store_url, app_ref=traced_ref, env=env, log=logs[i]) for i in range(3)]
    stop_writing = threading.Event()

    def writer() -> None:
        with open_store(store_url) as w:
            i = 0
            while not stop_writing.is_set():
                w.append(f"S-{i % 10}", [NewEvent("Added", {"n": 1})])
                i += 1
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:

        def spread() -> dict[str, str | None] | None:
            o = _owners(store)
            return o if len(o) == 4 and None not in o.values() and len(set(o.values())) == 3 else None

        owners = wait_for(spread, 40, "the work to spread over three daemons")
        pid_of = {d.daemon_id: int(d.daemon_id.split(":")[2]) for d in daemons(store) if d.alive}
        victim_id = owners["traced_0"]
        assert victim_id is not None
        victim = next(p for p in procs if p.pid == pid_of[victim_id])
        time.sleep(0.5)
        victim.kill()
        killed_at = time.monotonic()
        victim.wait()
        orphaned = [n for n, o in owners.items() if o == victim_id]
        wait_for(lambda: all(_owners(store).get(n) not in (None, victim_id) for n in orphaned), 10,
                 "the survivors to take over")  # fmt: skip
        takeover = time.monotonic() - killed_at
        assert takeover < 10
    finally:
        stop_writing.set()
        thread.join()

    def all_counted() -> bool:
        with store.reader() as tx:
            head = tx.tracking.head()
            return all((cp.position >= head) for cp in tx.tracking.checkpoints() if cp.name in TRACED)

    try:
        wait_for(all_counted, 20, "every projection to catch up")
        for p in procs:
            if p is not victim:
                assert stop(p) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    pids = _check_trace(trace, victim.pid)
    assert any(len(v) > 1 for v in pids.values())  # a projection really changed hands
    expected = defaultdict(int)
    for e in store.iter_all():
        expected[e.stream_id] += 1
    with store.reader() as tx:
        for name in TRACED:
            rows = tx.read_models.execute(f"SELECT stream, events FROM {name}")
            assert {r["stream"]: r["events"] for r in rows} == expected, (
                f"{name} counted an event twice or never"
            )
    print(f"takeover after kill -9: {takeover:.1f}s")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_daemon_survives_dropped_connections(
    store: Store, store_url: str, pg_dsn: str, tmp_path: Path
) -> None:
    tag = f"t_{uuid.uuid4().hex[:12]}"
    url = store_url + f"&application_name={tag}"
    log = tmp_path / "daemon.log"
    proc = start_daemon(url, log=log)
    try:
        append_random(store, 100, seed=7)
        wait_for(lambda: caught_up(store), 20, "the first catch-up")
        for round_ in range(3):
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                    (tag,),
                ).fetchone()
            assert killed and killed[0] >= 1
            append_random(store, 50, seed=20 + round_, batch=5)
            wait_for(lambda: caught_up(store), 20, f"catch-up after dropped connections (round {round_})")
        assert proc.poll() is None
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "reconnecting" in text or "error" in text
