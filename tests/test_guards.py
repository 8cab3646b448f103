"""Guard rails: core tables out of user code's reach, append-only events, secrets that
never leave, an init that repairs and a doctor that reports instead of crashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import all_events, assert_error, cli
from outbox_support import fill

from cqrsctl import errors
from cqrsctl.app import App
from cqrsctl.projection import Projection, Table
from cqrsctl.redaction import redact, scrub
from cqrsctl.services import outbox
from cqrsctl.sinks import open_sink
from cqrsctl.store import NewEvent, Store, open_store

# -- core tables and read-model collisions ----------------------------------------------------

APP_WITH_TABLE = """
from cqrsctl.app import App
from cqrsctl.projection import Projection, Table

app = App("collide")

@app.projection
class Bad(Projection, name="bad"):
    tables = {{"{table}": Table({{"id": "text"}}, key=["id"])}}

    def on_Added(self, event, rm):
        rm.upsert("{table}", {{"id": event.stream_id}})
"""


def _projection(name: str, table: str) -> type[Projection]:
    def on_Added(self: Projection, event: object, rm: object) -> None:  # noqa: N802
        pass

    return type(
        name,
        (Projection,),
        {"tables": {table: Table({"id": "text"}, key=["id"])}, "on_Added": on_Added},
        name=name,
    )  # type: ignore[return-value]


@pytest.mark.parametrize(
    "table",
    ["events", "outbox", "checkpoints", "snapshots", "cqrsctl_schema", "cqrsctl_journal", "events_pkey"],
)
def test_a_read_model_table_named_like_a_core_table_is_refused_when_the_app_is_built(table: str) -> None:
    app = App("t")
    with pytest.raises(errors.AppError, match=f"'{table}'"):
        app.projection(_projection("p", table))
    assert not app.projections


def test_two_projections_declaring_one_table_are_refused_naming_both() -> None:
    app = App("t")
    app.projection(_projection("first", "shared"))
    with pytest.raises(errors.AppError) as caught:
        app.projection(_projection("second", "shared"))
    assert (
        "'first'" in str(caught.value) and "'second'" in str(caught.value) and "'shared'" in str(caught.value)
    )
    assert list(app.projections) == ["first"]


def test_a_projection_named_like_the_saga_runners_checkpoint_is_refused(
    store_url: str, tmp_path: Path
) -> None:
    app = App("t")
    with pytest.raises(errors.AppError, match="saga runner"):
        app.projection(_projection("sagas", "saga_rows"))
    assert not app.projections
    app_file = tmp_path / "sagas_named.py"
    app_file.write_text(APP_WITH_TABLE.format(table="rows").replace('name="bad"', 'name="sagas"'))
    assert_error(
        cli("--db", store_url, "--app", str(app_file), "projections", "rebuild", "sagas"), 8, "saga runner"
    )
    with open_store(store_url) as store, store.reader() as tx:
        assert tx.tracking.get("sagas") is None and not tx.read_models.table_exists("rows")


@pytest.mark.parametrize("command", [("projections", "rebuild", "bad"), ("projections", "reset", "bad")])
def test_a_projection_over_the_events_table_cannot_run_and_the_events_survive(
    store_url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    with open_store(store_url) as store:
        store.append("A-1", [NewEvent("Added", {"n": 1})])
    app_file = tmp_path / "collide.py"
    app_file.write_text(APP_WITH_TABLE.format(table="events"))
    result = cli("--db", store_url, "--app", str(app_file), *command)
    assert_error(result, 8, "'events'", "table of the store itself")
    assert [e.event_type for e in all_events(store_url)] == ["Added"]


def test_read_model_operations_never_touch_core_tables(store: Store) -> None:
    for name in ("events", "outbox", "events__rebuild"):
        with pytest.raises(errors.UsageError), store.transaction() as tx:
            tx.read_models.drop_table(name)
    with pytest.raises(errors.UsageError), store.transaction() as tx:
        tx.read_models.rename_table("mine", "events")
    assert store.schema_problems() == []


# -- append-only events -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET event_type = 'Changed'",
        "DELETE FROM events",
        "UPDATE cqrsctl_journal SET actor = 'x'",
        "DELETE FROM cqrsctl_journal",
    ],
)
def test_the_database_refuses_to_change_or_delete_stored_events(store: Store, statement: str) -> None:
    store.append("A-1", [NewEvent("Added", {"n": 1}), NewEvent("Added", {"n": 2})])
    before = [e.to_dict() for e in store.iter_all()]
    with pytest.raises(Exception, match="append-only"), store.transaction() as tx:
        tx.read_models.execute(statement)
    assert [e.to_dict() for e in store.iter_all()] == before
    with store.reader() as tx:
        assert len(tx.journal.select()) == 1  # the init of the fixture's migration


def test_postgres_refuses_truncate_of_events(store: Store) -> None:
    if store.backend == "sqlite":
        pytest.skip("SQLite has no TRUNCATE (DELETE is refused above)")
    store.append("A-1", [NewEvent("Added", {"n": 1})])
    for table in ("events", "cqrsctl_journal"):
        with pytest.raises(Exception, match="append-only"), store.transaction() as tx:
            tx.read_models.execute(f"TRUNCATE {table}")
    assert len(list(store.iter_all())) == 1


def test_an_administrator_can_lift_the_guard_deliberately_and_init_puts_it_back(store: Store) -> None:
    store.append("A-1", [NewEvent("Added", {"n": 1})])
    lift = (
        ["DROP TRIGGER events_append_only_delete"]
        if store.backend == "sqlite"
        else ["ALTER TABLE events DISABLE TRIGGER events_append_only"]
    )
    with store.transaction() as tx:
        for statement in lift:
            tx.read_models.execute(statement)
        tx.read_models.execute("DELETE FROM events")
    assert list(store.iter_all()) == []
    assert any("append-only trigger" in p for p in store.schema_problems())
    result = store.initialise("admin@test")
    assert any("append-only trigger" in p for p in result["repaired"])
    assert store.schema_problems() == []
    store.append("A-1", [NewEvent("Added", {"n": 1})])
    with pytest.raises(Exception, match="append-only"), store.transaction() as tx:
        tx.read_models.execute("DELETE FROM events")


# -- init repairs, doctor reports ----------------------------------------------------------------


def test_doctor_reports_a_missing_core_table_and_init_recreates_it(store_url: str) -> None:
    cli("--db", store_url, "init").ok()
    with open_store(store_url) as store, store.transaction() as tx:
        tx.read_models.execute("DROP TABLE outbox")
    result = cli("--db", store_url, "doctor")
    assert_error(result, 10, "core table outbox is missing")
    doc = cli("--db", store_url, "--json", "doctor")
    assert doc.code == 10 and doc.json()["healthy"] is False
    init = cli("--db", store_url, "init")
    assert init.code == 0 and "repaired: core table outbox is missing" in init.stderr
    cli("--db", store_url, "doctor").ok()


def test_init_names_what_it_cannot_repair(store_url: str) -> None:
    cli("--db", store_url, "init").ok()
    with open_store(store_url) as store, store.transaction() as tx:
        tx.read_models.execute("ALTER TABLE snapshots DROP COLUMN taken_at")
    assert_error(cli("--db", store_url, "init"), 10, "core table snapshots lacks column(s) taken_at")
    assert_error(cli("--db", store_url, "doctor"), 10, "snapshots lacks column(s) taken_at")


# -- secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("nats://S3CRETTOKEN@127.0.0.1:4222", ["S3CRETTOKEN"]),
        ("postgresql://u@127.0.0.1/db?password=pw1", ["pw1"]),
        ("postgresql://u:p@ss@127.0.0.1/db", ["p@ss"]),
        ("redis://127.0.0.1:6379/0?password=rpw", ["rpw"]),
        (
            "http://127.0.0.1/h?token=t0k&secret=a%40b&secret=second&api_key=kk&Pass%77ord=enc",
            ["t0k", "a%40b", "a@b", "second", "kk", "enc"],
        ),
        ("amqp://guest:gu%40est@127.0.0.1:5672/%2F", ["gu%40est", "gu@est"]),
    ],
)
def test_redact_hides_every_kind_of_secret(url: str, secrets: list[str]) -> None:
    shown = redact(url)
    assert "***" in shown and "127.0.0.1" in shown
    for secret in secrets:
        assert secret not in shown
        assert secret not in scrub(f"failed: {url} ({secret})", url)


def test_redact_leaves_urls_without_secrets_alone() -> None:
    for url in ("sqlite:////tmp/a@b.db", "stdout", "file:///tmp/x.jsonl", "nats://127.0.0.1:4222?stream=s"):
        assert redact(url) == url


def test_no_secret_in_errors_verbose_output_or_doctor(store_url: str, backend: str) -> None:
    if backend == "postgres":
        # Trust authentication ignores the password; the URL still carries it everywhere.
        url = store_url.replace("postgresql://postgres@", "postgresql://postgres:pgS3cret@")
        secret = "pgS3cret"
        bad = "postgresql://postgres:pgS3cret@127.0.0.1:1/test?connect_timeout=1"
    else:
        url, secret = store_url, None
        bad = "postgresql://tok3nonly@127.0.0.1:1/test?connect_timeout=1"
    cli("--db", url, "init").ok()
    doctor = cli("--db", url, "-v", "--json", "doctor").ok()
    err = cli("--db", bad, "streams", "list")
    assert err.code == 7
    for out in (doctor.stdout + doctor.stderr, err.stderr):
        for word in filter(None, [secret, "pgS3cret", "tok3nonly"]):
            assert word not in out


def test_sink_secrets_stay_out_of_stored_errors_and_reports(store: Store) -> None:
    fill(store, accounts=1, deposits=1)
    url = "http://user:pw1@127.0.0.1:1/hook?token=t0ken&secret=s%40cret&secret=again"
    report = outbox.drain(store, open_sink(url, timeout=1))
    assert report.exit_code == 12
    rows = outbox.list_messages(store, "pending", limit=None)
    assert any(m.last_error for m in rows)  # the error is stored: check that it hides the secrets
    text = str(report.to_dict()) + " ".join(m.last_error or "" for m in rows)
    for word in ("pw1", "t0ken", "s%40cret", "s@cret", "again"):
        assert word not in text, text
