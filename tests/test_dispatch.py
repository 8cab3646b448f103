"""`cqrsctl dispatch`: one command, JSONL batches from a file or stdin, line-numbered
failures, idempotent command ids, metadata, and concurrent dispatchers that lose nothing."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    BANK_APP,
    Run,
    all_events,
    assert_error,
    cli,
    command,
    event_count,
    jsonl,
    rolled_back,
    run,
    subprocess_env,
)

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import ConcurrencyError
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.services.replay import replay
from cqrsctl.store import open_store


def bank(url: str, *args: str, input: str | None = None) -> Run:
    return cli("--db", url, "--app", BANK_APP, *args, input=input)


def open_account(url: str, account: str = "A-1", owner: str = "Ada") -> None:
    bank(
        url,
        "dispatch",
        "OpenAccount",
        "--data",
        orjson.dumps({"account_id": account, "owner": owner}).decode(),
    ).ok()


def balance(url: str, account: str = "A-1") -> Decimal:
    result = bank(url, "--json", "replay", "--aggregate", f"Account-{account}").ok().json()
    return Decimal(result["state"]["balance"])


# -- one command ------------------------------------------------------------------------


def test_dispatch_one_command(store_url: str) -> None:
    result = (
        bank(
            store_url, "--json", "dispatch", "OpenAccount", "--data", '{"account_id": "A-1", "owner": "Ada"}'
        )
        .ok()
        .json()
    )
    assert result["command"] == "OpenAccount" and result["stream_id"] == "Account-A-1"
    assert result["version"] == 1 and not result["duplicate"]
    [event] = all_events(store_url)
    assert result["event_ids"] == [event.event_id] and result["positions"] == [event.global_position]
    assert (event.event_type, event.data) == ("AccountOpened", {"owner": "Ada"})

    human = bank(store_url, "dispatch", "Deposit", "-d", '{"account_id": "A-1", "amount": "12.50"}').ok()
    assert "Deposit → Account-A-1 at version 2" in human.stderr
    assert "Account-A-1" in human.stdout and "version" in human.stdout
    assert balance(store_url) == Decimal("12.50")


def test_same_command_id_returns_the_first_result_and_appends_nothing(store_url: str) -> None:
    open_account(store_url)
    args = ("--json", "dispatch", "Deposit", "--id", "dep-1", "-d", '{"account_id": "A-1", "amount": "10"}')
    first = bank(store_url, *args).ok().json()
    before = event_count(store_url)
    again = bank(store_url, *args).ok().json()
    assert again["duplicate"] is True
    assert {k: v for k, v in again.items() if k != "duplicate"} == {
        k: v for k, v in first.items() if k != "duplicate"
    }
    # Even with other data: the id decides, and the first result stands.
    other = bank(
        store_url,
        "--json",
        "dispatch",
        "Deposit",
        "--id",
        "dep-1",
        "-d",
        '{"account_id": "A-1", "amount": "99"}',
    )
    assert other.ok().json()["event_ids"] == first["event_ids"]
    assert event_count(store_url) == before
    assert balance(store_url) == Decimal(10)
    human = bank(store_url, *args[1:]).ok()
    assert "already dispatched" in human.stderr


def test_metadata_carries_command_correlation_causation_and_actor(store_url: str) -> None:
    bank(
        store_url,
        "dispatch",
        "OpenAccount",
        "--id",
        "cmd-1",
        "--actor",
        "alice",
        "--metadata",
        '{"correlation_id": "corr-1", "causation_id": "cause-1", "source": "test"}',
        "--data",
        '{"account_id": "A-1", "owner": "Ada"}',
    ).ok()
    bank(store_url, "dispatch", "Deposit", "-d", '{"account_id": "A-1", "amount": "1"}').ok()
    bank(
        store_url,
        "dispatch",
        "--file",
        "-",
        input=jsonl(
            [
                {
                    "command": "Deposit",
                    "id": "cmd-3",
                    "data": {"account_id": "A-1", "amount": "2"},
                    "metadata": {"correlation_id": "corr-1", "causation_id": "cmd-1", "actor": "bob"},
                }
            ]
        ),
    ).ok()
    opened, deposited, batched = (e.metadata for e in all_events(store_url))
    assert opened == {
        "command_id": "cmd-1",
        "command": "OpenAccount",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "actor": "alice",
        "source": "test",
    }
    # Without ids given: the command id is generated and starts the correlation.
    assert deposited["command"] == "Deposit" and deposited["command_id"]
    assert deposited["correlation_id"] == deposited["command_id"] == deposited["causation_id"]
    assert "actor" not in deposited
    assert (batched["command_id"], batched["correlation_id"], batched["causation_id"], batched["actor"]) == (
        "cmd-3",
        "corr-1",
        "cmd-1",
        "bob",
    )


def test_dispatch_usage_errors(store_url: str, tmp_path: Path) -> None:
    assert_error(bank(store_url, "dispatch", "Deposit"), 2, "--data")
    assert_error(bank(store_url, "dispatch", "Deposit", "-d", "{}", "--file", "x.jsonl"), 2, "not both")
    assert_error(cli("--db", store_url, "dispatch", "Deposit", "-d", "{}"), 2, "no app given")
    assert_error(bank(store_url, "dispatch", "--file", str(tmp_path / "missing.jsonl")), 15, "missing.jsonl")
    assert_error(bank(store_url, "dispatch", "Deposit", "-d", "{}", "--retries", "-1"), 2, "--retries")
    assert event_count(store_url) == 0


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ('{"account_id": "A-1", "amount": "ten"}', ["Deposit: amount:", "decimal"]),
        ('{"account_id": "A-1"}', ["amount: Field required"]),
        ('{"account_id": "A-1", "amount": "-5"}', ["amount:", "greater than 0"]),
        ('{"account_id": "A-1", "amount": "1.001"}', ["amount:", "decimal places"]),
        ('{"account_id": "A-1", "amount": "1", "memo": "x"}', ["memo: Extra inputs are not permitted"]),
        ('{"account_id": "A-1", "amount": ', ["--data is not valid JSON"]),
        ('["A-1", 1]', ["--data must be a JSON object"]),
    ],
    ids=[
        "wrong-type",
        "missing",
        "not-positive",
        "precision",
        "extra-field",
        "malformed-json",
        "not-an-object",
    ],
)
def test_exit_3_validation_names_the_fields(store_url: str, data: str, needles: list[str]) -> None:
    open_account(store_url)
    assert_error(bank(store_url, "dispatch", "Deposit", "--data", data), 3, *needles)
    assert event_count(store_url) == 1


def test_exit_3_validation_names_every_bad_field(store_url: str) -> None:
    result = bank(store_url, "dispatch", "OpenAccount", "--data", '{"account_id": "bad id!", "owner": ""}')
    assert_error(result, 3, "account_id:", "owner:", "OpenAccount")
    assert event_count(store_url) == 0


def test_exit_5_domain_rule(store_url: str) -> None:
    open_account(store_url)
    assert_error(
        bank(store_url, "dispatch", "Withdraw", "-d", '{"account_id": "A-1", "amount": "100.01"}'),
        5,
        "overdraft limit",
    )
    assert_error(
        bank(store_url, "dispatch", "OpenAccount", "-d", '{"account_id": "A-1", "owner": "Eve"}'),
        5,
        "already open",
    )
    assert event_count(store_url) == 1


def test_exit_6_unknown_command(store_url: str) -> None:
    assert_error(bank(store_url, "dispatch", "Steal", "-d", "{}"), 6, "unknown command 'Steal'", "Deposit")
    batch = jsonl(
        [
            {"command": "OpenAccount", "data": {"account_id": "A-1", "owner": "Ada"}},
            {"command": "Steal", "data": {}},
        ]
    )
    result = bank(store_url, "--json", "dispatch", "--file", "-", input=batch)
    assert result.code == 14 and result.json()["failures"][0]["exit_code"] == 6
    assert event_count(store_url) == 1


# -- batches ------------------------------------------------------------------------------


def batch_lines(n: int, account: str = "A-1") -> list[dict[str, Any]]:
    return [
        {"command": "OpenAccount", "id": f"open-{account}", "data": {"account_id": account, "owner": "Ada"}}
    ] + [
        {"command": "Deposit", "id": f"dep-{account}-{i}", "data": {"account_id": account, "amount": str(i)}}
        for i in range(1, n)
    ]


def test_batch_from_a_file(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "commands.jsonl"
    path.write_text(jsonl(batch_lines(10)) + "\n\n")
    report = bank(store_url, "--json", "dispatch", "--file", str(path)).ok().json()
    assert report == {"dispatched": 10, "duplicates": 0, "failed": 0, "failures": []}
    assert balance(store_url) == sum(Decimal(i) for i in range(1, 10))
    # Again: every id was seen, so nothing new is appended.
    again = bank(store_url, "--json", "dispatch", "--file", str(path)).ok().json()
    assert again == {"dispatched": 0, "duplicates": 10, "failed": 0, "failures": []}
    assert event_count(store_url) == 10
    human = bank(store_url, "dispatch", "-f", str(path)).ok()
    assert "dispatched 0, already done 10, failed 0" in human.stderr


@pytest.mark.parametrize("form", [("--file", "-"), ("-",)], ids=["file-dash", "dash"])
def test_batch_from_stdin(store_url: str, form: tuple[str, ...]) -> None:
    report = bank(store_url, "--json", "dispatch", *form, input=jsonl(batch_lines(5))).ok().json()
    assert report["dispatched"] == 5
    assert balance(store_url) == Decimal(10)


def test_batch_lines_may_omit_the_command_given_as_name(store_url: str) -> None:
    open_account(store_url)
    lines = jsonl(
        [{"data": {"account_id": "A-1", "amount": "2"}}, {"data": {"account_id": "A-1", "amount": "3"}}]
    )
    bank(store_url, "dispatch", "Deposit", "--file", "-", input=lines).ok()
    assert balance(store_url) == Decimal(5)


def failing_batch() -> str:
    """Line 2 breaks a domain rule, line 4 fails validation, lines 1, 3 and 5 are fine."""
    return jsonl(
        [
            {"command": "OpenAccount", "data": {"account_id": "A-1", "owner": "Ada"}},
            {"command": "Withdraw", "data": {"account_id": "A-1", "amount": "500"}},
            {"command": "Deposit", "data": {"account_id": "A-1", "amount": "7"}},
            {"command": "Deposit", "data": {"account_id": "A-1", "amount": "lots"}},
            {"command": "Deposit", "data": {"account_id": "A-1", "amount": "1"}},
        ]
    )


def test_batch_stops_at_the_first_failure(store_url: str) -> None:
    result = bank(store_url, "--json", "dispatch", "--file", "-", input=failing_batch())
    assert_error(result, 14, "1 of 5 commands failed", "line 2")
    report = result.json()
    assert report["dispatched"] == 1 and report["failed"] == 1
    assert report["failures"] == [
        {"line": 2, "command": "Withdraw", "exit_code": 5, "error": report["failures"][0]["error"]}
    ]
    assert "overdraft" in report["failures"][0]["error"]
    assert event_count(store_url) == 1  # line 3 was never run

    # Again: line 1 fails (the account is open), nothing ran, so the code is line 1's own.
    human = bank(store_url, "dispatch", "--file", "-", input=failing_batch())
    assert human.code == 5
    assert "error: line 1 (OpenAccount): account Account-A-1 is already open" in human.stderr
    assert "stopped at the first failure" in human.stderr
    assert "Traceback" not in human.stderr


def test_batch_continue_on_error_reports_every_failed_line(store_url: str) -> None:
    result = bank(
        store_url, "--json", "dispatch", "--file", "-", "--continue-on-error", input=failing_batch()
    )
    assert_error(result, 14, "2 of 5 commands failed", "line 2")
    report = result.json()
    assert (report["dispatched"], report["failed"]) == (3, 2)
    assert [(f["line"], f["command"], f["exit_code"]) for f in report["failures"]] == [
        (2, "Withdraw", 5),
        (4, "Deposit", 3),
    ]
    assert "amount:" in report["failures"][1]["error"]
    assert balance(store_url) == Decimal(8)

    human = bank(store_url, "dispatch", "-f", "-", "--continue-on-error", input=failing_batch())
    assert human.code == 14
    lines = human.stderr.splitlines()
    assert any(line.startswith("error: line 1 (OpenAccount)") for line in lines)
    assert any(line.startswith("error: line 2 (Withdraw)") for line in lines)
    assert any(line.startswith("error: line 4 (Deposit)") for line in lines)
    assert any("dispatched 2, already done 0, failed 3" in line for line in lines)


def test_batch_whose_only_command_fails_exits_with_its_code(store_url: str) -> None:
    line = jsonl([{"command": "Deposit", "data": {"account_id": "A-9", "amount": "1"}}])
    assert_error(
        bank(store_url, "--json", "dispatch", "-f", "-", input=line), 5, "line 1 (Deposit)", "not open"
    )
    assert event_count(store_url) == 0


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ('{"command": "Deposit", "data": {"account_id": "A-1"', "line 3: invalid JSON"),
        ('["Deposit"]', "line 3: expected a JSON object"),
        ('{"data": {}}', 'line 3: missing "command"'),
        ('{"command": "Deposit", "data": [1]}', "line 3"),
    ],
    ids=["malformed", "not-an-object", "no-command", "data-not-object"],
)
def test_batch_with_a_malformed_line_dispatches_nothing(store_url: str, bad: str, needle: str) -> None:
    good = jsonl(batch_lines(2))
    assert_error(bank(store_url, "dispatch", "--file", "-", input=good + bad + "\n"), 3, needle)
    assert event_count(store_url) == 0


def test_subprocess_batch_from_stdin(store_url: str) -> None:
    result = run("--db", store_url, "--app", BANK_APP, "--json", "dispatch", "-", input=jsonl(batch_lines(4)))
    assert result.ok().json()["dispatched"] == 4
    failed = run("--db", store_url, "--app", BANK_APP, "--json", "dispatch", "-f", "-", input=failing_batch())
    assert_error(failed, 5, "line 1", "already open")  # line 1 fails alone: its own code
    assert event_count(store_url) == 4


# -- conflicts ------------------------------------------------------------------------------

counter_app = App("counter", retries=3)
interfere: list[Callable[[], Any]] = []
handled_at: list[int] = []


class Added(Event):
    n: int


class Tally(Aggregate, category="Tally"):
    total: int = 0

    def when_Added(self, e: Added) -> None:
        self.total += e.n


@counter_app.command(aggregate=Tally, stream=lambda c: c.tally_id)
class Add(Command):
    tally_id: str
    n: int

    def handle(self, tally: Tally) -> list[Event]:
        handled_at.append(tally.version)
        if interfere:
            interfere.pop()()  # another writer commits to this stream while we decide
        return [Added(n=self.n)]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_conflict_reruns_the_handler_on_fresh_state(store_url: str) -> None:
    # PostgreSQL only: on SQLite a dispatch holds the write lock from its first read, so a
    # second writer cannot commit in the middle of a decision (it waits, and never conflicts).
    with open_store(store_url) as mine, open_store(store_url) as theirs:
        Dispatcher(counter_app, mine).dispatch("Add", {"tally_id": "t", "n": 1})
        handled_at.clear()
        interfere.append(lambda: Dispatcher(counter_app, theirs).dispatch("Add", {"tally_id": "t", "n": 10}))
        result = Dispatcher(counter_app, mine).dispatch("Add", {"tally_id": "t", "n": 100})
        assert handled_at == [1, 1, 2]  # mine at v1, theirs at v1 (commits v2), mine again at v2
        assert result.version == 3
        assert replay(mine, counter_app, "Tally-t").state == {"total": 111}

        # With no retries left the conflict reaches the caller, and nothing of it is written.
        interfere.append(
            lambda: Dispatcher(counter_app, theirs).dispatch("Add", {"tally_id": "t", "n": 1000})
        )
        with pytest.raises(ConcurrencyError, match="Tally-t"):
            Dispatcher(counter_app, mine, retries=0).dispatch("Add", {"tally_id": "t", "n": 5})
        assert replay(mine, counter_app, "Tally-t").state == {"total": 1111}


PROCESSES = 4
# SQLite commits a dispatch in well under a millisecond: more of them make the writers overlap.
PER_PROCESS = {"sqlite": 150, "postgres": 40}


def deposits(proc: int, per: int) -> list[dict[str, Any]]:
    # Distinct amounts, so the final balance tells which deposits were applied.
    return [
        {
            "command": "Deposit",
            "id": f"p{proc}-{i}",
            "data": {"account_id": "A-1", "amount": str(Decimal(proc * per + i + 1) / 100)},
        }
        for i in range(per)
    ]


@pytest.mark.parametrize(
    ("retries", "group"),
    [("3", "1"), ("0", "1"), ("3", "5")],
    ids=["retries-3", "retries-0", "retries-3-groups-of-5"],
)
def test_concurrent_processes_lose_no_update(store_url: str, backend: str, retries: str, group: str) -> None:
    """One transaction per command, and groups: commands of a group race as their own."""
    per = PER_PROCESS[backend]
    batches = [deposits(i, per) for i in range(PROCESSES)]
    open_account(store_url)
    procs: list[subprocess.Popen[bytes]] = []
    ready = [threading.Event() for _ in range(PROCESSES)]
    stderr: list[list[bytes]] = [[] for _ in range(PROCESSES)]

    def watch(i: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr[i].append(line)
            ready[i].set()  # the -v line: started, about to read its commands from stdin
        ready[i].set()

    try:
        for i in range(PROCESSES):
            proc = subprocess.Popen(
                command(
                    "-v",
                    "--db",
                    store_url,
                    "--app",
                    BANK_APP,
                    "--json",
                    "dispatch",
                    "--file",
                    "-",
                    "--continue-on-error",
                    "--retries",
                    retries,
                    "--group",
                    group,
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=subprocess_env(),
            )
            procs.append(proc)
            threading.Thread(target=watch, args=(i, proc), daemon=True).start()
        deadline = time.monotonic() + 60
        for event in ready:
            assert event.wait(max(0.0, deadline - time.monotonic())), "a dispatcher did not start"

        # All are up and blocked on stdin: hand them their commands.
        def release() -> None:
            for i, proc in enumerate(procs):
                assert proc.stdin is not None
                proc.stdin.write(jsonl(batches[i]).encode())
                proc.stdin.close()

        if backend == "postgres":
            # Hold the account's stream meanwhile, so that however long each takes to load the
            # app they queue on their first append and race from the same moment (PostgreSQL
            # grants a lock in queue order; SQLite's busy waiters sleep and wake at random,
            # which would favour one, so there they simply start together).
            with open_store(store_url) as gate, rolled_back(gate) as tx:
                tx.lock_stream("Account-A-1")
                release()
                time.sleep(3)
        else:
            release()
        reports = []
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            out = proc.stdout.read()
            code = proc.wait(timeout=120)
            assert code in (0, 14), f"exit {code}: {b''.join(stderr[i]).decode()}"
            reports.append(orjson.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    rejected: set[str] = set()
    for i, report in enumerate(reports):
        for failure in report["failures"]:
            # A rejection is a clear concurrency error, never anything else.
            assert failure["exit_code"] == 4 and "concurrency conflict" in failure["error"], failure
            rejected.add(batches[i][failure["line"] - 1]["id"])
        assert report["dispatched"] + report["failed"] == per
    every = {d["id"]: Decimal(d["data"]["amount"]) for batch in batches for d in batch}
    events = [e for e in all_events(store_url) if e.event_type == "MoneyDeposited"]
    applied = Counter(e.metadata["command_id"] for e in events)
    assert all(n == 1 for n in applied.values()), "a command was applied twice"
    assert set(applied) == set(every) - rejected, "a command was neither applied nor rejected"
    assert [e.stream_version for e in events] == list(range(2, len(events) + 2))
    assert balance(store_url) == sum(every[c] for c in applied)
    if retries == "3":
        # A retry decides holding the stream, so it cannot lose the race again.
        assert not rejected
    if group != "1":
        return  # a group holds the stream for several commands: how often writers take turns is luck
    # The writers really overlapped: their commands conflicted, or the stream interleaves
    # them. (Without retries one writer may win every race; its rejected rivals prove the
    # overlap.)
    owners = [e.metadata["command_id"].split("-")[0] for e in events]
    switches = sum(a != b for a, b in zip(owners, owners[1:], strict=False))
    assert rejected or switches >= PROCESSES, f"the writers did not overlap ({switches} switches)"
