"""The operations journal and `cqrsctl audit`, skips that cannot lose events (and their
undo), confirmations, dry runs and durations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import BANK_APP, BANK_COMMANDS, assert_error, at_a_terminal, cli
from outbox_support import fill
from projection_support import app, append_random, oracle_totals, table_totals

from cqrsctl.errors import NotFoundError, UsageError
from cqrsctl.services import journal, outbox
from cqrsctl.services import projections as P
from cqrsctl.sinks import open_sink
from cqrsctl.store import NewEvent, Store, open_store

SUPPORT_APP = str(Path(__file__).with_name("projection_support.py")) + ":app"


def kinds(store: Store) -> list[str]:
    return [e.kind for e in journal.entries(store)]


def poisoned(store: Store, tmp_path: Path, monkeypatch: Any) -> int:
    """A failed `totals` projection; returns the position it failed on."""
    flag = tmp_path / "poison"
    flag.touch()
    monkeypatch.setenv("CQRSCTL_TEST_POISON_FLAG", str(flag))
    append_random(store, 10, seed=3)
    bad = store.append("S-1", [NewEvent("Added", {"n": 1, "poison": True})]).positions[0]
    append_random(store, 10, seed=4)
    assert {r.name: r.outcome for r in P.catch_up(store, app, retries=0)}["totals"] == "failed"
    return bad


# -- skips ---------------------------------------------------------------------------------------


def test_a_skip_beyond_the_head_is_refused_and_loses_nothing(store: Store) -> None:
    append_random(store, 5, seed=1)
    P.check_catch_up(P.catch_up(store, app))
    head = store.head()
    with pytest.raises(NotFoundError, match=f"no event at position {head + 1}"):
        P.skip(store, app, "totals", head + 1)
    append_random(store, 5, seed=2)  # the event that would have been dropped at head + 1
    P.check_catch_up(P.catch_up(store, app))
    assert table_totals(store) == oracle_totals(store)
    assert "projections skip" not in kinds(store)


def test_skip_without_a_position_takes_the_failed_event_and_keeps_reason_beside_error(
    store: Store, tmp_path: Path, monkeypatch: Any
) -> None:
    bad = poisoned(store, tmp_path, monkeypatch)
    cp = P.skip(store, app, "totals", reason="bad import, TICKET-12", actor="ops@test")
    assert cp.status == "idle"
    [skipped] = cp.skipped
    assert (
        skipped["position"] == bad
        and skipped["reason"] == "bad import, TICKET-12"
        and "poison" in skipped["error"]
    )
    [entry] = journal.entries(store, kinds=["projections skip"])
    assert entry.actor == "ops@test" and entry.args["position"] == bad and "poison" in entry.result["error"]


def test_skip_without_a_position_needs_a_failed_projection(store: Store) -> None:
    append_random(store, 3, seed=1)
    P.check_catch_up(P.catch_up(store, app))
    with pytest.raises(UsageError, match="not failed"):
        P.skip(store, app, "totals")


def test_unskip_applies_the_event_at_the_next_catch_up_or_rebuild(
    store: Store, tmp_path: Path, monkeypatch: Any
) -> None:
    bad = poisoned(store, tmp_path, monkeypatch)
    P.skip(store, app, "totals", bad)
    (tmp_path / "poison").unlink()
    P.check_catch_up(P.catch_up(store, app))
    assert table_totals(store) != oracle_totals(store)  # the skipped event is missing
    result = P.unskip(store, app, "totals", bad, actor="ops@test")
    assert result["applies"] == "rebuild"  # the projection is past it
    P.rebuild(store, app, "totals")
    assert table_totals(store) == oracle_totals(store)
    with pytest.raises(NotFoundError):
        P.unskip(store, app, "totals", bad)
    assert kinds(store)[-3:] == ["projections skip", "projections unskip", "projections rebuild"]


def test_unskip_before_the_projection_reaches_the_event_applies_it_at_catch_up(store: Store) -> None:
    append_random(store, 5, seed=1)
    P.check_catch_up(P.catch_up(store, app))
    later = store.append("S-9", [NewEvent("Added", {"n": 5})]).positions[0]
    P.skip(store, app, "totals", later, reason="checking")
    assert P.unskip(store, app, "totals", later)["applies"] == "catch-up"
    P.check_catch_up(P.catch_up(store, app))
    assert table_totals(store) == oracle_totals(store)


def test_retry_is_journaled_with_the_error_it_cleared_and_status_shows_it(
    store_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    env = {"CQRSCTL_TEST_POISON_FLAG": str(flag)}
    base = ("--db", store_url, "--app", SUPPORT_APP, "--actor", "ops@test")
    with open_store(store_url) as s:
        bad = s.append("S-2", [NewEvent("Added", {"n": 3, "poison": True})]).positions[0]
    assert cli(*base, "projections", "catch-up", "--retries", "0", env=env).code == 14
    flag.unlink()
    cli(*base, "projections", "retry", "totals", env=env).ok()
    status = cli(*base, "--json", "projections", "status", "totals").ok().jsonl()[0]
    assert status["last_retry"]["actor"] == "ops@test"
    assert f"at position {bad}" in status["last_retry"]["result"]["error"]
    text = cli(*base, "projections", "status", "totals").ok().stdout
    assert "last retry" in text and "ops@test" in text


def test_cli_skip_names_the_failed_event_and_unskip_says_when_it_applies(
    store_url: str, tmp_path: Path
) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    env = {"CQRSCTL_TEST_POISON_FLAG": str(flag)}
    base = ("--db", store_url, "--app", SUPPORT_APP)
    with open_store(store_url) as s:
        bad = s.append("S-2", [NewEvent("Added", {"n": 3, "poison": True})]).positions[0]
    assert cli(*base, "projections", "catch-up", "--retries", "0", env=env).code == 14
    assert_error(
        cli(*base, "projections", "skip", "totals", "--position", "99"), 6, "no event at position 99"
    )
    skipped = cli(*base, "projections", "skip", "totals", "--reason", "known bad", env=env).ok()
    assert f"position {bad}" in skipped.stderr
    text = cli(*base, "projections", "status", "totals").ok().stdout
    assert "reason known bad" in text and "poison" in text
    undone = cli(*base, "projections", "unskip", "totals", "--position", str(bad)).ok()
    assert "next catch-up" in undone.stderr or "rebuild" in undone.stderr


# -- the journal and audit ------------------------------------------------------------------------------


def test_every_administrative_command_leaves_one_journal_row_without_secrets(
    store_url: str, backend: str, tmp_path: Path
) -> None:
    url = store_url.replace("postgresql://postgres@", "postgresql://postgres:jS3cret@")
    base = ("--db", url, "--actor", "alice@ops")
    cli(*base, "init").ok()
    cli(*base, "--app", BANK_APP, "dispatch", "--file", str(BANK_COMMANDS)).ok()
    cli(*base, "--app", BANK_APP, "projections", "rebuild", "balances").ok()
    cli(*base, "--app", BANK_APP, "projections", "reset", "balances", "--yes").ok()
    cli(*base, "--app", BANK_APP, "snapshots", "delete", "--all", "--yes").ok()
    cli(*base, "outbox", "retry", "--dead").ok()
    cli(*base, "outbox", "purge", "--delivered", "--older-than", "1d", "--yes").ok()
    export = tmp_path / "e.jsonl"
    cli(*base, "export", "-o", str(export)).ok()
    rows = cli(*base, "--json", "audit").ok().jsonl()
    assert [r["kind"] for r in rows] == [
        "init", "projections rebuild", "projections reset", "snapshots delete", "outbox retry",
        "outbox purge",
    ]  # fmt: skip
    assert all(r["actor"] == "alice@ops" for r in rows)
    assert rows[1]["result"]["events"] > 0 and rows[2]["result"]["tables"]["balances"] > 0
    text = cli(*base, "audit").ok().stdout + str(rows)
    assert "jS3cret" not in text
    assert [r["kind"] for r in cli(*base, "--json", "audit", "--kind", "outbox").ok().jsonl()] == [
        "outbox retry", "outbox purge",
    ]  # fmt: skip
    assert cli(*base, "--json", "audit", "--since", "1h").ok().jsonl() == rows
    assert cli(*base, "--json", "audit", "--since", "2999-01-01T00:00:00Z").ok().jsonl() == []


# -- confirmations, dry runs, durations ----------------------------------------------------------------------


@pytest.mark.parametrize("age", ["-7d", "-0.5s", "inf", "1e30d", "nan", "7x", "²d", ""])
def test_purge_refuses_durations_that_are_not_positive_and_finite(store_url: str, age: str) -> None:
    result = cli("--db", store_url, "outbox", "purge", "--delivered", "--older-than", age)
    assert_error(result, 2, "duration")


def test_purge_dry_run_counts_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    fill(store, accounts=2, deposits=2)
    outbox.drain(store, open_sink(f"file://{tmp_path / 'out.jsonl'}"))
    delivered = outbox.status(store).counts["delivered"]
    assert delivered > 0
    future = outbox.status(store).now + timedelta(days=2)
    assert outbox.purge(store, ["delivered"], timedelta(days=1), now=future, dry_run=True) == delivered
    assert outbox.status(store).counts["delivered"] == delivered
    assert "outbox purge" not in kinds(store)
    assert outbox.purge(store, ["delivered"], timedelta(days=1), now=future) == delivered
    assert outbox.status(store).counts["delivered"] == 0
    assert kinds(store)[-1] == "outbox purge"


def test_reset_dry_run_says_what_it_would_drop(store_url: str) -> None:
    base = ("--db", store_url, "--app", BANK_APP)
    cli(*base, "dispatch", "--file", str(BANK_COMMANDS)).ok()
    cli(*base, "projections", "rebuild", "balances").ok()
    plan = cli(*base, "--json", "projections", "reset", "balances", "--dry-run").ok().json()
    assert plan["reset"] is False and plan["tables"]["balances"] > 0
    status = cli(*base, "--json", "projections", "status", "balances").ok().jsonl()[0]
    assert status["position"] == plan["position"] > 0


def test_destructive_commands_ask_at_a_terminal_and_no_changes_nothing(store_url: str) -> None:
    base = ["--db", store_url, "--app", BANK_APP]
    cli(*base, "dispatch", "--file", str(BANK_COMMANDS)).ok()
    cli(*base, "projections", "rebuild", "balances").ok()
    with open_store(store_url) as store:
        before = [e.to_dict() for e in journal.entries(store)]
    code, out = at_a_terminal([*base, "projections", "reset", "balances"], b"n\n")
    assert code == 16 and "Reset balances: drop balances (" in out and "nothing changed" in out, out
    with open_store(store_url) as store:
        assert [e.to_dict() for e in journal.entries(store)] == before
        assert P.status(store, app_of_bank())[0].position > 0
    code, out = at_a_terminal([*base, "projections", "reset", "balances"], b"y\n")
    assert code == 0, out
    with open_store(store_url) as store:
        assert journal.entries(store)[-1].kind == "projections reset"


def app_of_bank() -> Any:
    from cqrsctl.loader import load_app

    return load_app(BANK_APP)
