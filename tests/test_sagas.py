"""Sagas on both backends: transfer and verification samples, deadlines, crashes, locking."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.cli import app as cli
from cqrsctl.errors import DomainError
from cqrsctl.loader import load_app
from cqrsctl.saga import Saga, Step
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.services.replay import replay
from cqrsctl.services.sagas import SagaRunner, list_sagas, show_saga
from cqrsctl.store import NewEvent, Store, open_store

ROOT = Path(__file__).resolve().parents[1]
BANK = str(ROOT / "samples" / "bank" / "app.py")
USERS = str(ROOT / "samples" / "users" / "app.py")
STRESS = os.environ.get("CQRSCTL_STRESS") == "1"
SEED_FIELDS = {
    "saga_id", "saga_type", "status", "current_step", "total_steps", "steps", "results",
    "compensation_actions", "created_at", "updated_at",
}  # fmt: skip


def run_cli(url: str, app_ref: str | None, *args: str) -> Any:
    argv = ["--db", url] + (["--app", app_ref] if app_ref else []) + list(args)
    return CliRunner().invoke(cli, argv)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def balances(store: Store, app: App, accounts: list[str]) -> dict[str, Decimal]:
    return {a: Decimal(replay(store, app, f"Account-{a}").state["balance"]) for a in accounts}


def test_transfer_saga_happy_and_compensation_paths_through_the_cli(store_url: str) -> None:
    for name, data in [
        ("OpenAccount", {"account_id": "A", "owner": "Ada"}),
        ("Deposit", {"account_id": "A", "amount": "100"}),
        ("OpenAccount", {"account_id": "B", "owner": "Bob"}),
        ("OpenAccount", {"account_id": "C", "owner": "Cy"}),
        ("CloseAccount", {"account_id": "C"}),
        ("TransferMoney", {"transfer_id": "T1", "source": "A", "destination": "B", "amount": "30"}),
        ("TransferMoney", {"transfer_id": "T2", "source": "A", "destination": "C", "amount": "20"}),
    ]:
        ok(run_cli(store_url, BANK, "dispatch", name, "--data", orjson.dumps(data).decode()))
    report = orjson.loads(ok(run_cli(store_url, BANK, "--json", "sagas", "run", "--once")).stdout)
    assert report["started"] == 2 and report["locked"] is False

    listed = [
        orjson.loads(line)
        for line in ok(run_cli(store_url, BANK, "--json", "sagas", "list")).stdout.splitlines()
    ]
    assert {s["saga_id"]: s["status"] for s in listed} == {
        "TransferSaga-Transfer-T1": "completed",
        "TransferSaga-Transfer-T2": "compensated",
    }
    failed_only = ok(run_cli(store_url, BANK, "--json", "sagas", "list", "--status", "compensated")).stdout
    assert [orjson.loads(x)["saga_id"] for x in failed_only.splitlines()] == ["TransferSaga-Transfer-T2"]

    happy = orjson.loads(
        ok(run_cli(store_url, BANK, "--json", "sagas", "show", "TransferSaga-Transfer-T1")).stdout
    )
    assert set(happy) >= SEED_FIELDS
    assert happy["total_steps"] == 3 and happy["current_step"] == 3
    assert [s["status"] for s in happy["steps"]] == ["completed"] * 3
    assert happy["results"]["debit_source"]["command_id"] == "TransferSaga-Transfer-T1:debit_source"
    assert "error_message" not in happy

    sad = orjson.loads(
        ok(run_cli(store_url, BANK, "--json", "sagas", "show", "TransferSaga-Transfer-T2")).stdout
    )
    assert SEED_FIELDS | {"error_message"} <= set(sad)
    assert [s["status"] for s in sad["steps"]] == ["compensated", "failed", "pending"]
    assert sad["compensation_actions"][0]["step"] == "debit_source"
    assert sad["compensation_actions"][0]["status"] == "completed"
    assert "closed" in sad["error_message"]

    store = open_store(store_url)
    try:
        app = load_app(BANK)
        assert balances(store, app, ["A", "B", "C"]) == {"A": 70, "B": 30, "C": 0}
        # A second run finds nothing to do and changes nothing.
        assert SagaRunner(app, store).run_once().commands == 0
        assert store.stream_version("Account-A") == 5  # open, deposit, T1 debit, T2 debit, T2 refund
    finally:
        store.close()

    human = ok(run_cli(store_url, BANK, "sagas", "show", "TransferSaga-Transfer-T2")).stdout
    assert "compensation" in human and "credit_destination" in human


def test_saga_cli_errors(store_url: str) -> None:
    ok(run_cli(store_url, BANK, "init"))  # reading commands never create the store
    result = run_cli(store_url, BANK, "sagas", "show", "nope")
    assert result.exit_code == 6 and "not found" in result.stderr
    result = run_cli(store_url, BANK, "sagas", "list", "--status", "bogus")
    assert result.exit_code == 2 and "unknown saga status" in result.stderr
    result = run_cli(store_url, BANK, "sagas", "run", "--now", "yesterday")
    assert result.exit_code == 2 and "--now" in result.stderr
    result = run_cli(store_url, None, "sagas", "run")
    assert result.exit_code == 2 and "no app" in result.stderr


def test_verification_saga_deadline_fires_once_across_restarts(store_url: str) -> None:
    app = load_app(USERS)
    store = open_store(store_url)
    try:
        d = Dispatcher(app, store)
        d.dispatch("RegisterUser", {"user_id": "U1", "email": "one@example.org", "name": "One"})
        d.dispatch("RegisterUser", {"user_id": "U2", "email": "two@example.org", "name": "Two"})
        t0 = datetime.now(UTC)
        SagaRunner(app, store, clock=lambda: t0).run_once()
        view = show_saga(store, "Verification-User-U1")
        assert view["status"] == "in_progress" and view["steps"][1]["status"] == "waiting"
        assert [x["status"] for x in view["deadlines"]] == ["pending"]

        d.dispatch("VerifyUser", {"user_id": "U1"})
        SagaRunner(app, store, clock=lambda: t0 + timedelta(minutes=5)).run_once()
        assert show_saga(store, "Verification-User-U1")["status"] == "completed"
        assert show_saga(store, "Verification-User-U1")["deadlines"][0]["status"] == "cancelled"
        assert replay(store, app, "User-U1").state["activated"] is True

        # Before the deadline nothing fires; after it, exactly once however often runners restart.
        assert SagaRunner(app, store, clock=lambda: t0 + timedelta(hours=23)).run_once().deadlines_fired == 0
        later = t0 + timedelta(hours=25)
        fired = sum(SagaRunner(app, store, clock=lambda: later).run_once().deadlines_fired for _ in range(3))
        assert fired == 1
        types = [e.event_type for e in store.read_stream("User-U2")]
        assert types.count("VerificationReminderSent") == 1
        assert "VerificationReminderSent" not in [e.event_type for e in store.read_stream("User-U1")]
        assert show_saga(store, "Verification-User-U2")["status"] == "in_progress"
    finally:
        store.close()
    human = ok(run_cli(store_url, USERS, "sagas", "show", "Verification-User-U1")).stdout
    assert "UserVerified at position" in human and "ActivateUser" in human

    # The same through the CLI with --now, in a fresh process each time.
    result = run_cli(
        store_url, USERS, "--json", "sagas", "run", "--now", (later + timedelta(days=3)).isoformat()
    )
    assert orjson.loads(ok(result).stdout)["deadlines_fired"] == 0


# -- a test app whose compensation can be made to fail --------------------------------------

flaky = App("flaky")
REFUSE_UNDO: dict[str, bool] = {"on": True}


class Booked(Event):
    amount: int


class Unbooked(Event):
    amount: int


class Ledger(Aggregate, category="Ledger"):
    total: int = 0

    def when_Booked(self, e: Booked) -> None:
        self.total += e.amount

    def when_Unbooked(self, e: Unbooked) -> None:
        self.total -= e.amount


@flaky.command(aggregate=Ledger, stream=lambda c: c.ledger)
class Book(Command):
    ledger: str
    amount: int

    def handle(self, ledger: Ledger) -> list[Event]:
        if self.amount < 0:
            raise DomainError("negative amounts are refused")
        return [Booked(amount=self.amount)]


@flaky.command(aggregate=Ledger, stream=lambda c: c.ledger)
class Unbook(Command):
    ledger: str
    amount: int

    def handle(self, ledger: Ledger) -> list[Event]:
        if REFUSE_UNDO["on"]:
            raise DomainError("the ledger is frozen")
        return [Unbooked(amount=self.amount)]


class Order(Event):
    amount: int


@flaky.saga(starts_on=Order)
class Booking(Saga):
    amount: int = 0

    steps = [
        Step(
            "book",
            do=lambda s: Book(ledger="L", amount=s.amount),
            undo=lambda s: Unbook(ledger="L", amount=s.amount),
        ),
        Step("book_negative", do=lambda s: Book(ledger="L", amount=-1)),
    ]


flaky.react(Order, lambda e: Book(ledger="R", amount=e.amount))


def test_failed_compensation_is_visible_and_retryable(store: Store) -> None:
    store.append("Order-1", [NewEvent("Order", {"amount": 5})])
    runner = SagaRunner(flaky, store)
    REFUSE_UNDO["on"] = True
    report = runner.run_once()
    assert report.failed == 1
    view = show_saga(store, "Booking-Order-1")
    assert view["status"] == "failed"
    assert "frozen" in view["error_message"] and view["compensation_actions"][-1]["status"] == "failed"
    assert [s.saga_id for s in list_sagas(store, status="failed")] == ["Booking-Order-1"]

    REFUSE_UNDO["on"] = False
    try:
        record = runner.retry("Booking-Order-1")
    finally:
        REFUSE_UNDO["on"] = True
    assert record.status == "compensated"
    with store.reader() as tx:
        assert [e.event_type for e in tx.read_stream("Ledger-L")] == ["Booked", "Unbooked"]
        # The one-line reaction ran once for the one Order event.
        assert [e.event_type for e in tx.read_stream("Ledger-R")] == ["Booked"]


# -- crashes: kill -9 runners during 200 transfers --------------------------------------------


def _seed_accounts(store: Store, app: App, accounts: int) -> Decimal:
    d = Dispatcher(app, store)
    for i in range(accounts):
        d.dispatch("OpenAccount", {"account_id": f"A{i}", "owner": "x"})
        d.dispatch("Deposit", {"account_id": f"A{i}", "amount": "100"})
    d.dispatch("OpenAccount", {"account_id": "Z", "owner": "closed"})
    d.dispatch("CloseAccount", {"account_id": "Z"})
    return Decimal(100 * accounts)


def _request_transfers(store: Store, app: App, accounts: int, ids: range, seed: int) -> None:
    """Transfers among the accounts; about a fifth go to the closed account Z and must be refunded."""
    rng = random.Random(seed)
    d = Dispatcher(app, store)
    for t in ids:
        src = f"A{rng.randrange(accounts)}"
        dst = "Z" if rng.random() < 0.2 else f"A{rng.randrange(accounts)}"
        if dst == src:
            dst = "Z"
        amount = str(rng.randint(1, 150))
        d.dispatch(
            "TransferMoney", {"transfer_id": f"T{t}", "source": src, "destination": dst, "amount": amount}
        )


def _check_transfers(store: Store, app: App, accounts: int, transfers: int, total: Decimal) -> None:
    statuses = Counter(s.status for s in list_sagas(store, limit=None))
    assert sum(statuses.values()) == transfers
    assert set(statuses) <= {"completed", "compensated"}, statuses
    assert sum(balances(store, app, [f"A{i}" for i in range(accounts)] + ["Z"]).values()) == total
    # No command took effect twice: every saga command id produced one event at most.
    ids = Counter(e.metadata.get("command_id") for e in store.iter_all() if e.metadata.get("actor") == "saga")
    assert ids and max(ids.values()) == 1


def _started(store: Store) -> int:
    with store.reader() as tx:
        return sum(tx.sagas.counts().values())


@pytest.mark.parametrize("runner", ["daemon"])
def test_kill_dash_nine_during_transfers_conserves_money(store_url: str, runner: str) -> None:
    accounts, transfers, kills = (20, 200, 20) if not STRESS else (50, 1000, 60)
    app = load_app(BANK)
    base = [sys.executable, "-m", "cqrsctl", "--db", store_url, "--app", BANK, "-q"]
    final_run = [*base, "sagas", "run", "--once"]
    cmd = [*final_run, "--batch", "2"] if runner == "sagas-run" else [*base, "daemon", "--no-projections"]
    rng = random.Random(5)
    killed = 0
    per_round = transfers // kills
    store = open_store(store_url)
    try:
        total = _seed_accounts(store, app, accounts)
        for round_ in range(kills):
            _request_transfers(
                store, app, accounts, range(round_ * per_round, (round_ + 1) * per_round), round_
            )
            before = _started(store)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Kill it once it has committed work, after a random few milliseconds more: the
            # crash lands mid-run, inside or between its transactions.
            deadline = time.monotonic() + 60
            while _started(store) == before and proc.poll() is None:
                assert time.monotonic() < deadline, "the saga runner made no progress"
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 0.004))
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait(timeout=60)
    finally:
        store.close()
    assert killed >= kills // 2, f"only {killed} of {kills} runs were still running when killed"
    final = subprocess.run(final_run, capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr
    store = open_store(store_url)
    try:
        _check_transfers(store, app, accounts, transfers, total)
    finally:
        store.close()


def test_daemon_runs_sagas_and_doctor_reports_failed_ones(store_url: str) -> None:
    ok(run_cli(store_url, BANK, "dispatch", "OpenAccount", "--data", '{"account_id": "A", "owner": "Ada"}'))
    ok(run_cli(store_url, BANK, "dispatch", "OpenAccount", "--data", '{"account_id": "B", "owner": "Bo"}'))
    transfer = '{"transfer_id": "T1", "source": "A", "destination": "B", "amount": "10"}'
    ok(run_cli(store_url, BANK, "dispatch", "TransferMoney", "--data", transfer))
    ok(run_cli(store_url, BANK, "daemon", "--once", "--no-sagas"))
    assert orjson.loads(ok(run_cli(store_url, BANK, "--json", "sagas", "list")).stdout or b"null") is None
    ok(run_cli(store_url, BANK, "daemon", "--once"))
    assert (
        orjson.loads(ok(run_cli(store_url, BANK, "--json", "sagas", "list")).stdout)["status"] == "completed"
    )
    # The projections saw the saga's commands in the same --once run.
    rows = [
        orjson.loads(line)
        for line in ok(run_cli(store_url, BANK, "--json", "query", "balances")).stdout.splitlines()
    ]
    assert {r["account_id"]: Decimal(str(r["balance"])) for r in rows} == {"A": -10, "B": 10}, rows
    report = orjson.loads(ok(run_cli(store_url, BANK, "--json", "doctor")).stdout)
    assert {c["name"]: c["ok"] for c in report["checks"]}["sagas"] is True

    store = open_store(store_url)
    try:
        store.append("Order-1", [NewEvent("Order", {"amount": 5})])
        SagaRunner(flaky, store).run_once()  # its compensation is refused: the saga fails
    finally:
        store.close()
    result = run_cli(store_url, BANK, "--json", "doctor")
    assert result.exit_code == 10, result.output
    sagas_check = {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}["sagas"]
    assert sagas_check["ok"] is False and "1 failed" in sagas_check["detail"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_runners_never_run_sagas_at_the_same_time(store_url: str) -> None:
    app = load_app(BANK)
    accounts, transfers = 10, 60
    store = open_store(store_url)
    try:
        total = _seed_accounts(store, app, accounts)
        _request_transfers(store, app, accounts, range(transfers), seed=3)
        # While one runner's transaction holds the saga lock, another runner skips its round.
        with store.transaction() as tx:
            assert tx.sagas.try_lock("sagas")
            other = open_store(store_url)
            try:
                assert SagaRunner(app, other).run_once().locked is True
            finally:
                other.close()
        errors: list[BaseException] = []

        def work() -> None:
            s = open_store(store_url)
            try:
                runner = SagaRunner(app, s)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    idle = not runner.run_once().locked and not list_sagas(s, status="in_progress")
                    if idle and len(list_sagas(s, limit=None)) == transfers:
                        return
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                s.close()

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors, errors
        _check_transfers(store, app, accounts, transfers, total)
    finally:
        store.close()
