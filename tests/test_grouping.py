"""Group commit: `dispatch --file` / `dispatch -` and `append --file --group` commit many
commands per transaction, each in a savepoint. A failing command rolls back alone, command
ids stay idempotent across groups, outbox rows and snapshots mean what they meant, results
come only once committed, a crash leaves whole commands, and `--group 1` is one transaction
per command."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import drop_schema, with_schema
from grouping_app import app
from helpers import ROOT, all_events, assert_error, cli, command, jsonl, subprocess_env

from cqrsctl.services.dispatch import BatchItem, Dispatcher
from cqrsctl.store import NewEvent, Store, open_store

APP = str(ROOT / "tests" / "grouping_app.py")


def item(
    line: int, name: str, id: str, amount: int | None = None, command_id: str | None = None
) -> BatchItem:
    data: dict[str, Any] = {"id": id, "owner": "o"} if amount is None else {"id": id, "amount": amount}
    return BatchItem(line, name, data, command_id)


def batch_with_a_refused_deposit() -> list[BatchItem]:
    return [
        item(1, "Open", "A"),
        item(2, "Deposit", "A", 5),
        item(3, "Deposit", "A", -1),  # refused by the aggregate (exit 5)
        item(4, "Deposit", "A", 7),
        item(5, "Open", "B"),
    ]


def outbox_count(store: Store) -> int:
    with store.reader() as tx:
        return len(tx.outbox.select(limit=1000))


def test_a_failing_command_in_a_group_rolls_back_alone(store: Store) -> None:
    report = Dispatcher(app, store).dispatch_many(batch_with_a_refused_deposit(), continue_on_error=True)
    assert (report.dispatched, [(f.line, f.exit_code) for f in report.failures]) == (4, [(3, 5)])
    events = store.read_all(0, 100)
    assert [(e.stream_id, e.event_type) for e in events] == [
        ("Acct-A", "Opened"), ("Acct-A", "Counted"), ("Acct-A", "Deposited"), ("Acct-A", "Counted"),
        ("Acct-A", "Deposited"), ("Acct-A", "Counted"), ("Acct-B", "Opened"), ("Acct-B", "Counted"),
    ]  # fmt: skip
    assert [e.stream_version for e in events[:6]] == [1, 2, 3, 4, 5, 6]
    assert events[5].data == {"deposits": 2}
    # Every event published with its command; the snapshot taken when the stream passed 6.
    assert outbox_count(store) == 8
    with store.reader() as tx:
        snap = tx.snapshots.load("Acct-A")
    assert snap is not None and (snap.version, snap.state["balance"]) == (6, 12)
    # Positions of committed results are the stored ones.
    assert [p for r in report.results for p in r.positions] == [e.global_position for e in events]


def test_a_batch_stops_at_its_first_failure_keeping_the_lines_before_it(store: Store) -> None:
    report = Dispatcher(app, store).dispatch_many(batch_with_a_refused_deposit())
    assert (report.dispatched, [f.line for f in report.failures]) == (2, [3])
    assert [e.stream_id for e in store.read_all(0, 100)] == ["Acct-A"] * 4
    assert outbox_count(store) == 4


def test_a_command_meeting_its_stream_grown_by_a_hook_decides_on_the_grown_stream(store: Store) -> None:
    # A group's next command on a stream starts from the aggregate the previous one left;
    # a hook that appended to that stream in between must not leave it deciding on less.
    dispatcher = Dispatcher(app, store)

    def hook(tx: Any, stream_id: str, events: list[Any], appended: list[Any]) -> None:
        if events[0].event_type == "Deposited" and events[0].amount == 5:
            tx.append(stream_id, [NewEvent("Deposited", {"amount": 100})])

    dispatcher.after_append.append(hook)
    items = [item(1, "Open", "A"), item(2, "Deposit", "A", 5), item(3, "Deposit", "A", 7)]
    report = dispatcher.dispatch_many(items)
    assert report.failures == [] and [r.version for r in report.results] == [2, 4, 7]
    events = store.read_stream("Acct-A")
    assert [e.stream_version for e in events] == list(range(1, 8))
    assert sum(e.data.get("amount", 0) for e in events) == 112
    # The snapshot (every three versions) and the aggregate kept for the next command agree.
    with store.reader() as tx:
        snap = tx.snapshots.load("Acct-A")
    assert snap is not None and (snap.version, snap.state["balance"]) == (7, 112)
    assert dispatcher.dispatch_many([item(4, "Deposit", "A", 1)]).results[0].version == 9


def test_command_ids_are_idempotent_within_and_across_groups(store: Store) -> None:
    ids = ["a", "b", "a", "c", "d", "e", "a", "c"]  # repeats inside a group of 3 and across groups
    items = [item(1, "Open", "A")] + [
        item(i + 2, "Deposit", "A", i + 1, command_id=cid) for i, cid in enumerate(ids)
    ]
    dispatcher = Dispatcher(app, store)
    report = dispatcher.dispatch_many(items, group=3, group_ms=60_000)
    assert (report.dispatched, report.duplicates, report.failures) == (6, 3, [])
    first = {r.command_id: r for r in report.results if not r.duplicate}
    assert all(r.positions == first[r.command_id].positions for r in report.results if r.duplicate)
    head = store.head()
    again = Dispatcher(app, store).dispatch_many(items[1:], group=4)
    assert (again.dispatched, again.duplicates) == (0, 8) and store.head() == head
    deposits = [e for e in store.read_all(0, 100) if e.event_type == "Deposited"]
    assert Counter(e.metadata["command_id"] for e in deposits) == dict.fromkeys("abcde", 1)


def test_results_come_only_once_their_group_has_committed(store_url: str) -> None:
    for group, account, calls in ((5, "A", [5, 5, 2]), (1, "B", [1] * 12)):
        items = [item(1, "Open", account)] + [item(i, "Deposit", account, 1) for i in range(2, 13)]
        with open_store(store_url) as store, open_store(store_url) as other:
            base = other.head()
            seen: list[tuple[int, int]] = []

            def progress(n: int, other: Store = other, seen: list[tuple[int, int]] = seen) -> None:
                # Everything reported so far is visible to another connection: committed.
                seen.append((n, other.head()))

            Dispatcher(app, store).dispatch_many(items, on_progress=progress, group=group, group_ms=60_000)
        assert [n for n, _ in seen] == calls
        done = 0
        for n, head in seen:
            done += n
            assert head == base + 2 * done


def test_group_one_and_groups_report_and_exit_alike(store_url_factory: Any, tmp_path: Path) -> None:
    lines = [
        {"command": "Open", "id": "o-1", "data": {"id": "A", "owner": "Ada"}},
        {"command": "Deposit", "id": "d-1", "data": {"id": "A", "amount": 3}},
        {"command": "Deposit", "id": "d-2", "data": {"id": "A", "amount": 0}},
        {"command": "Deposit", "id": "d-3", "data": {"id": "A", "amount": 4}},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text(jsonl(lines))
    outcomes = []
    for group in ("1", "100"):
        url = store_url_factory()
        runs = []
        for extra in ([], ["--continue-on-error"], []):
            r = cli(
                "--db",
                url,
                "--app",
                APP,
                "--json",
                "dispatch",
                "--file",
                str(batch),
                "--group",
                group,
                *extra,
            )
            runs.append((r.code, r.json()))
        outcomes.append((runs, [(e.stream_version, e.event_type) for e in all_events(url)]))
    assert outcomes[0] == outcomes[1]
    runs, events = outcomes[0]
    assert [code for code, _ in runs] == [14, 14, 14]
    assert runs[0][1]["dispatched"] == 2 and runs[1][1]["dispatched"] == 1 and runs[2][1]["duplicates"] == 2
    assert len(events) == 6


def test_group_flags_are_for_batches(store_url: str) -> None:
    one = ("--db", store_url, "--app", APP, "dispatch", "Open", "--data", '{"id": "A", "owner": "o"}')
    assert_error(cli(*one, "--group", "5"), 2, "--group")
    assert_error(cli(*one, "--group-ms", "5"), 2, "--group")
    assert_error(
        cli("--db", store_url, "dispatch", "-", "--group", "0", "--app", APP, input="\n"), 2, "--group"
    )
    append = ("--db", store_url, "append", "S-1", "T", "--data", "{}")
    assert_error(cli(*append, "--group", "2"), 2, "--group")
    assert_error(
        cli("--db", store_url, "append", "--file", "-", "--group-ms", "9", input="{}\n"), 2, "--group"
    )
    assert store_url and not all_events(store_url)


def test_append_file_in_groups_keeps_the_lines_before_a_failing_one(store_url: str) -> None:
    with open_store(store_url) as store:
        store.append("S-1", [NewEvent("Before", {})])
    lines = [{"stream": f"S-{i}", "type": "T", "data": {"i": i}} for i in (2, 3, 4)]
    lines.append({"stream": "S-1", "type": "T", "data": {}, "expected_version": 7})
    lines.append({"stream": "S-5", "type": "T", "data": {}})
    result = cli("--db", store_url, "--json", "append", "--file", "-", "--group", "2", input=jsonl(lines))
    assert_error(result, 4, "line 4", "S-1")
    assert [r["stream_id"] for r in result.jsonl()] == ["S-2", "S-3", "S-4"]
    assert [e.stream_id for e in all_events(store_url)] == ["S-1", "S-2", "S-3", "S-4"]
    # One line per transaction, and lines that are all good: all of them.
    good = jsonl([{"stream": f"G-{i}", "type": "T"} for i in range(5)])
    human = cli("--db", store_url, "append", "--file", "-", "--group", "1", input=good).ok()
    assert "appended 5 events in 5 appends" in human.stderr
    assert len(all_events(store_url)) == 9


def test_kill_9_mid_grouped_run_leaves_whole_commands_and_the_rerun_finishes(
    store_url: str, backend: str, tmp_path: Path
) -> None:
    accounts, per = (20, 150) if backend == "sqlite" else (20, 60)
    lines = [
        {"command": "Open", "id": f"o-{a}", "data": {"id": f"A{a}", "owner": "o"}} for a in range(accounts)
    ]
    lines += [
        {"command": "Deposit", "id": f"d-{a}-{i}", "data": {"id": f"A{a}", "amount": i + 1}}
        for i in range(per)
        for a in range(accounts)
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text(jsonl(lines))
    total = 2 * len(lines)
    args = ("--db", store_url, "--app", APP, "dispatch", "--file", str(batch), "--group", "25")
    proc = subprocess.Popen(
        command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env()
    )
    try:
        with open_store(store_url) as store:
            deadline = time.monotonic() + 120
            while store.head() < 100 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == -9, f"the run ended before the kill: {proc.returncode} {stderr}"
    events = all_events(store_url)
    assert 0 < len(events) < total, "killed before anything committed, or after everything"
    check_whole(store_url, events)
    rerun = cli("--db", store_url, "--app", APP, "--json", "dispatch", "--file", str(batch))
    report = rerun.ok().json()
    assert (
        report["dispatched"] + report["duplicates"] == len(lines) and report["duplicates"] == len(events) // 2
    )
    events = all_events(store_url)
    assert len(events) == total
    check_whole(store_url, events)
    by_stream: dict[str, int] = {}
    for e in events:
        if e.event_type == "Deposited":
            by_stream[e.stream_id] = by_stream.get(e.stream_id, 0) + e.data["amount"]
    assert by_stream == {f"Acct-A{a}": per * (per + 1) // 2 for a in range(accounts)}


def check_whole(url: str, events: list[Any]) -> None:
    """Each command committed all of its events, their outbox rows and its id, or nothing."""
    by_command = Counter(e.metadata["command_id"] for e in events)
    assert set(by_command.values()) == {2}
    with open_store(url) as store, store.reader() as tx:
        assert all(tx.commands.processed(c) is not None for c in by_command)
        assert len(tx.outbox.select(limit=100_000)) == len(events)
    for stream in {e.stream_id for e in events}:
        versions = [e.stream_version for e in events if e.stream_id == stream]
        assert versions == list(range(1, len(versions) + 1))


@pytest.mark.postgres
def test_groups_the_database_undoes_are_run_again_and_never_reported(pg_dsn: str, tmp_path: Path) -> None:
    """Under SERIALIZABLE (set through the URL), PostgreSQL undoes groups of concurrent
    dispatchers of shared accounts (serialization failures, at any statement or at COMMIT).
    Whatever it undid: every command counts once at most, a run reports exactly what it
    committed, what it gave up on fails with exit 4, and a re-run completes the batch."""
    schema = f"t_{uuid.uuid4().hex}"
    url = with_schema(pg_dsn, schema) + "&options=-cdefault_transaction_isolation%3Dserializable"
    try:
        opens = tmp_path / "open.jsonl"
        opens.write_text(
            jsonl(
                [{"command": "Open", "id": f"o-{a}", "data": {"id": f"A{a}", "owner": "o"}} for a in range(4)]
            )
        )
        cli("--db", url, "--app", APP, "dispatch", "--file", str(opens)).ok()
        files = []
        for p in range(3):
            lines = [
                {"command": "Deposit", "id": f"d-{p}-{i}", "data": {"id": f"A{(i + p) % 4}", "amount": 1}}
                for i in range(60)
            ]
            files.append(tmp_path / f"batch-{p}.jsonl")
            files[-1].write_text(jsonl(lines))
        args = (
            "--db",
            url,
            "--app",
            APP,
            "--json",
            "dispatch",
            "--continue-on-error",
            "--group",
            "10",
            "--file",
        )
        procs = [
            subprocess.Popen(
                command(*args, str(f)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env()
            )
            for f in files
        ]
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode in (0, 14), err.decode()
            reports.append(orjson.loads(out))
        applied = Counter(e.metadata["command_id"] for e in all_events(url) if e.event_type == "Deposited")
        assert set(applied.values()) <= {1}
        for p, report in enumerate(reports):
            assert report["dispatched"] == sum(1 for c in applied if c.startswith(f"d-{p}-"))
            assert all(f["exit_code"] == 4 and "postgresql" in f["error"] for f in report["failures"])
        for f in files:  # one at a time: nothing to conflict with
            cli("--db", url, "--app", APP, "dispatch", "--file", str(f)).ok()
        events = all_events(url)
        assert len(events) == 2 * (4 + 180)
        check_whole(url, events)
    finally:
        drop_schema(pg_dsn, schema)
