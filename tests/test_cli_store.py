"""The commands that need no app (init, append, streams, events, export, import, doctor),
their error exit codes, and how settings are resolved — on SQLite and PostgreSQL alike."""

from __future__ import annotations

import queue
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import drop_schema, with_schema
from helpers import (
    Run,
    all_events,
    assert_error,
    cli,
    command,
    event_count,
    jsonl,
    run,
    subprocess_env,
)

from cqrsctl.store import NewEvent, open_store


def seed(url: str) -> None:
    """Six events over three streams in two categories, in a known global order."""
    with open_store(url) as store:
        store.append("Account-A-1", [NewEvent("Opened", {"owner": "Ada"})])
        store.append("Account-A-2", [NewEvent("Opened", {"owner": "Bob"})])
        store.append("Order-1", [NewEvent("Placed", {"total": 3})])
        store.append("Account-A-1", [NewEvent("Deposited", {"amount": 10})])
        store.append("Account-A-1", [NewEvent("Deposited", {"amount": 5}, {"note": "ünïcødé ☕"})])
        store.append("Order-1", [NewEvent("Shipped", {})])


def comparable(url: str) -> list[tuple[Any, ...]]:
    """What an export/import must keep: order, ids, stream versions, content, time."""
    return [
        (
            e.event_id,
            e.stream_id,
            e.stream_version,
            e.event_type,
            e.schema_version,
            e.data,
            e.metadata,
            e.recorded_at,
        )
        for e in all_events(url)
    ]


# -- init -------------------------------------------------------------------------------


def test_init_is_idempotent(store_url: str, backend: str) -> None:
    first = cli("--db", store_url, "--json", "init").ok().json()
    assert first["schema_version"] >= 1
    assert first["backend"] == backend
    assert cli("--db", store_url, "--json", "init").ok().json() == first
    human = cli("--db", store_url, "init").ok()
    assert "store ready" in human.stderr and human.stdout == ""


def test_init_sql_prints_the_ddl_and_creates_nothing(store_url: str) -> None:
    result = cli("--db", store_url, "init", "--sql").ok()
    for table in ("events", "snapshots", "checkpoints", "outbox", "sagas", "deadlines", "processed_commands"):
        assert table in result.stdout
    assert "CREATE TABLE" in result.stdout.upper()
    # Nothing was run: the store is still uninitialised.
    assert_error(cli("--db", store_url, "doctor"), 10, "not initialised")


# -- append -----------------------------------------------------------------------------


def test_append_one_event(store_url: str) -> None:
    db = ("--db", store_url)
    first = (
        cli(
            *db,
            "--json",
            "append",
            "Account-A-1",
            "Opened",
            "--data",
            '{"owner": "Ada"}',
            "--metadata",
            '{"actor": "me"}',
            "--expected-version",
            "no-stream",
        )
        .ok()
        .json()
    )
    assert first["stream_id"] == "Account-A-1" and first["version"] == 1 and not first["duplicate"]
    assert len(first["positions"]) == 1 and len(first["event_ids"]) == 1
    [stored] = all_events(store_url)
    assert (stored.event_id, stored.event_type, stored.data) == (
        first["event_ids"][0],
        "Opened",
        {"owner": "Ada"},
    )
    assert stored.metadata == {"actor": "me"}
    assert stored.global_position == first["positions"][0]

    second = (
        cli(
            *db,
            "--json",
            "append",
            "Account-A-1",
            "Deposited",
            "-d",
            '{"amount": 5, "note": "café ☕"}',
            "-e",
            "1",
        )
        .ok()
        .json()
    )
    assert second["version"] == 2 and second["positions"][0] > first["positions"][0]
    third = cli(*db, "--json", "append", "Account-A-1", "Deposited", "-d", "{}", "-e", "exists").ok().json()
    assert third["version"] == 3
    assert all_events(store_url)[1].data == {"amount": 5, "note": "café ☕"}

    human = cli(*db, "append", "Account-A-1", "Deposited", "--data", "{}").ok()
    assert "Account-A-1 is at version 4" in human.stderr


def test_append_with_an_event_id_is_idempotent(store_url: str) -> None:
    eid = str(uuid.uuid4())
    args = ("--db", store_url, "--json", "append", "S-1", "Happened", "--data", '{"n": 1}', "--event-id", eid)
    first = cli(*args).ok().json()
    again = cli(*args).ok().json()
    assert again["duplicate"] and again["positions"] == first["positions"] and again["event_ids"] == [eid]
    assert event_count(store_url) == 1
    # The same id with other content is a conflict, and writes nothing.
    other = cli("--db", store_url, "append", "S-1", "Happened", "--data", '{"n": 2}', "--event-id", eid)
    assert_error(other, 4, eid)
    assert event_count(store_url) == 1


def test_append_batch_from_a_file(store_url: str, tmp_path: Path) -> None:
    eid = str(uuid.uuid4())
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        jsonl(
            [
                {"stream": "Order-1", "type": "Placed", "data": {"n": 1}, "expected_version": "no-stream"},
                {
                    "stream": "Order-1",
                    "type": "Paid",
                    "data": {"n": 2},
                    "metadata": {"by": "x"},
                    "expected_version": 1,
                },
                {"stream": "Order-2", "type": "Placed", "data": {"n": 3}, "event_id": eid},
            ]
        )
        + "\n"  # a blank line is skipped
    )
    results = cli("--db", store_url, "--json", "append", "--file", str(batch)).ok().jsonl()
    assert [(r["stream_id"], r["version"]) for r in results] == [
        ("Order-1", 1),
        ("Order-1", 2),
        ("Order-2", 1),
    ]
    events = all_events(store_url)
    assert [(e.stream_id, e.event_type, e.data) for e in events] == [
        ("Order-1", "Placed", {"n": 1}),
        ("Order-1", "Paid", {"n": 2}),
        ("Order-2", "Placed", {"n": 3}),
    ]
    assert events[1].metadata == {"by": "x"} and events[2].event_id == eid
    # The same batch again: line 1 expects no stream, so nothing of it is written.
    assert_error(cli("--db", store_url, "append", "-f", str(batch)), 4, "line 1", "Order-1")
    assert len(all_events(store_url)) == 3
    batch.write_text(jsonl([{"stream": "Order-3", "type": "Placed"}, {"stream": "Order-3", "type": "Paid"}]))
    human = cli("--db", store_url, "append", "-f", str(batch)).ok()
    assert "appended 2 events in 2 appends" in human.stderr


def test_append_batch_from_stdin(store_url: str) -> None:
    lines = jsonl([{"stream": f"S-{i}", "type": "T", "data": {"i": i}} for i in range(5)])
    results = cli("--db", store_url, "--json", "append", "--file", "-", input=lines).ok().jsonl()
    assert len(results) == 5
    assert [e.data["i"] for e in all_events(store_url)] == list(range(5))


@pytest.mark.parametrize(
    ("bad_line", "code", "needle"),
    [
        ('{"stream": "S-3", "type": "T", "data": {', 3, "line 3"),
        ('{"stream": "S-3", "data": {}}', 3, 'line 3: missing "type"'),
        ('{"stream": "S-3", "type": "T", "data": [1]}', 3, "line 3"),
        ('{"stream": "S-1", "type": "T", "data": {}, "expected_version": 7}', 4, "line 3"),
    ],
    ids=["malformed-json", "missing-type", "data-not-object", "conflict"],
)
def test_append_batch_is_atomic(store_url: str, bad_line: str, code: int, needle: str) -> None:
    with open_store(store_url) as store:
        store.append("S-1", [NewEvent("Before", {})])
    good = jsonl([{"stream": "S-1", "type": "T", "data": {}}, {"stream": "S-2", "type": "T", "data": {}}])
    result = cli("--db", store_url, "append", "--file", "-", input=good + bad_line + "\n")
    assert_error(result, code, needle)
    assert [e.event_type for e in all_events(store_url)] == ["Before"]


# -- streams and events -------------------------------------------------------------------


def test_streams_list(store_url: str) -> None:
    seed(store_url)
    db = ("--db", store_url)
    streams = cli(*db, "--json", "streams", "list").ok().jsonl()
    assert {s["stream_id"]: s["version"] for s in streams} == {
        "Account-A-1": 3,
        "Account-A-2": 1,
        "Order-1": 2,
    }
    account = next(s for s in streams if s["stream_id"] == "Account-A-1")
    assert account["category"] == "Account" and account["first_position"] < account["last_position"]
    by_category = cli(*db, "--json", "streams", "list", "--category", "Account").ok().jsonl()
    assert sorted(s["stream_id"] for s in by_category) == ["Account-A-1", "Account-A-2"]
    assert len(cli(*db, "--json", "streams", "list", "--limit", "1").ok().jsonl()) == 1
    table = cli(*db, "streams", "list").ok().stdout
    assert "Account-A-1" in table and "Order-1" in table


def test_streams_show(store_url: str) -> None:
    seed(store_url)
    db = ("--db", store_url)
    events = cli(*db, "--json", "streams", "show", "Account-A-1").ok().jsonl()
    assert [(e["stream_version"], e["event_type"]) for e in events] == [
        (1, "Opened"),
        (2, "Deposited"),
        (3, "Deposited"),
    ]
    assert events[2]["metadata"] == {"note": "ünïcødé ☕"}
    assert events[0]["recorded_at"].endswith("Z")
    tail = cli(*db, "--json", "streams", "show", "Account-A-1", "--from-version", "2").ok().jsonl()
    assert [e["stream_version"] for e in tail] == [2, 3]
    head = cli(*db, "--json", "streams", "show", "Account-A-1", "--limit", "1").ok().jsonl()
    assert [e["stream_version"] for e in head] == [1]
    assert "Deposited" in cli(*db, "streams", "show", "Account-A-1").ok().stdout


def test_brackets_in_data_and_errors_are_printed_as_they_are(store_url: str) -> None:
    # Tables and error lines go through rich, whose markup would eat "[bold]" or "[nats]".
    db = ("--db", store_url)
    cli(*db, "append", "Note-[x]", "Said", "--data", '{"text": "[bold]as is[/bold]"}').ok()
    shown = cli(*db, "streams", "show", "Note-[x]").ok().stdout
    assert "[bold]as is[/bold]" in shown and "Note-[x]" in shown
    assert_error(cli(*db, "streams", "show", "Nothing-[red]"), 6, "Nothing-[red]")


def test_events_filters_and_limit(store_url: str) -> None:
    seed(store_url)
    db = ("--db", store_url, "--json", "events")
    every = cli(*db).ok().jsonl()
    positions = [e["global_position"] for e in every]
    assert len(every) == 6 and positions == sorted(positions)
    assert [e["stream_id"] for e in every] == [
        "Account-A-1",
        "Account-A-2",
        "Order-1",
        "Account-A-1",
        "Account-A-1",
        "Order-1",
    ]
    assert {e["stream_id"] for e in cli(*db, "--category", "Order").ok().jsonl()} == {"Order-1"}
    assert len(cli(*db, "-c", "Order", "-c", "Account").ok().jsonl()) == 6
    assert [e["event_type"] for e in cli(*db, "--type", "Deposited").ok().jsonl()] == [
        "Deposited",
        "Deposited",
    ]
    assert len(cli(*db, "-t", "Opened", "-t", "Shipped").ok().jsonl()) == 3
    after = cli(*db, "--from-position", str(positions[2])).ok().jsonl()
    assert [e["global_position"] for e in after] == positions[3:]
    assert [e["global_position"] for e in cli(*db, "--limit", "2").ok().jsonl()] == positions[:2]
    assert [
        e["event_type"] for e in cli(*db, "-c", "Account", "-t", "Deposited", "-n", "1").ok().jsonl()
    ] == ["Deposited"]
    table = cli("--db", store_url, "events").ok().stdout
    assert "Order-1" in table and "Shipped" in table


@pytest.fixture
def follower(store_url: str) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], queue.Queue[bytes]]]]:
    """Start `cqrsctl events --follow` as a real process; its stdout lines arrive on a queue."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], queue.Queue[bytes]]:
        proc = subprocess.Popen(
            command("--db", store_url, "events", "--follow", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
        )
        procs.append(proc)
        lines: queue.Queue[bytes] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        return proc, lines

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def next_line(
    proc: subprocess.Popen[bytes], lines: queue.Queue[bytes], timeout: float = 30
) -> dict[str, Any]:
    try:
        return orjson.loads(lines.get(timeout=timeout))  # type: ignore[no-any-return]
    except queue.Empty:
        stderr = proc.stderr.read1().decode() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(
            f"no line from `events --follow` within {timeout}s (exit {proc.poll()}) {stderr}"
        ) from None


def test_events_follow_prints_new_events_as_they_commit(store_url: str, follower: Any) -> None:
    with open_store(store_url) as store:
        store.append("Account-A-1", [NewEvent("Opened", {"owner": "Ada"})])
        proc, lines = follower("--category", "Account")
        assert next_line(proc, lines)["event_type"] == "Opened"
        store.append("Order-1", [NewEvent("Placed", {})])  # filtered out
        store.append("Account-A-1", [NewEvent("Deposited", {"amount": 1})])
        event = next_line(proc, lines)
        assert (event["stream_id"], event["stream_version"], event["data"]) == (
            "Account-A-1",
            2,
            {"amount": 1},
        )
        store.append("Account-A-2", [NewEvent("Opened", {"owner": "Bob"})])
        assert next_line(proc, lines)["stream_id"] == "Account-A-2"
    assert proc.poll() is None  # it keeps following until stopped
    assert lines.empty()


# -- export and import ------------------------------------------------------------------


def test_export_to_stdout_and_file(store_url: str, tmp_path: Path) -> None:
    seed(store_url)
    db = ("--db", store_url)
    exported = cli(*db, "export").ok()
    rows = exported.jsonl()
    assert [(r["stream_id"], r["stream_version"], r["event_id"]) for r in rows] == [
        (e.stream_id, e.stream_version, e.event_id) for e in all_events(store_url)
    ]
    assert "exported 6 events" in exported.stderr
    out = tmp_path / "all.jsonl"
    cli(*db, "export", "-o", str(out)).ok()
    assert out.read_text() == exported.stdout
    only_stream = cli(*db, "export", "--stream", "Account-A-1").ok().jsonl()
    assert [r["stream_version"] for r in only_stream] == [1, 2, 3]
    only_category = cli(*db, "export", "--category", "Order").ok().jsonl()
    assert {r["stream_id"] for r in only_category} == {"Order-1"}


def test_import_keeps_ids_versions_and_order_and_reimport_is_a_no_op(
    store_url: str, store_url_factory: Callable[[], str], tmp_path: Path
) -> None:
    seed(store_url)
    dump = tmp_path / "dump.jsonl"
    cli("--db", store_url, "export", "-o", str(dump)).ok()
    target = store_url_factory()
    first = cli("--db", target, "--json", "import", str(dump)).ok().json()
    assert first == {"imported": 6, "skipped": 0}
    assert comparable(target) == comparable(store_url)
    again = cli("--db", target, "--json", "import", str(dump)).ok().json()
    assert again == {"imported": 0, "skipped": 6}
    assert comparable(target) == comparable(store_url)
    # Imported streams carry on at the right version.
    appended = (
        cli("--db", target, "--json", "append", "Account-A-1", "Deposited", "-d", "{}", "-e", "3").ok().json()
    )
    assert appended["version"] == 4
    human = cli("--db", target, "import", str(dump)).ok()
    assert "imported 0 events, skipped 6" in human.stderr


@pytest.fixture
def pg_url(pg_dsn: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex}"
    yield with_schema(pg_dsn, schema)
    drop_schema(pg_dsn, schema)


@pytest.mark.postgres
@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
def test_import_moves_a_store_between_backends(direction: str, pg_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    source, target = (sqlite_url, pg_url) if direction == "sqlite-to-postgres" else (pg_url, sqlite_url)
    seed(source)
    dump = tmp_path / "dump.jsonl"
    cli("--db", source, "export", "-o", str(dump)).ok()
    assert cli("--db", target, "--json", "import", str(dump)).ok().json() == {"imported": 6, "skipped": 0}
    assert comparable(target) == comparable(source)
    # And back again, into a third store of the source's backend, through a second export.
    back_dump = tmp_path / "back.jsonl"
    cli("--db", target, "export", "-o", str(back_dump)).ok()
    assert cli("--db", source, "--json", "import", str(back_dump)).ok().json() == {
        "imported": 0,
        "skipped": 6,
    }


def test_import_of_a_bad_file_writes_nothing(store_url: str, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'src.db'}"
    seed(other)
    dump = tmp_path / "dump.jsonl"
    cli("--db", other, "export", "-o", str(dump)).ok()
    dump.write_text(dump.read_text() + '{"stream_id": "X-1"\n')
    assert_error(cli("--db", store_url, "import", str(dump)), 3, "line 7")
    assert event_count(store_url) == 0
    assert_error(cli("--db", store_url, "import", str(tmp_path / "missing.jsonl")), 15, "missing.jsonl")


# -- doctor -----------------------------------------------------------------------------


def test_doctor_healthy(store_url: str, backend: str) -> None:
    seed(store_url)
    report = cli("--db", store_url, "--json", "doctor").ok().json()
    assert report["healthy"] is True and report["backend"] == backend
    assert {c["name"] for c in report["checks"]} >= {"connection", "schema"}
    assert all(c["ok"] for c in report["checks"])
    assert report["counts"]["events"] == 6
    human = cli("--db", store_url, "doctor").ok()
    assert "connection" in human.stdout and "FAIL" not in human.stdout


def test_doctor_uninitialised_store_is_unhealthy(store_url: str, backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        import sqlite3

        # An existing SQLite file that is not a cqrsctl store.
        path = Path(store_url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE unrelated (x)")
        conn.close()
    line = assert_error(cli("--db", store_url, "doctor"), 10, "not initialised")
    assert "unhealthy" in line
    report = cli("--db", store_url, "--json", "doctor")
    assert report.code == 10 and report.json()["healthy"] is False


# -- one test per exit code ---------------------------------------------------------------


def test_exit_2_usage(store_url: str) -> None:
    cli("--db", store_url, "init").ok()
    bad_expected = cli("--db", store_url, "append", "S-1", "T", "--data", "{}", "--expected-version", "soon")
    assert_error(bad_expected, 2, "invalid expected version", "'soon'")
    assert_error(cli("--db", store_url, "append", "S-1", "T", "--bogus"), 2, "--bogus")
    assert_error(cli("--db", store_url, "append", "S-1"), 2)
    assert_error(cli("--db", store_url, "no-such-command"), 2, "no-such-command")
    assert_error(cli("--no-such-global-flag"), 2, "--no-such-global-flag")
    assert_error(cli("--db", store_url, "streams", "list", "--limit", "0"), 2, "--limit")
    assert event_count(store_url) == 0


@pytest.mark.parametrize(
    ("data", "needle"),
    [('{"a": 1', "--data is not valid JSON"), ("[1, 2]", "--data must be a JSON object"), ("", "--data")],
    ids=["malformed", "not-an-object", "empty"],
)
def test_exit_3_validation(store_url: str, data: str, needle: str) -> None:
    seed(store_url)
    assert_error(cli("--db", store_url, "append", "S-1", "T", "--data", data), 3, needle)
    assert_error(cli("--db", store_url, "append", "S-1", "T", "-d", "{}", "-m", "nope"), 3, "--metadata")
    assert_error(cli("--db", store_url, "append", "S-1", "T", "-d", "{}", "--event-id", "x"), 3, "UUID")
    assert event_count(store_url) == 6


def test_exit_4_concurrency_conflict(store_url: str) -> None:
    seed(store_url)
    line = assert_error(
        cli("--db", store_url, "append", "Account-A-1", "Deposited", "-d", "{}", "--expected-version", "2"),
        4,
        "Account-A-1",
    )
    assert "expected 2" in line and "version 3" in line
    assert_error(cli("--db", store_url, "append", "Account-A-1", "T", "-d", "{}", "-e", "no-stream"), 4)
    assert_error(cli("--db", store_url, "append", "Nope-1", "T", "-d", "{}", "-e", "exists"), 4, "Nope-1")
    assert event_count(store_url) == 6


def test_exit_6_not_found(store_url: str) -> None:
    seed(store_url)
    assert_error(cli("--db", store_url, "streams", "show", "Account-nope"), 6, "Account-nope")
    assert event_count(store_url) == 6


BAD_URLS = [
    "postgresql://postgres:secret@127.0.0.1:1/x",  # nothing listens on port 1
    "postgresql://postgres:secret@nohost.invalid/x",
    "mysql://root:secret@127.0.0.1/x",
]


@pytest.mark.parametrize("url", BAD_URLS, ids=["unreachable", "unknown-host", "unsupported-scheme"])
def test_exit_7_bad_database_url(url: str) -> None:
    for args in (("streams", "list"), ("append", "S-1", "T", "-d", "{}")):
        result = cli("--db", url, *args)
        assert_error(result, 7, "***")
        assert "secret" not in result.stdout + result.stderr
    # doctor reports an unreachable database (exit 10) and fails with 7 only on a URL it cannot use.
    doctor = cli("--db", url, "--json", "doctor")
    assert "secret" not in doctor.stdout + doctor.stderr
    if url.startswith("mysql"):
        assert doctor.code == 7 and doctor.stdout == ""
        assert orjson.loads(doctor.stderr)["exit_code"] == 7
    else:
        assert doctor.code == 10, str(doctor)
        report = doctor.json()
        assert (
            report["healthy"] is False and report["database"].endswith("/x") and "***" in report["database"]
        )
        assert report["checks"] == [
            {"name": "connection", "ok": False, "detail": report["checks"][0]["detail"]}
        ]
        assert "cannot connect" in report["checks"][0]["detail"]
    env_result = cli("streams", "list", env={"CQRSCTL_DB": url})
    assert_error(env_result, 7)
    assert "secret" not in env_result.stdout + env_result.stderr


def test_exit_7_sqlite_file_in_a_missing_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    assert_error(cli("--db", url, "init"), 7, "does not exist")
    assert not (tmp_path / "no").exists()


def test_exit_15_unwritable_file(store_url: str, tmp_path: Path) -> None:
    seed(store_url)
    assert_error(
        cli("--db", store_url, "export", "-o", "/nonexistent/dir/x.jsonl"), 15, "/nonexistent/dir/x.jsonl"
    )
    assert_error(
        cli("--db", store_url, "append", "--file", str(tmp_path / "missing.jsonl")), 15, "missing.jsonl"
    )
    assert event_count(store_url) == 6


# -- real processes -----------------------------------------------------------------------


def test_subprocess_append_batch_from_stdin_and_read_back(store_url: str) -> None:
    lines = jsonl([{"stream": "Order-1", "type": "Placed", "data": {"i": i}} for i in range(3)])
    results = run("--db", store_url, "--json", "append", "--file", "-", input=lines).ok().jsonl()
    assert [r["version"] for r in results] == [1, 2, 3]
    shown = run("--db", store_url, "--json", "streams", "show", "Order-1").ok().jsonl()
    assert [e["data"]["i"] for e in shown] == [0, 1, 2]


def test_subprocess_errors_are_one_line(store_url: str) -> None:
    seed(store_url)
    result = run("--db", store_url, "append", "Account-A-1", "T", "--data", "{}", "--expected-version", "1")
    assert_error(result, 4, "Account-A-1")
    bad_db: Run = run("--db", BAD_URLS[0], "events")
    assert_error(bad_db, 7)
    assert "secret" not in bad_db.stderr + bad_db.stdout
    assert_error(run("--db", store_url, "append", "--file", "-", input='{"stream": "S-1"\n'), 3, "line 1")
    assert event_count(store_url) == 6


# -- settings: flags > environment > config file > default --------------------------------


def db_used(result: Run) -> str:
    """The database a run used, from its -v line `database URL (source)`."""
    for line in result.stderr.splitlines():
        if line.startswith("database "):
            return line.removeprefix("database ")
    raise AssertionError(f"no database line in\n{result}")


def test_db_precedence_flag_env_config_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flag, env, config = (f"sqlite:///{tmp_path / name}.db" for name in ("flag", "env", "config"))

    assert db_used(cli("-v", "init").ok()) == "sqlite:///cqrsctl.db (default)"
    assert (tmp_path / "cqrsctl.db").is_file()

    (tmp_path / "cqrsctl.toml").write_text(f'db = "{config}"\n')
    assert db_used(cli("-v", "init").ok()).endswith(
        "config.db (config " + str(tmp_path / "cqrsctl.toml") + ")"
    )
    assert db_used(cli("-v", "init", env={"CQRSCTL_DB": env}).ok()) == f"{env} (env CQRSCTL_DB)"
    assert db_used(cli("-v", "--db", flag, "init", env={"CQRSCTL_DB": env}).ok()) == f"{flag} (flag)"
    for name in ("flag", "env", "config"):
        assert (tmp_path / f"{name}.db").is_file()

    # The events really go where the settings say.
    cli("append", "S-1", "T", "-d", "{}").ok()
    cli("append", "S-1", "T", "-d", "{}", env={"CQRSCTL_DB": env}).ok()
    assert (event_count(config), event_count(env), event_count(flag)) == (1, 1, 0)


def test_db_from_pyproject_tool_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = f"sqlite:///{tmp_path / 'pp.db'}"
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[tool.cqrsctl]\ndb = "{target}"\n')
    assert db_used(cli("-v", "init").ok()).startswith(f"{target} (config ")
    # cqrsctl.toml wins over pyproject.toml when both exist.
    other = f"sqlite:///{tmp_path / 'own.db'}"
    (tmp_path / "cqrsctl.toml").write_text(f'db = "{other}"\n')
    assert db_used(cli("-v", "init").ok()).startswith(f"{other} (config ")


def test_pyproject_without_a_tool_table_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert db_used(cli("-v", "init").ok()) == "sqlite:///cqrsctl.db (default)"


def test_broken_config_file_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cqrsctl.toml").write_text("db = \n")
    assert_error(cli("init"), 2, "cqrsctl.toml")
    assert not (tmp_path / "cqrsctl.db").exists()


def test_subprocess_default_db_is_in_the_working_directory(tmp_path: Path) -> None:
    result = run("--json", "append", "S-1", "T", "--data", '{"x": 1}', cwd=tmp_path).ok()
    assert result.json()["version"] == 1
    assert event_count(f"sqlite:///{tmp_path / 'cqrsctl.db'}") == 1
    (tmp_path / "cqrsctl.toml").write_text(f'db = "sqlite:///{tmp_path / "cfg.db"}"\n')
    run("append", "S-1", "T", "--data", "{}", cwd=tmp_path).ok()
    env_db = f"sqlite:///{tmp_path / 'env.db'}"
    run("append", "S-1", "T", "--data", "{}", cwd=tmp_path, env={"CQRSCTL_DB": env_db}).ok()
    assert event_count(f"sqlite:///{tmp_path / 'cfg.db'}") == 1 and event_count(env_db) == 1
