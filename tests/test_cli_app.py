"""The commands that run an app (replay, snapshots, query), loading apps, the app-related
exit codes (8, 9), and the samples end to end through the CLI — on both backends."""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from helpers import (
    BANK_APP,
    BANK_COMMANDS,
    ROOT,
    USERS_APP,
    USERS_COMMANDS,
    Run,
    all_events,
    assert_error,
    cli,
    event_count,
    run,
)

from cqrsctl.loader import load_app
from cqrsctl.services.replay import replay
from cqrsctl.store import NewEvent, Snapshot, iso, open_store


def bank(url: str, *args: str, input: str | None = None) -> Run:
    return cli("--db", url, "--app", BANK_APP, *args, input=input)


def dispatch(url: str, command: str, **data: str) -> None:
    bank(url, "dispatch", command, "--data", orjson.dumps(data).decode()).ok()


@pytest.fixture
def account(store_url: str) -> str:
    """Account-A-1 at version 4: opened, +10, +20, -5 (balance 25)."""
    dispatch(store_url, "OpenAccount", account_id="A-1", owner="Ada")
    dispatch(store_url, "Deposit", account_id="A-1", amount="10")
    dispatch(store_url, "Deposit", account_id="A-1", amount="20")
    dispatch(store_url, "Withdraw", account_id="A-1", amount="5")
    return store_url


def state(result: Run) -> dict[str, object]:
    return result.ok().json()["state"]  # type: ignore[no-any-return]


# -- replay -------------------------------------------------------------------------------


def test_replay_folds_the_aggregate(account: str) -> None:
    result = bank(account, "--json", "replay", "--aggregate", "Account-A-1").ok().json()
    assert result == {
        "stream_id": "Account-A-1",
        "aggregate": "Account",
        "version": 4,
        "state": {"owner": "Ada", "balance": "25", "closed": False},
    }
    table = bank(account, "replay", "-a", "Account-A-1").ok().stdout
    assert "balance" in table and "25" in table and "version 4" in table


def test_replay_at_version(account: str) -> None:
    assert (
        state(bank(account, "--json", "replay", "-a", "Account-A-1", "--at-version", "1"))["balance"] == "0"
    )
    at3 = bank(account, "--json", "replay", "-a", "Account-A-1", "--at-version", "3").ok().json()
    assert (at3["version"], at3["state"]["balance"]) == (3, "30")
    assert_error(bank(account, "replay", "-a", "Account-A-1", "--at-version", "5"), 6, "no version 5")
    assert_error(bank(account, "replay", "-a", "Account-A-1", "--at-version", "0"), 2, "--at-version")


def test_replay_events_shows_the_state_after_each(account: str) -> None:
    steps = bank(account, "--json", "replay", "-a", "Account-A-1", "--events").ok().jsonl()
    assert [s["event"]["event_type"] for s in steps] == [
        "AccountOpened",
        "MoneyDeposited",
        "MoneyDeposited",
        "MoneyWithdrawn",
    ]
    assert [s["state"]["balance"] for s in steps] == ["0", "10", "30", "25"]
    assert [s["event"]["stream_version"] for s in steps] == [1, 2, 3, 4]
    upto = (
        bank(account, "--json", "replay", "-a", "Account-A-1", "--events", "--at-version", "2").ok().jsonl()
    )
    assert len(upto) == 2
    table = bank(account, "replay", "-a", "Account-A-1", "--events").ok().stdout
    assert "MoneyWithdrawn" in table


def test_replay_diff(account: str) -> None:
    diff = bank(account, "--json", "replay", "-a", "Account-A-1", "--diff", "2..4").ok().json()
    assert diff == {
        "stream_id": "Account-A-1",
        "from_version": 2,
        "to_version": 4,
        "changes": {"balance": {"from": "10", "to": "25"}},
    }
    same = bank(account, "--json", "replay", "-a", "Account-A-1", "--diff", "3..3").ok().json()
    assert same["changes"] == {}
    assert "balance" in bank(account, "replay", "-a", "Account-A-1", "--diff", "1..4").ok().stdout
    assert_error(bank(account, "replay", "-a", "Account-A-1", "--diff", "4..2"), 2, "--diff")
    assert_error(bank(account, "replay", "-a", "Account-A-1", "--diff", "two..four"), 2, "--diff")
    assert_error(bank(account, "replay", "-a", "Account-A-1", "--diff", "1..9"), 6, "no version 9")


def test_replay_uses_a_snapshot_unless_told_not_to(account: str) -> None:
    bank(account, "snapshots", "take", "Account-A-1").ok()
    with open_store(account) as store, store.transaction() as tx:
        real = tx.snapshots.load("Account-A-1")
        assert real is not None and real.version == 4
        # A snapshot is a cache; plant a wrong one to see which path a replay takes.
        tx.snapshots.save(
            Snapshot(
                "Account-A-1",
                "Account",
                4,
                real.schema_version,
                {**real.state, "balance": "999"},
                real.taken_at,
            )
        )
    assert state(bank(account, "--json", "replay", "-a", "Account-A-1"))["balance"] == "999"
    assert state(bank(account, "--json", "replay", "-a", "Account-A-1", "--no-snapshot"))["balance"] == "25"
    # Time travel and earlier versions never start from a later snapshot.
    assert (
        state(bank(account, "--json", "replay", "-a", "Account-A-1", "--at-version", "3"))["balance"] == "30"
    )


def test_replay_ignores_a_snapshot_of_another_aggregate_schema(account: str) -> None:
    with open_store(account) as store, store.transaction() as tx:
        tx.snapshots.save(
            Snapshot(
                "Account-A-1", "Account", 4, "0:oldshape", {"balance": "999", "gone": 1}, datetime.now(UTC)
            )
        )
    result = bank(account, "--json", "replay", "-a", "Account-A-1").ok().json()
    assert result["state"] == {"owner": "Ada", "balance": "25", "closed": False}


def test_replay_without_an_app_is_a_generic_fold(account: str) -> None:
    result = cli("--db", account, "--json", "replay", "--aggregate", "Account-A-1").ok().json()
    assert result["aggregate"] == "generic" and result["version"] == 4
    assert result["state"] == {"owner": "Ada", "amount": "5"}  # later data overwrites earlier keys
    human = cli("--db", account, "replay", "--aggregate", "Account-A-1").ok()
    assert "generic fold" in human.stderr
    # The same for a stream no aggregate of the app handles.
    with open_store(account) as store:
        store.append(
            "Note-1", [NewEvent("Written", {"text": "a", "n": 1}), NewEvent("Edited", {"text": "b"})]
        )
    generic = bank(account, "--json", "replay", "-a", "Note-1").ok().json()
    assert (generic["aggregate"], generic["state"]) == ("generic", {"text": "b", "n": 1})
    steps = cli("--db", account, "--json", "replay", "-a", "Note-1", "--events").ok().jsonl()
    assert [s["state"] for s in steps] == [{"text": "a", "n": 1}, {"text": "b", "n": 1}]


def test_replay_as_of_travels_in_time(store_url: str) -> None:
    dispatch(store_url, "OpenAccount", account_id="A-1", owner="Ada")
    dispatch(store_url, "Deposit", account_id="A-1", amount="10")
    dispatch(store_url, "Deposit", account_id="A-1", amount="20")
    opened, first, second = all_events(store_url)
    assert first.recorded_at < second.recorded_at
    between = first.recorded_at + (second.recorded_at - first.recorded_at) / 2
    then = bank(store_url, "--json", "replay", "-a", "Account-A-1", "--as-of", iso(between)).ok().json()
    assert (then["version"], then["state"]["balance"]) == (2, "10")
    exactly = (
        bank(store_url, "--json", "replay", "-a", "Account-A-1", "--as-of", iso(first.recorded_at))
        .ok()
        .json()
    )
    assert exactly["version"] == 2  # an event recorded at the instant asked for is included
    # An offset-aware time is converted; a naive one is read as UTC.
    naive = between.replace(tzinfo=None).isoformat()
    assert (
        bank(store_url, "--json", "replay", "-a", "Account-A-1", "--as-of", naive).ok().json()["version"] == 2
    )
    shifted = between.astimezone(timezone(timedelta(hours=2)))
    assert (
        bank(store_url, "--json", "replay", "-a", "Account-A-1", "--as-of", shifted.isoformat())
        .ok()
        .json()["version"]
        == 2
    )
    steps = (
        bank(store_url, "--json", "replay", "-a", "Account-A-1", "--events", "--as-of", iso(between))
        .ok()
        .jsonl()
    )
    assert [s["state"]["balance"] for s in steps] == ["0", "10"]
    before = opened.recorded_at.replace(year=2000)
    assert_error(bank(store_url, "replay", "-a", "Account-A-1", "--as-of", iso(before)), 6, "no events as of")
    assert_error(bank(store_url, "replay", "-a", "Account-A-1", "--as-of", "last tuesday"), 2, "--as-of")


# -- snapshots --------------------------------------------------------------------------


def test_snapshots_take_list_delete(account: str) -> None:
    dispatch(account, "OpenAccount", account_id="A-2", owner="Bob")
    assert bank(account, "--json", "snapshots", "list").ok().jsonl() == []
    taken = bank(account, "--json", "snapshots", "take", "Account-A-1").ok().json()
    assert (taken["stream_id"], taken["aggregate_type"], taken["version"]) == ("Account-A-1", "Account", 4)
    assert taken["state"]["balance"] == "25"
    assert (
        "snapshot of Account-A-2 at version 1"
        in bank(account, "snapshots", "take", "Account-A-2").ok().stderr
    )
    listed = bank(account, "--json", "snapshots", "list").ok().jsonl()
    assert sorted(s["stream_id"] for s in listed) == ["Account-A-1", "Account-A-2"]
    assert len(bank(account, "--json", "snapshots", "list", "--limit", "1").ok().jsonl()) == 1
    assert "Account-A-1" in bank(account, "snapshots", "list").ok().stdout
    assert bank(account, "--json", "snapshots", "delete", "Account-A-1").ok().json() == {"deleted": 1}
    assert bank(account, "--json", "snapshots", "delete", "Account-A-1").ok().json() == {"deleted": 0}
    assert bank(account, "--json", "snapshots", "delete", "--all").ok().json() == {"deleted": 1}
    assert bank(account, "--json", "snapshots", "list").ok().jsonl() == []
    # Deleting snapshots loses nothing: state comes from the events.
    assert state(bank(account, "--json", "replay", "-a", "Account-A-1"))["balance"] == "25"
    assert_error(bank(account, "snapshots", "delete"), 2, "--all")
    assert_error(bank(account, "snapshots", "take", "Account-A-9"), 6, "Account-A-9")
    assert_error(bank(account, "snapshots", "take", "Nothing-1"), 6, "Nothing-1")
    assert_error(cli("--db", account, "snapshots", "take", "Account-A-1"), 2, "no app given")


def test_dispatch_takes_snapshots_every_n_events(store_url: str) -> None:
    dispatch(store_url, "OpenAccount", account_id="A-1", owner="Ada")
    lines = "".join(
        orjson.dumps({"command": "Deposit", "data": {"account_id": "A-1", "amount": "1"}}).decode() + "\n"
        for _ in range(60)
    )
    bank(store_url, "dispatch", "--file", "-", input=lines).ok()
    [snap] = bank(store_url, "--json", "snapshots", "list").ok().jsonl()  # the bank app: every 50 events
    assert (snap["stream_id"], snap["version"], snap["state"]["balance"]) == ("Account-A-1", 50, "49")
    assert state(bank(store_url, "--json", "replay", "-a", "Account-A-1"))["balance"] == "60"


# -- query --------------------------------------------------------------------------------


def test_query(account: str) -> None:
    result = bank(account, "--json", "query", "account", "--param", "account_id=A-1").ok().json()
    assert result == {"account_id": "A-1", "owner": "Ada", "balance": "25", "closed": False, "version": 4}
    table = bank(account, "query", "account", "-p", "account_id=A-1").ok().stdout
    assert "Ada" in table and "25" in table
    assert_error(bank(account, "query", "account"), 3, "needs --param account_id")
    assert_error(bank(account, "query", "account", "-p", "account_id=A-1", "-p", "colour=red"), 3, "'colour'")
    assert_error(bank(account, "query", "account", "-p", "account_id"), 2, "k=v")
    assert_error(bank(account, "query", "account", "-p", "account_id=A-404"), 6, "Account-A-404")
    assert_error(bank(account, "query", "richest"), 6, "unknown query 'richest'", "account")
    assert_error(cli("--db", account, "query", "account"), 2, "no app given")


def test_query_parameters_are_typed(store_url: str, tmp_path: Path) -> None:
    app_file = tmp_path / "typed_app.py"
    app_file.write_text(
        "from cqrsctl.app import App\n"
        "app = App('typed')\n"
        "@app.query()\n"
        "def add(ctx, a: int, b: int = 1) -> dict:\n"
        "    return {'sum': a + b}\n"
        "@app.query()\n"
        "def rows(ctx, n: int) -> list:\n"
        "    return [{'i': i, 'sq': i * i} for i in range(n)]\n"
    )
    q = ("--db", store_url, "--app", str(app_file), "--json", "query")
    assert cli(*q, "add", "-p", "a=2").ok().json() == {"sum": 3}
    assert cli(*q, "add", "-p", "a=2", "-p", "b=5").ok().json() == {"sum": 7}
    assert_error(cli(*q, "add", "-p", "a=two"), 3, "'a'")
    rows = [{"i": 0, "sq": 0}, {"i": 1, "sq": 1}, {"i": 2, "sq": 4}]
    assert cli(*q, "rows", "-p", "n=3").ok().jsonl() == rows  # --json is JSON Lines for records
    assert cli(*q, "rows", "-p", "n=3", "--format", "json").ok().json() == rows
    table = cli("--db", store_url, "--app", str(app_file), "query", "rows", "-p", "n=3").ok().stdout
    assert "sq" in table and "4" in table


# -- loading apps: exit code 8 ------------------------------------------------------------------


def test_exit_8_app_cannot_be_loaded(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("--db", store_url, "init").ok()
    (tmp_path / "broken_app.py").write_text("import json\nraise RuntimeError('boom at import')\n")
    (tmp_path / "no_app.py").write_text("x = 1\n")
    (tmp_path / "two_apps.py").write_text("from cqrsctl.app import App\na = App('a')\nb = App('b')\n")
    (tmp_path / "bad_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    cases = [
        (str(tmp_path / "missing.py"), ["not found", "missing.py"]),
        (str(tmp_path / "broken_app.py"), ["RuntimeError", "boom at import"]),
        (str(tmp_path / "no_app.py"), ["found 0"]),
        (str(tmp_path / "two_apps.py"), ["found 2", "module:attr"]),
        (f"{tmp_path / 'two_apps.py'}:c", ["no attribute 'c'"]),
        (f"{tmp_path / 'no_app.py'}:x", ["not a cqrsctl App"]),
        (str(tmp_path / "bad_dep.py"), ["no_such_dependency_xyz"]),
        ("no_such_module_xyz:app", ["no module named 'no_such_module_xyz'"]),
        ("no_app", ["found 0"]),  # a module name, importable from the working directory
    ]
    for ref, needles in cases:
        result = cli(
            "--db",
            store_url,
            "--app",
            ref,
            "dispatch",
            "OpenAccount",
            "-d",
            '{"account_id": "A-1", "owner": "x"}',
        )
        assert_error(result, 8, *needles)
        assert "Traceback" not in result.stderr
    assert_error(
        cli("--db", store_url, "query", "q", env={"CQRSCTL_APP": str(tmp_path / "missing.py")}),
        8,
        "not found",
    )
    assert_error(
        cli("--db", store_url, "replay", "-a", "S-1", env={"CQRSCTL_APP": str(tmp_path / "no_app.py")}), 8
    )
    assert event_count(store_url) == 0


def test_app_module_and_attr_forms(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(BANK_APP, tmp_path / "mybank.py")
    monkeypatch.chdir(tmp_path)
    for ref in ("mybank", "mybank:app", "mybank.py", "mybank.py:app", str(tmp_path / "mybank.py") + ":app"):
        result = cli("--db", store_url, "--app", ref, "--json", "query", "account", "-p", "account_id=A-1")
        assert_error(result, 6, "Account-A-1")  # loaded, and the account is not there


def which_app(result: Run) -> str:
    return result.ok().json()["app"]  # type: ignore[no-any-return]


def test_app_precedence_flag_env_config(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("flag", "env", "config", "pyproject"):
        (tmp_path / f"{name}_app.py").write_text(
            "from cqrsctl.app import App\n"
            f"app = App({name!r})\n"
            "@app.query()\n"
            "def which(ctx) -> dict:\n"
            "    return {'app': ctx.app.name}\n"
        )
    monkeypatch.chdir(tmp_path)
    q = ("--db", store_url, "--json", "query", "which")
    assert_error(cli(*q), 2, "no app given")
    (tmp_path / "pyproject.toml").write_text('[tool.cqrsctl]\napp = "pyproject_app.py"\n')
    assert which_app(cli(*q)) == "pyproject"
    (tmp_path / "cqrsctl.toml").write_text('app = "config_app.py"\n')
    assert which_app(cli(*q)) == "config"
    env = {"CQRSCTL_APP": str(tmp_path / "env_app.py")}
    assert which_app(cli(*q, env=env)) == "env"
    assert which_app(cli("--app", "flag_app.py", *q, env=env)) == "flag"


# -- undecodable events: exit code 9 ----------------------------------------------------------


def test_exit_9_undecodable_stored_event(account: str) -> None:
    # Written by hand, bypassing the app: the amount is not a number.
    appended = (
        cli(
            "--db",
            account,
            "--json",
            "append",
            "Account-A-1",
            "MoneyDeposited",
            "--data",
            '{"amount": "lots"}',
        )
        .ok()
        .json()
    )
    position = appended["positions"][0]
    before = event_count(account)
    for args in (
        ("replay", "-a", "Account-A-1"),
        ("replay", "-a", "Account-A-1", "--events"),
        ("replay", "-a", "Account-A-1", "--no-snapshot"),
        ("query", "account", "-p", "account_id=A-1"),
        ("dispatch", "Deposit", "-d", '{"account_id": "A-1", "amount": "1"}'),
        ("snapshots", "take", "Account-A-1"),
    ):
        assert_error(bank(account, *args), 9, f"position {position}", "MoneyDeposited", "amount")
    assert event_count(account) == before
    assert bank(account, "--json", "snapshots", "list").ok().jsonl() == []
    # Up to the event before it, the stream still replays.
    assert (
        state(bank(account, "--json", "replay", "-a", "Account-A-1", "--at-version", "4"))["balance"] == "25"
    )


UPCAST_APP = """
from cqrsctl.app import Aggregate, App, Command, Event

app = App("people")


class Renamed(Event, schema_version=3):
    first: str
    last: str


class Person(Aggregate, category="Person"):
    first: str = ""
    last: str = ""
    renames: int = 0

    def when_Renamed(self, e: Renamed) -> None:
        self.first, self.last, self.renames = e.first, e.last, self.renames + 1


@app.command(aggregate=Person, stream=lambda c: c.person_id)
class Rename(Command):
    person_id: str
    first: str
    last: str

    def handle(self, person: Person) -> list[Event]:
        return [Renamed(first=self.first, last=self.last)]


@app.upcaster("Renamed", from_version=1)
def _split_name(data: dict) -> dict:  # v1: {"name": "Ada Lovelace"}
    first, last = data["name"].split(" ", 1)
    return {"given": first, "family": last}


@app.upcaster("Renamed", from_version=2)
def _rename_fields(data: dict) -> dict:  # v2: {"given", "family"}
    return {"first": data["given"], "last": data["family"]}
"""


def test_upcasters_apply_on_every_read_path(store_url: str, tmp_path: Path) -> None:
    app_file = tmp_path / "people.py"
    app_file.write_text(UPCAST_APP)
    people = ("--db", store_url, "--app", str(app_file))
    append = ("--db", store_url, "--json", "append", "Person-1", "Renamed")
    cli(*append, "-d", '{"name": "Ada Byron"}', "--schema-version", "1").ok()
    cli(*append, "-d", '{"given": "Ada", "family": "King"}', "--schema-version", "2").ok()
    result = cli(*people, "--json", "replay", "-a", "Person-1").ok().json()
    assert result["state"] == {"first": "Ada", "last": "King", "renames": 2}
    steps = cli(*people, "--json", "replay", "-a", "Person-1", "--events").ok().jsonl()
    # The events as the app reads them (upcast to v3); --raw shows what is stored.
    assert [(s["event"]["schema_version"], s["event"]["data"]["last"]) for s in steps] == [
        (3, "Byron"),
        (3, "King"),
    ]
    raw = cli(*people, "--json", "replay", "-a", "Person-1", "--events", "--raw").ok().jsonl()
    assert [(s["event"]["schema_version"], s["state"]["last"]) for s in raw] == [(1, "Byron"), (2, "King")]
    # Dispatch loads through the upcasters too, and writes the current version.
    cli(*people, "dispatch", "Rename", "-d", '{"person_id": "1", "first": "Ada", "last": "Lovelace"}').ok()
    stored = all_events(store_url)
    assert [e.schema_version for e in stored] == [1, 2, 3]
    assert stored[0].data == {"name": "Ada Byron"}  # the store is never rewritten
    assert cli(*people, "--json", "replay", "-a", "Person-1").ok().json()["state"]["renames"] == 3

    # An upcaster that raises: exit 9, naming the position; nothing is written.
    bad = cli(*append, "-d", '{"name": "Cher"}', "--schema-version", "1").ok().json()["positions"][0]
    before = event_count(store_url)
    line = assert_error(cli(*people, "replay", "-a", "Person-1"), 9, f"position {bad}", "could not be upcast")
    assert "v1" in line and "ValueError" in line
    assert_error(
        cli(*people, "dispatch", "Rename", "-d", '{"person_id": "1", "first": "A", "last": "B"}'),
        9,
        f"position {bad}",
    )
    assert event_count(store_url) == before


def test_event_newer_than_the_app_is_a_decode_error(store_url: str, tmp_path: Path) -> None:
    app_file = tmp_path / "people.py"
    app_file.write_text(UPCAST_APP)
    pos = (
        cli(
            "--db",
            store_url,
            "--json",
            "append",
            "Person-2",
            "Renamed",
            "-d",
            '{"first": "A", "last": "B"}',
            "--schema-version",
            "4",
        )
        .ok()
        .json()["positions"][0]
    )
    line = assert_error(
        cli("--db", store_url, "--app", str(app_file), "replay", "-a", "Person-2"), 9, f"position {pos}"
    )
    assert "schema version 4" in line


# -- the samples, end to end ----------------------------------------------------------------


def expected_balances() -> tuple[dict[str, Decimal], set[str]]:
    balances: dict[str, Decimal] = defaultdict(Decimal)
    closed: set[str] = set()
    for line in BANK_COMMANDS.read_text().splitlines():
        cmd = orjson.loads(line)
        acc = cmd["data"]["account_id"]
        if cmd["command"] == "OpenAccount":
            balances[acc] = Decimal(0)
        elif cmd["command"] == "Deposit":
            balances[acc] += Decimal(cmd["data"]["amount"])
        elif cmd["command"] == "Withdraw":
            balances[acc] -= Decimal(cmd["data"]["amount"])
        elif cmd["command"] == "CloseAccount":
            closed.add(acc)
    return balances, closed


def test_bank_sample_end_to_end(store_url: str) -> None:
    commands = BANK_COMMANDS.read_text().splitlines()
    report = bank(store_url, "--json", "dispatch", "--file", str(BANK_COMMANDS)).ok().json()
    assert report == {"dispatched": len(commands), "duplicates": 0, "failed": 0, "failures": []}
    assert event_count(store_url) == len(commands)
    balances, closed = expected_balances()
    assert closed
    app = load_app(BANK_APP)
    with open_store(store_url) as store:
        for acc, amount in balances.items():
            folded = replay(store, app, f"Account-{acc}", use_snapshot=False).state
            assert Decimal(folded["balance"]) == amount, acc
            assert folded["closed"] is (acc in closed)
    # Through the CLI, one busy account (with snapshots) and one closed account.
    busiest = max(balances, key=lambda a: sum(f'"{a}"' in c for c in commands))
    shown = bank(store_url, "--json", "replay", "-a", f"Account-{busiest}").ok().json()
    assert Decimal(shown["state"]["balance"]) == balances[busiest]
    assert (
        shown == bank(store_url, "--json", "replay", "-a", f"Account-{busiest}", "--no-snapshot").ok().json()
    )
    gone = sorted(closed)[0]
    queried = bank(store_url, "--json", "query", "account", "-p", f"account_id={gone}").ok().json()
    assert (queried["closed"], Decimal(queried["balance"])) == (True, Decimal(0))
    history = bank(store_url, "--json", "replay", "-a", f"Account-{gone}", "--events").ok().jsonl()
    assert history[-1]["event"]["event_type"] == "AccountClosed"
    assert history[0]["event"]["event_type"] == "AccountOpened"
    # Every command has an id: running the file again changes nothing.
    again = bank(store_url, "--json", "dispatch", "-f", str(BANK_COMMANDS)).ok().json()
    assert (again["dispatched"], again["duplicates"]) == (0, len(commands))
    assert event_count(store_url) == len(commands)
    # The rules hold after the run: a closed account takes no deposits.
    assert_error(
        bank(
            store_url, "dispatch", "Deposit", "-d", orjson.dumps({"account_id": gone, "amount": "1"}).decode()
        ),
        5,
        "closed",
    )


def test_users_sample_end_to_end(store_url: str) -> None:
    users = ("--db", store_url, "--app", USERS_APP)
    commands = [orjson.loads(line) for line in USERS_COMMANDS.read_text().splitlines()]
    report = cli(*users, "--json", "dispatch", "--file", str(USERS_COMMANDS)).ok().json()
    assert report["dispatched"] == len(commands) and report["failed"] == 0
    u1 = cli(*users, "--json", "query", "user", "-p", "user_id=U-001").ok().json()
    assert (u1["email"], u1["role"], u1["active"]) == ("user1@example.org", "moderator", True)
    verified = {c["data"]["user_id"] for c in commands if c["command"] == "VerifyUser"}
    unverified = sorted({c["data"]["user_id"] for c in commands if c["command"] == "RegisterUser"} - verified)
    assert unverified
    replayed = cli(*users, "--json", "replay", "-a", f"User-{unverified[0]}").ok().json()
    assert replayed["state"]["active"] is False
    # The sample's rules, through the CLI.
    assert_error(
        cli(
            *users,
            "dispatch",
            "ChangeRole",
            "-d",
            orjson.dumps({"user_id": unverified[0], "role": "admin"}).decode(),
        ),
        5,
        "must be active",
    )
    assert_error(
        cli(*users, "dispatch", "ChangeRole", "-d", '{"user_id": "U-001", "role": "moderator"}'),
        5,
        "already has role",
    )
    assert_error(
        cli(*users, "dispatch", "ChangeRole", "-d", '{"user_id": "U-001", "role": "god"}'), 3, "role:"
    )
    assert_error(
        cli(
            *users,
            "dispatch",
            "RegisterUser",
            "-d",
            '{"user_id": "U-900", "email": "not-an-email", "name": "X"}',
        ),
        3,
        "email:",
        "not a valid email",
    )


def test_subprocess_quick_start_of_the_readme(tmp_path: Path) -> None:
    """The README's quick start, in a copy of samples/bank: config from its cqrsctl.toml."""
    sample = tmp_path / "bank"
    shutil.copytree(ROOT / "samples" / "bank", sample, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))
    report = run("--json", "dispatch", "--file", "commands.jsonl", cwd=sample).ok().json()
    assert report["failed"] == 0 and report["dispatched"] == len(BANK_COMMANDS.read_text().splitlines())
    assert (sample / "bank.db").is_file()
    state_ = run("--json", "replay", "--aggregate", "Account-A-0001", cwd=sample).ok().json()
    assert Decimal(state_["state"]["balance"]) == expected_balances()[0]["A-0001"]
    history = run("replay", "--aggregate", "Account-A-0001", "--events", cwd=sample).ok()
    assert "AccountOpened" in history.stdout
    assert_error(run("query", "account", "--param", "account_id=A-9999", cwd=sample), 6, "Account-A-9999")
