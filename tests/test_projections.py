"""Projections on both backends: catch-up, rebuild (shadow tables, swap, resume), stale
versions, poison events with skip/retry, reset, status, doctor and the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from helpers import BANK_APP, BANK_COMMANDS, USERS_APP, USERS_COMMANDS, assert_error, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_support import (
    Totals,
    app,
    append_random,
    checkpoint_and_totals,
    oracle_totals,
    read_table,
    table_totals,
)

from cqrsctl.app import App
from cqrsctl.errors import BatchError, IncompleteError, LockedError, NotFoundError, UsageError
from cqrsctl.loader import load_app
from cqrsctl.projection import EventView, Projection, ReadModel, Table
from cqrsctl.services import projections as P
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.services.query import run_query
from cqrsctl.store import NewEvent, Store, open_store

ROOT = Path(__file__).resolve().parent.parent
SUPPORT_APP = str(Path(__file__).with_name("projection_support.py")) + ":app"

bank = load_app(BANK_APP)


def _bank_balances(store: Store) -> dict[str, tuple[Decimal, bool]]:
    rows = read_table(store, "balances", "account_id")
    return {r["account_id"]: (Decimal(str(r["balance"])), bool(r["closed"])) for r in rows}


def _dispatch_file(store: Store, the_app: App, path: Path, limit: int | None = None) -> None:
    from cqrsctl.services.dispatch import parse_batch

    items = list(parse_batch(path.read_bytes().splitlines(), None))[:limit]
    Dispatcher(the_app, store).dispatch_many(items, continue_on_error=True)


# -- the vertical slice -------------------------------------------------------------------------


def test_catch_up_matches_the_aggregates_and_queries_read_it(store: Store) -> None:
    _dispatch_file(store, bank, BANK_COMMANDS, 400)
    results = P.catch_up(store, bank)
    assert {r.name: r.outcome for r in results} == {"balances": "caught-up", "daily_totals": "caught-up"}
    P.check_catch_up(results)
    table = _bank_balances(store)
    assert table
    for account, (balance, closed) in table.items():
        state = run_query(bank, store, "account", {"account_id": account})
        assert Decimal(str(state["balance"])) == balance and state["closed"] == closed
    row = run_query(bank, store, "balance", {"account_id": next(iter(table))})
    assert Decimal(str(row["balance"])) == table[next(iter(table))][0]
    listed = run_query(bank, store, "balances", {})
    assert [r["account_id"] for r in listed] == sorted(table)
    totals = run_query(bank, store, "daily_totals", {})
    moves = sum(1 for e in store.iter_all(types=["MoneyDeposited", "MoneyWithdrawn"]))
    assert sum(r["count"] for r in totals) == moves
    with pytest.raises(NotFoundError):
        run_query(bank, store, "balance", {"account_id": "nope"})
    status = {s.name: s for s in P.status(store, bank)}
    assert status["balances"].position == store.head() and status["balances"].lag_events == 0
    assert status["balances"].state == "idle"


def test_users_projection(store: Store) -> None:
    users = load_app(USERS_APP)
    _dispatch_file(store, users, USERS_COMMANDS, 200)
    P.check_catch_up(P.catch_up(store, users))
    rows = run_query(users, store, "users", {})
    assert rows and all(r["email"] == r["email"].lower() for r in rows)
    for r in rows[:20]:
        state = run_query(users, store, "user", {"user_id": r["user_id"]})
        assert (state["role"], state["active"], state["email"]) == (r["role"], r["active"], r["email"])


def test_position_moves_to_head_past_events_a_projection_ignores(store: Store) -> None:
    append_random(store, 30, seed=1)
    store.append("Other-1", [NewEvent("Unrelated", {}) for _ in range(7)])
    P.check_catch_up(P.catch_up(store, app))
    st_ = {s.name: s for s in P.status(store, app)}
    assert st_["totals"].position == store.head() == 37
    assert table_totals(store) == oracle_totals(store)


def test_rebuild_equals_incremental_and_swaps(store: Store) -> None:
    append_random(store, 700, seed=2)
    P.catch_up(store, app, batch=64)
    before = table_totals(store)
    assert before == oracle_totals(store)
    seen_during: list[dict[str, Any]] = []

    def peek(n: int) -> None:
        # Readers during a rebuild see the live (old) tables, never the shadow.
        seen_during.append(table_totals(store))

    result = P.rebuild(store, app, "totals", batch=100, on_progress=peek)
    assert result.events == 700 and result.position == store.head()
    assert seen_during and all(s == before for s in seen_during[:-1])
    assert table_totals(store) == before
    with store.reader() as tx:
        assert not tx.read_models.table_exists("totals__rebuild")
        assert tx.tracking.get("rebuild:totals") is None
    # The events are only read.
    assert sum(1 for _ in store.iter_all()) == 700


def test_interrupted_rebuild_leaves_live_tables_and_resumes(store: Store) -> None:
    append_random(store, 600, seed=3)
    P.catch_up(store, app)
    before = table_totals(store)
    calls = 0

    def interrupt(n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.rebuild(store, app, "totals", batch=100, on_progress=interrupt)
    assert table_totals(store) == before
    status = {s.name: s for s in P.status(store, app)}["totals"]
    assert status.rebuild_position == 300 and status.state == "idle"
    append_random(store, 50, seed=4)
    result = P.rebuild(store, app, "totals", batch=100)
    assert result.resumed_from == 300
    assert table_totals(store) == oracle_totals(store)


def test_a_rebuild_batch_ends_once_it_has_rebuild_dirty_rows_to_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One stream per event: each event changes a row of its own.
    for i in range(100):
        store.append(f"Counter-{i}", [NewEvent("Added", {"n": 1})])
    monkeypatch.setattr(P, "REBUILD_DIRTY", 30)
    monkeypatch.setattr(P, "PAGE", 10)
    batches: list[int] = []
    result = P.rebuild(store, app, "totals", on_progress=batches.append)
    assert result.events == 100 and sum(batches) == 100
    # Pages of 10 are read until 30 rows wait to be written: 30 events a batch, then the rest.
    assert batches[:3] == [30, 30, 30]
    assert table_totals(store) == oracle_totals(store)


def test_a_second_rebuild_waits_for_a_running_one(store: Store) -> None:
    append_random(store, 300, seed=5)

    tried = []
    done = 0

    def nested(n: int) -> None:
        nonlocal done
        done += n
        if done < 300:
            tried.append(done)
            with pytest.raises(LockedError):
                P.rebuild(store, app, "totals")

    P.rebuild(store, app, "totals", batch=100, on_progress=nested)
    assert tried


def _versioned(version: int) -> App:
    class TotalsV(Totals, name="totals", version=version):
        pass

    other = App(f"v{version}")
    other.projection(TotalsV)
    return other


def test_changed_version_is_stale_until_rebuilt(store: Store) -> None:
    append_random(store, 100, seed=6)
    P.catch_up(store, app)
    v2 = _versioned(2)
    assert P.status(store, v2)[0].state == "stale-version"
    results = P.catch_up(store, v2)
    assert results[0].outcome == "stale"
    with pytest.raises(BatchError, match="stale"):
        P.check_catch_up(results)
    plan = P.plan_rebuild(store, v2, "totals")
    assert plan.live_version == "1" and plan.version == 2
    P.rebuild(store, v2, "totals")
    s = P.status(store, v2)[0]
    assert (s.state, s.stored_version, s.position) == ("idle", "2", store.head())
    assert P.status(store, app, ["totals"])[0].state == "stale-version"


def test_reset_drops_and_the_next_catch_up_rebuilds(store: Store) -> None:
    append_random(store, 120, seed=7)
    P.catch_up(store, app)
    P.reset(store, app, "totals")
    assert table_totals(store) == {}
    assert {s.name: s.position for s in P.status(store, app)}["totals"] == 0
    P.catch_up(store, app, ["totals"])
    assert table_totals(store) == oracle_totals(store)


def test_catch_up_timeout_is_incomplete(store: Store) -> None:
    append_random(store, 200, seed=8)
    results = P.catch_up(store, app, ["totals"], timeout=0, batch=10)
    assert results[0].outcome == "timeout"
    with pytest.raises(IncompleteError):
        P.check_catch_up(results)
    # What was done is kept and consistent.
    position, rows = checkpoint_and_totals(store)
    assert rows == oracle_totals(store, position)


def test_read_model_api(store: Store) -> None:
    class Kitchen(Projection, name="kitchen"):
        tables = {
            "kv": Table(
                {
                    "k": "text",
                    "n": "int",
                    "f": "float",
                    "d": "decimal",
                    "b": "bool",
                    "j": "json",
                    "t": "timestamp",
                },
                key=["k"],
            ),
            "pairs": Table({"a": "text", "b": "int", "v": "text"}, key=["a", "b"], indexes=[["v"]]),
        }

        def on_Kitchen(self, event: EventView, rm: ReadModel) -> None:
            rm.insert("kv", {"k": "x", "n": 1, "f": 1.5, "d": Decimal("0.10"), "b": True, "j": {"a": [1]},
                             "t": event.recorded_at})  # fmt: skip
            with pytest.raises(ValueError):
                rm.insert("kv", {"k": "x"})
            assert rm.update("kv", {"k": "x", "n": 2})
            assert not rm.update("kv", {"k": "nope", "n": 2})
            rm.upsert("kv", {"k": "y", "n": 5})
            row = rm.edit("kv", k="y")
            assert row is not None and rm.edit("kv", k="none") is None
            row["n"] += 1
            assert rm.get("kv", k="y")["n"] == 6  # type: ignore[index]
            rm.delete("kv", k="y")
            assert rm.get("kv", k="y") is None
            rm.upsert("pairs", {"a": "p", "b": 1, "v": "one"})
            rm.upsert("pairs", {"a": "p", "b": 2, "v": "two"})
            rm.delete("pairs", a="p", b=1)
            assert [r["b"] for r in rm.all("pairs", a="p")] == [2]
            assert rm.query("SELECT count(*) AS c FROM {pairs} WHERE v = :v", v="two")[0]["c"] == 1
            rm.sql("UPDATE {kv} SET n = n + :by WHERE k = :k", {"by": 40, "k": "x"})
            assert rm.get("kv", k="x")["n"] == 42  # type: ignore[index]
            with pytest.raises(UsageError):
                rm.upsert("kv", {"k": "z", "nope": 1})
            with pytest.raises(UsageError, match="unknown column.* nope"):
                rm.upsert("kv", {"k": "x", "nope": 1})  # an existing row
            kept = rm.get("kv", k="x")
            assert kept is not None and kept["n"] == 42 and "nope" not in kept
            with pytest.raises(UsageError):
                rm.get("missing", k="x")

    kitchen = App("kitchen")
    kitchen.projection(Kitchen)
    store.append("K-1", [NewEvent("Kitchen", {})])
    P.check_catch_up(P.catch_up(store, kitchen))
    row = read_table(store, "kv", "k")
    assert len(row) == 1
    with store.reader() as tx:
        typed = tx.read_models.fetch("kv", Kitchen.tables["kv"], [("x",)])[0]
    assert typed["n"] == 42 and typed["f"] == 1.5 and typed["d"] == Decimal("0.10")
    assert typed["b"] is True and typed["j"] == {"a": [1]} and typed["t"].tzinfo is not None
    P.rebuild(store, kitchen, "kitchen")
    with store.reader() as tx:
        assert tx.read_models.fetch("kv", Kitchen.tables["kv"], [("x",)])[0] == typed


def test_read_model_rows_are_written_in_bulk_even_when_a_column_mixes_python_types(store: Store) -> None:
    spec = Table({"k": "text", "f": "float", "d": "decimal", "j": "json", "n": "int"}, key=["k"])
    mixed = [
        {"k": "a", "f": 1, "d": 2, "j": [1], "n": 3},
        {"k": "b", "f": 2.5, "d": Decimal("0.5"), "j": None},
    ]
    plain = [{"k": f"p{i}", "f": i / 2, "d": Decimal(i) / 4, "j": {"i": i}, "n": i} for i in range(300)]
    with store.transaction() as tx:
        tx.read_models.create_table("mixed", spec)
        tx.read_models.write("mixed", spec, mixed)
        tx.read_models.write("mixed", spec, plain)
        tx.read_models.write(
            "mixed", spec, [{"k": "p1", "f": 9.0, "d": Decimal("9.5"), "j": None, "n": None}]
        )
    with store.reader() as tx:
        rows = {r["k"]: r for r in tx.read_models.select("mixed", spec)}
    assert len(rows) == 302
    assert rows["a"] == {"k": "a", "f": 1.0, "d": Decimal(2), "j": [1], "n": 3}
    assert rows["b"] == {"k": "b", "f": 2.5, "d": Decimal("0.5"), "j": None, "n": None}
    assert rows["p7"] == {"k": "p7", "f": 3.5, "d": Decimal("1.75"), "j": {"i": 7}, "n": 7}
    assert rows["p1"] == {"k": "p1", "f": 9.0, "d": Decimal("9.5"), "j": None, "n": None}


class Churn(Projection, name="churn"):
    """Keyed writes that undo each other within a batch (delete then insert, get after a
    write), queries that must see pending writes, and the columns lean pages leave out."""

    tables = {
        "live": Table({"stream": "text", "n": "int", "total": "int"}, key=["stream"]),
        "seen": Table(
            {"position": "int", "live_rows": "int", "event_id": "text", "at": "timestamp"}, key=["position"]
        ),
    }

    def on_Added(self, event: EventView, rm: ReadModel) -> None:
        s, n = event.stream_id, event.data["n"]
        row = rm.get("live", stream=s)
        if row is not None and row["n"] >= 3:
            rm.delete("live", stream=s)
            rm.insert("live", {"stream": s, "n": 1, "total": n})
        elif row is None:
            rm.insert("live", {"stream": s, "n": 1, "total": n})
        else:
            assert rm.update("live", {"stream": s, "n": row["n"] + 1, "total": row["total"] + n})
        assert rm.get("live", stream=s) is not None

    def on_Removed(self, event: EventView, rm: ReadModel) -> None:
        rm.delete("live", stream=event.stream_id)
        assert rm.get("live", stream=event.stream_id) is None
        live_rows = rm.query("SELECT count(*) AS c FROM {live}")[0]["c"]
        rm.insert("seen", {"position": event.position, "live_rows": live_rows, "event_id": event.event_id,
                           "at": event.recorded_at})  # fmt: skip


def _churn_oracle(store: Store) -> tuple[dict[str, tuple[int, int]], dict[int, tuple[int, str, Any]]]:
    live: dict[str, tuple[int, int]] = {}
    seen: dict[int, tuple[int, str, Any]] = {}
    for e in store.iter_all(types=["Added", "Removed"]):
        if e.event_type == "Added":
            n, total = live.get(e.stream_id, (3, 0))
            live[e.stream_id] = (1, e.data["n"]) if n >= 3 else (n + 1, total + e.data["n"])
        else:
            live.pop(e.stream_id, None)
            seen[e.global_position] = (len(live), e.event_id, e.recorded_at)
    return live, seen


def _churn_tables(store: Store) -> tuple[dict[str, tuple[int, int]], dict[int, tuple[int, str, Any]]]:
    with store.reader() as tx:
        live = tx.read_models.select("live", Churn.tables["live"])
        seen = tx.read_models.select("seen", Churn.tables["seen"])
    return (
        {r["stream"]: (r["n"], r["total"]) for r in live},
        {r["position"]: (r["live_rows"], r["event_id"], r["at"]) for r in seen},
    )


def test_read_model_cache_agrees_with_the_tables_across_pages_and_batches(
    store: Store, monkeypatch: Any
) -> None:
    churn = App("churn")
    churn.projection(Churn)
    append_random(store, 400, streams=6, seed=5, batch=7)
    expected = _churn_oracle(store)
    P.check_catch_up(P.catch_up(store, churn, batch=9))
    assert _churn_tables(store) == expected
    monkeypatch.setattr(P, "PAGE", 7)  # several pages in each transaction of a rebuild
    result = P.rebuild(store, churn, "churn", batch=20)
    assert result.events == 400
    assert _churn_tables(store) == expected
    # A cache trimmed after every batch looks rows up again and still agrees.
    monkeypatch.setattr(P, "CACHE_ROWS", 3)
    P.rebuild(store, churn, "churn", batch=20)
    assert _churn_tables(store) == expected
    P.reset(store, churn, "churn")
    P.check_catch_up(P.catch_up(store, churn, batch=9))
    assert _churn_tables(store) == expected


def test_an_event_kept_past_its_batch_has_only_what_was_read_during_it(store: Store) -> None:
    kept: list[EventView] = []

    class Keep(Projection, name="keep"):
        tables = {"t": Table({"k": "text"}, key=["k"])}

        def on_Added(self, event: EventView, rm: ReadModel) -> None:
            kept.append(event)
            if event.data.get("probe"):
                assert event.event_id and event.metadata == {}

    keeper = App("keeper")
    keeper.projection(Keep)
    store.append("S-1", [NewEvent("Added", {"n": 1}), NewEvent("Added", {"n": 1, "probe": True}),
                         NewEvent("Added", {"n": 1})])  # fmt: skip
    P.check_catch_up(P.catch_up(store, keeper))
    stored = list(store.iter_all())
    # The second event's page read the left-out columns for all its events.
    assert [e.event_id for e in kept] == [e.event_id for e in stored]
    assert kept[2].recorded_at == stored[2].recorded_at
    assert [e.data["n"] for e in kept] == [1, 1, 1]
    # A batch where no handler asked: what was read is all there is once it is over.
    store.append("S-1", [NewEvent("Added", {"n": 2})])
    kept.clear()
    P.check_catch_up(P.catch_up(store, keeper))
    assert kept[0].data == {"n": 2} and kept[0].stream_id == "S-1" and kept[0].position == 4
    with pytest.raises(UsageError):
        kept[0].recorded_at  # noqa: B018


class Versions(Projection, name="versions"):
    """Reads what bare rows leave out: the stream and schema versions."""

    tables = {
        "v": Table({"position": "int", "stream_version": "int", "schema_version": "int"}, key=["position"])
    }

    def on_Added(self, event: EventView, rm: ReadModel) -> None:
        rm.upsert("v", {"position": event.position, "stream_version": event.stream_version,
                        "schema_version": event.schema_version})  # fmt: skip


def test_handlers_reading_versions_get_them_on_every_page(store: Store, monkeypatch: Any) -> None:
    app = App("versions")
    app.projection(Versions)
    append_random(store, 60, streams=4, seed=3, batch=5)
    store.append("S-9", [NewEvent("Added", {"n": 1}, schema_version=2)])
    expected = {
        e.global_position: (e.stream_version, e.schema_version) for e in store.iter_all(types=["Added"])
    }

    def table() -> dict[int, tuple[int, int]]:
        with store.reader() as tx:
            rows = tx.read_models.select("v", Versions.tables["v"])
        return {r["position"]: (r["stream_version"], r["schema_version"]) for r in rows}

    P.check_catch_up(P.catch_up(store, app, batch=7))
    assert table() == expected
    monkeypatch.setattr(P, "PAGE", 7)
    assert P.rebuild(store, app, "versions", batch=20).events == len(expected)
    assert table() == expected


def test_projection_declarations_are_checked() -> None:
    with pytest.raises(UsageError):
        App("x").projection(type("NoTables", (Projection,), {"on_A": lambda s, e, rm: None}))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        Table({"a": "varchar"}, key=["a"])
    with pytest.raises(UsageError):
        Table({"a": "text"}, key=["b"])
    with pytest.raises(UsageError):
        type("Bad", (Projection,), {}, name="Bad-Name")


# -- poison events ---------------------------------------------------------------------------------


def test_poison_event_fails_only_its_projection_then_skip(
    store: Store, tmp_path: Path, monkeypatch: Any
) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    monkeypatch.setenv("CQRSCTL_TEST_POISON_FLAG", str(flag))
    append_random(store, 40, seed=9)
    bad = store.append("S-1", [NewEvent("Added", {"n": 1, "poison": True})]).positions[0]
    append_random(store, 40, seed=10)
    results = {r.name: r for r in P.catch_up(store, app, retries=2, backoff=0.01)}
    assert results["totals"].outcome == "failed" and str(bad) in (results["totals"].error or "")
    assert results["counts"].outcome == "caught-up"
    status = {s.name: s for s in P.status(store, app)}
    assert status["totals"].state == "failed" and status["totals"].error_position == bad
    assert status["totals"].position == bad - 1  # everything before the poison event is in
    position, rows = checkpoint_and_totals(store)
    assert rows == oracle_totals(store, position)
    with pytest.raises(BatchError, match="totals failed"):
        P.check_catch_up(list(results.values()))
    P.skip(store, app, "totals", bad)
    P.check_catch_up(P.catch_up(store, app))
    s = {s.name: s for s in P.status(store, app)}["totals"]
    assert (
        s.state == "idle"
        and [k["position"] for k in s.skipped] == [bad]
        and "poison" in s.skipped[0]["error"]
    )
    expected = oracle_totals(store)
    total, events = expected.pop("S-1")
    if events > 1:
        expected["S-1"] = (total - 1, events - 1)
    assert table_totals(store) == expected
    # A rebuild skips it too.
    P.rebuild(store, app, "totals")
    assert table_totals(store) == expected


def test_poison_event_retry_after_the_fix(store: Store, tmp_path: Path, monkeypatch: Any) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    monkeypatch.setenv("CQRSCTL_TEST_POISON_FLAG", str(flag))
    store.append("S-1", [NewEvent("Added", {"n": 5}), NewEvent("Added", {"n": 7, "poison": True})])
    assert {r.name: r.outcome for r in P.catch_up(store, app, retries=0)}["totals"] == "failed"
    with pytest.raises(UsageError):
        P.retry(store, app, "counts")
    flag.unlink()
    # Still failed until someone says retry.
    assert {r.name: r.outcome for r in P.catch_up(store, app)}["totals"] == "failed"
    P.retry(store, app, "totals")
    P.check_catch_up(P.catch_up(store, app))
    assert table_totals(store) == {"S-1": (12, 2)}


def test_a_transient_handler_error_is_retried_with_back_off(store: Store) -> None:
    attempts: list[int] = []

    class Flaky(Projection, name="flaky"):
        tables = {"flaky": Table({"k": "text", "n": "int"}, key=["k"])}

        def on_Added(self, event: EventView, rm: ReadModel) -> None:
            if event.data["n"] == 2 and len(attempts) < 2:
                attempts.append(event.position)
                raise ConnectionError("flaky")
            rm.upsert("flaky", {"k": str(event.position), "n": event.data["n"]})

    flaky = App("flaky")
    flaky.projection(Flaky)
    store.append("S-1", [NewEvent("Added", {"n": n}) for n in (1, 2, 3)])
    P.check_catch_up(P.catch_up(store, flaky, retries=3, backoff=0.01))
    assert attempts == [2, 2]
    assert [r["n"] for r in read_table(store, "flaky", "k")] == [1, 2, 3]


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_projections(store_url: str, tmp_path: Path) -> None:
    base = ("--db", store_url, "--app", BANK_APP)
    cli(*base, "-q", "dispatch", "--file", str(BANK_COMMANDS), "--continue-on-error")
    listed = cli(*base, "--format", "json", "projections", "list").ok().json()
    assert {p["name"]: p["state"] for p in listed} == {"balances": "idle", "daily_totals": "idle"}
    assert all(p["lag_events"] > 0 for p in listed)
    assert "balances" in cli(*base, "projections", "list").ok().stdout
    dry = cli(*base, "--format", "json", "projections", "rebuild", "--all", "--dry-run").ok().json()
    assert [d["name"] for d in dry] == ["balances", "daily_totals"]
    with open_store(store_url) as s, s.reader() as tx:
        assert not tx.read_models.table_exists("balances__rebuild") and not tx.tracking.checkpoints()
    caught = cli(*base, "--format", "json", "projections", "catch-up").ok().json()
    assert {c["outcome"] for c in caught} == {"caught-up"}
    rebuilt = cli(*base, "--format", "json", "projections", "rebuild", "balances").ok().json()
    assert rebuilt[0]["name"] == "balances" and rebuilt[0]["events"] > 1000
    status = cli(*base, "--format", "json", "projections", "status", "balances").ok().json()
    assert status[0]["lag_events"] == 0 and status[0]["state"] == "idle"
    assert "handles" in cli(*base, "projections", "status").ok().stdout
    shown = cli(*base, "query", "balance", "--param", "account_id=A-0001").ok().stdout
    assert "A-0001" in shown and '"' not in shown.split("balance", 2)[-1].splitlines()[0]
    assert cli(*base, "--json", "query", "balances").ok().jsonl()
    cli(*base, "projections", "reset", "daily_totals").ok()
    assert_error(cli(*base, "query", "daily_totals"), 6, "catch-up")
    assert_error(cli(*base, "projections", "rebuild", "nope"), 6, "unknown projection")
    assert_error(cli(*base, "projections", "rebuild"), 2, "--all")
    assert_error(cli(*base, "projections", "retry", "balances"), 2, "not failed")
    assert_error(cli(*base, "projections", "skip", "balances", "--position", "1"), 2, "already processed")
    assert cli(*base, "doctor").ok()
    assert_error(cli(*base, "doctor", "--max-lag", "0"), 10, "daily_totals")


def test_cli_poison_skip_and_retry(store_url: str, tmp_path: Path) -> None:
    flag = tmp_path / "poison"
    flag.touch()
    env = {"CQRSCTL_TEST_POISON_FLAG": str(flag)}
    base = ("--db", store_url, "--app", SUPPORT_APP)
    with open_store(store_url) as s:
        append_random(s, 30, seed=11)
        bad = s.append("S-2", [NewEvent("Added", {"n": 3, "poison": True})]).positions[0]
        bad2 = s.append("S-3", [NewEvent("Removed", {"n": 4, "poison": True})]).positions[0]
        append_random(s, 30, seed=12)
    failed = cli(
        *base,
        "--format",
        "json",
        "projections",
        "catch-up",
        "--retries",
        "1",
        "--retry-delay",
        "0.01",
        env=env,
    )
    assert failed.code == 14, str(failed)
    by_name = {r["name"]: r for r in failed.json()}
    assert by_name["totals"]["outcome"] == "failed" and by_name["counts"]["outcome"] == "caught-up"
    status = cli(*base, "--format", "json", "projections", "status", "totals", env=env).ok().json()[0]
    assert status["state"] == "failed" and status["error_position"] == bad and str(bad) in status["error"]
    assert "failed" in cli(*base, "projections", "list", env=env).stdout
    assert_error(cli(*base, "doctor", env=env), 10, "totals failed")
    cli(*base, "projections", "skip", "totals", "--position", str(bad), env=env).ok()
    again = cli(*base, "--format", "json", "projections", "catch-up", "--retries", "0", env=env)
    assert again.code == 14 and str(bad2) in again.stdout
    flag.unlink()
    cli(*base, "projections", "retry", "totals", env=env).ok()
    cli(*base, "projections", "catch-up", env=env).ok()
    status = cli(*base, "--format", "json", "projections", "status", "totals", env=env).ok().json()[0]
    assert status["state"] == "idle" and [s["position"] for s in status["skipped"]] == [bad]
    assert cli(*base, "doctor", env=env).ok()


# -- hypothesis: rebuild equals incremental ----------------------------------------------------------------

_commands = st.lists(
    st.tuples(
        st.sampled_from(["OpenAccount", "Deposit", "Withdraw", "CloseAccount", "catch-up"]),
        st.integers(0, 4),
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal("150"), places=2),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_commands)
def test_rebuild_equals_incremental_for_random_commands(
    store_url_factory: Callable[[], str], steps: list[tuple[str, int, Decimal]]
) -> None:
    with open_store(store_url_factory()) as store:
        dispatcher = Dispatcher(bank, store)
        for name, account, amount in steps:
            if name == "catch-up":
                P.catch_up(store, bank, batch=3)
                continue
            data: dict[str, Any] = {"account_id": f"A-{account}"}
            if name == "OpenAccount":
                data["owner"] = f"owner {account}"
            elif name in ("Deposit", "Withdraw"):
                data["amount"] = str(amount)
            try:
                dispatcher.dispatch(name, data)
            except Exception as exc:  # domain rules reject some: fine, that is part of the sequence
                assert type(exc).__name__ == "DomainError", exc
        P.check_catch_up(P.catch_up(store, bank, batch=3))
        incremental = (read_table(store, "balances", "account_id"), read_table(store, "daily_totals", "day"))
        for name in ("balances", "daily_totals"):
            P.rebuild(store, bank, name, batch=4)
        rebuilt = (read_table(store, "balances", "account_id"), read_table(store, "daily_totals", "day"))
        assert rebuilt == incremental


def test_a_lease_of_another_machine_is_waited_out(store: Store) -> None:
    append_random(store, 20, seed=13)
    other = P.Runner(store, app, Totals, "daemon:elsewhere:1:abcd", lease=1.0)
    assert other.claim() == "claimed"
    mine = P.Runner(store, app, Totals, P.owner_id("daemon"))
    assert mine.claim() == "held"
    assert mine.step().outcome == "lost"  # fenced: no lease, no step
    time.sleep(1.1)
    assert mine.claim() == "claimed"
    assert other.step().outcome == "lost"
    assert mine.step().outcome == "caught-up"
    assert table_totals(store) == oracle_totals(store)
