"""Commands that do not need the app do not import it: with a cqrsctl.toml naming an app
that fails on import, every such command still succeeds, and those that need the app say
it failed (exit 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import BANK_APP, assert_error, cli

from cqrsctl.loader import load_app
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.services.sagas import SagaRunner
from cqrsctl.store import open_store

BOOM = 'raise RuntimeError("BOOM: the app ran")\n'


@pytest.fixture
def seeded(store_url: str) -> str:
    """A store with accounts, a transfer saga, outbox messages and a snapshot, written by the bank app."""
    app = load_app(BANK_APP)
    with open_store(store_url) as store:
        d = Dispatcher(app, store)
        d.dispatch("OpenAccount", {"account_id": "A", "owner": "Ada"})
        d.dispatch("OpenAccount", {"account_id": "B", "owner": "Bob"})
        d.dispatch("Deposit", {"account_id": "A", "amount": "10.00"})
        d.dispatch(
            "TransferMoney", {"transfer_id": "T1", "source": "A", "destination": "B", "amount": "4.00"}
        )
        SagaRunner(app, store).run_once()
    cli("--db", store_url, "--app", BANK_APP, "snapshots", "take", "Account-A").ok()
    return store_url


@pytest.fixture
def boom_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory holds a cqrsctl.toml naming an app that raises when imported."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "boom_app.py").write_text(BOOM)
    (work / "cqrsctl.toml").write_text('app = "boom_app.py"\n')
    monkeypatch.chdir(work)
    return work


def test_commands_that_do_not_need_the_app_do_not_import_it(seeded: str, boom_dir: Path) -> None:
    url = seeded
    base = ("--db", url)
    export = boom_dir / "events.jsonl"
    message_id = cli(*base, "--json", "outbox", "list").ok().jsonl()[0]["message_id"]
    runs = [
        ("init",),
        ("streams", "list"),
        ("streams", "show", "Account-A", "--raw"),
        ("events", "--raw"),
        ("export", "-o", str(export)),
        ("import", str(export)),
        ("append", "Note-1", "Noted", "--data", "{}", "--unchecked", "--schema-version", "1"),
        ("audit",),
        ("doctor",),
        ("top", "--once", "--interval", "0.01"),
        ("replay", "--aggregate", "Account-A", "--generic"),
        ("replay", "--aggregate", "Account-A", "--generic", "--events"),
        ("sagas", "list"),
        ("sagas", "show", "TransferSaga-Transfer-T1"),
        ("snapshots", "list"),
        ("outbox", "status"),
        ("outbox", "list"),
        ("outbox", "show", message_id),
        ("outbox", "peek", "--message-format", "cqrsctl"),
        ("outbox", "drain", "--sink", f"file://{boom_dir / 'out.jsonl'}?format=cqrsctl"),
    ]
    for command in runs:
        result = cli(*base, *command)
        assert result.code == 0, f"{' '.join(command)}: {result}"
        assert "BOOM" not in result.stdout + result.stderr, f"{' '.join(command)}: {result}"
    state = cli(*base, "--json", "replay", "--aggregate", "Account-A", "--generic").ok().json()
    assert state["state"]["owner"] == "Ada" and state["aggregate"] == "generic"
    shown = cli(*base, "--json", "sagas", "show", "TransferSaga-Transfer-T1").ok().json()
    assert shown["saga_type"] == "TransferSaga" and shown["status"] == "completed"


def test_commands_that_need_the_app_import_it_from_the_config_file(seeded: str, boom_dir: Path) -> None:
    base = ("--db", seeded)
    for command in (
        ("replay", "--aggregate", "Account-A"),
        ("events",),
        ("streams", "show", "Account-A"),
        ("append", "Note-1", "Noted", "--data", "{}"),
        ("outbox", "peek"),
        ("projections", "list"),
        ("query", "balances"),
        ("sagas", "run"),
    ):
        assert_error(cli(*base, *command), 8, "BOOM: the app ran")


def test_doctor_and_top_use_an_app_named_for_the_run(seeded: str, boom_dir: Path) -> None:
    base = ("--db", seeded)
    assert_error(cli(*base, "--app", "boom_app.py", "doctor"), 8, "BOOM: the app ran")
    assert_error(cli(*base, "doctor", env={"CQRSCTL_APP": "boom_app.py"}), 8, "BOOM: the app ran")
    assert_error(cli(*base, "--app", "boom_app.py", "top", "--once", "--interval", "0.01"), 8, "BOOM")
    # Named for the run, the app's projections are checked (a projection that never ran lags);
    # from cqrsctl.toml only, projections are checked from their checkpoints, and there are none yet.
    named = cli(*base, "--app", BANK_APP, "--json", "doctor", "--max-lag", "0")
    assert named.code == 10 and "balances" in named.stdout, str(named)
    assert "projections" not in cli(*base, "--json", "doctor", "--max-lag", "0").ok().json()


def test_doctor_without_the_app_checks_projections_from_their_checkpoints(
    seeded: str, boom_dir: Path
) -> None:
    base = ("--db", seeded)
    cli(*base, "--app", BANK_APP, "projections", "catch-up").ok()
    report = cli(*base, "--json", "doctor", "--max-lag", "0").ok().json()
    assert {p["projection"] for p in report["projections"]} >= {"balances"}
    assert all(p["lag"] == 0 and p["state"] == "idle" for p in report["projections"])
    cli(*base, "append", "Note-2", "Noted", "--data", "{}", "--unchecked", "--schema-version", "1").ok()
    behind = cli(*base, "--json", "doctor", "--max-lag", "0")
    assert behind.code == 10, str(behind)
    check = next(c for c in behind.json()["checks"] if c["name"] == "projections")
    assert not check["ok"] and "balances is 1 events behind (max 0)" in check["detail"]
    with open_store(seeded) as store, store.transaction() as tx:
        cp = tx.tracking.get("balances")
        assert cp is not None
        cp.status, cp.error, cp.error_position = "failed", "boom", 3
        tx.tracking.put(cp)
    failed = cli(*base, "--json", "doctor")
    assert failed.code == 10 and "balances failed at position 3" in failed.stdout, str(failed)
    top = cli(*base, "--format", "json", "top", "--once", "--interval", "0.01").ok().json()
    assert {p["name"]: p["state"] for p in top["projections"]}["balances"] == "failed"
