"""Reading never writes, output is safe and complete, and the internal-error list of
the guard-rails work: each input gets its documented exit code and one line."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from helpers import BANK_APP, assert_error, cli

from cqrsctl.store import NewEvent, open_store
from cqrsctl.store.base import SCHEMA_VERSION
from cqrsctl.store.postgres import parse_postgres_url

READ_COMMANDS = [
    ("streams", "list"),
    ("streams", "show", "A-1"),
    ("events",),
    ("export",),
    ("audit",),
    ("doctor",),
    ("outbox", "status"),
    ("outbox", "list"),
    ("sagas", "list"),
    ("replay", "--aggregate", "A-1"),
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=[" ".join(c) for c in READ_COMMANDS])
def test_reading_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "mistyped.db"
    result = cli("--db", f"sqlite:///{path}", *command)
    # doctor always reports (its failed check is the connection) and exits 10 for unhealthy.
    assert_error(result, 10 if command == ("doctor",) else 7, f"no store at {path}; run `cqrsctl init`")
    assert list(tmp_path.iterdir()) == []


def _schema_exists(url: str) -> bool:
    conninfo, schema = parse_postgres_url(url)
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


@pytest.mark.postgres
def test_reading_a_postgres_schema_that_is_not_there_creates_nothing(pg_dsn: str) -> None:
    url = f"{pg_dsn}?schema=t_never_created_by_a_read"
    for command in (("streams", "list"), ("events",), ("audit",), ("outbox", "status")):
        assert_error(cli("--db", url, *command), 7, "no store at", "run `cqrsctl init`")
    assert_error(cli("--db", url, "doctor"), 10, "not initialised")
    assert not _schema_exists(url)


def test_read_commands_do_not_migrate(store_url: str) -> None:
    with open_store(store_url) as store, store.transaction() as tx:
        tx.read_models.execute(f"DELETE FROM cqrsctl_schema WHERE version = {SCHEMA_VERSION}")
    for command in (("streams", "list"), ("events",), ("outbox", "status")):
        cli("--db", store_url, *command).ok()
    with open_store(store_url, migrate=False) as store:
        assert store.schema_version() == SCHEMA_VERSION - 1
    cli("--db", store_url, "init").ok()
    with open_store(store_url, migrate=False) as store:
        assert store.schema_version() == SCHEMA_VERSION


def test_verbose_says_where_each_setting_came_from(store_url: str, tmp_path: Path) -> None:
    cli("--db", store_url, "init").ok()
    result = cli("-v", "--db", store_url, "--app", BANK_APP, "streams", "list").ok()
    assert "(flag)" in result.stderr and f"app {BANK_APP} (flag)" in result.stderr
    result = cli("-v", "streams", "list", env={"CQRSCTL_DB": store_url}).ok()
    assert "(env CQRSCTL_DB)" in result.stderr


# -- safe and complete output -------------------------------------------------------------------------


def test_control_characters_in_data_are_escaped_and_long_ids_are_whole(store_url: str) -> None:
    evil = "Evil-\x1b]0;pwned\x07\x1b[2J\u202e"
    long = "Long-" + "x" * 300
    with open_store(store_url) as store:
        store.append(evil, [NewEvent("Added", {"note": "\x1b[31mred"})])
        store.append(long, [NewEvent("Added", {})])
    for command in (("streams", "list"), ("events",), ("streams", "show", evil)):
        out = cli("--db", store_url, *command).ok()
        text = out.stdout + out.stderr
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    listing = cli("--db", store_url, "streams", "list", env={"COLUMNS": "80"}).ok().stdout
    assert "Evil-\\x1b]0;pwned\\x07\\x1b[2J\\u202e" in listing
    assert long in listing  # not wrapped, not cut: stdout is not a terminal
    assert all("\n" not in line for line in listing.splitlines())
    missing = cli("--db", store_url, "streams", "show", "Nope-\x1b[2J")
    assert_error(missing, 6, "Nope-\\x1b[2J")


# -- the internal-error list ------------------------------------------------------------------------------

HUGE = "99999999999999999999999"
INTERNAL_ERRORS = [
    (("events", "--limit", HUGE), 2, "--limit"),
    (("events", "--from-position", HUGE), 2, "--from-position"),
    (("streams", "list", "--limit", HUGE), 2, "--limit"),
    (("--app", BANK_APP, "projections", "skip", "balances", "--position", HUGE), 2, "--position"),
    (("append", "A-1", "X", "--data", "{}", "--expected-version", "²"), 2, "expected version"),
    (("events", "--limit", "²"), 2, "--limit"),
    (("replay", "--aggregate", "A-1", "--as-of", "9999-12-31T23:59:59-23:59"), 2, "--as-of"),
    (("export", "-o", "/dev/full"), 15, "/dev/full"),
    (("outbox", "drain", "--sink", "stdout", "--timeout", "inf"), 2, "not a duration"),
    (("append", "A-1", "X", "--data", '{"a": ' + "[" * 300 + "]" * 300 + "}"), 3, "JSON"),
]


@pytest.mark.parametrize(
    ("args", "code", "needle"), INTERNAL_ERRORS, ids=[" ".join(a)[:60] for a, _, _ in INTERNAL_ERRORS]
)
def test_formerly_internal_errors_have_their_code_and_one_line(
    store_url: str, args: tuple[str, ...], code: int, needle: str
) -> None:
    with open_store(store_url) as store:
        store.append("A-1", [NewEvent("Added", {})])
    assert_error(cli("--db", store_url, *args), code, needle)


@pytest.mark.postgres
def test_system_schemas_are_usage_errors(pg_dsn: str) -> None:
    assert_error(cli("--db", f"{pg_dsn}?schema=pg_catalog", "streams", "list"), 2, "pg_catalog")
    assert_error(cli("--db", f"{pg_dsn}?schema=information_schema", "init"), 2, "information_schema")


def test_negative_query_limit_is_a_usage_error(store_url: str) -> None:
    base = ("--db", store_url, "--app", BANK_APP)
    cli(*base, "dispatch", "OpenAccount", "--data", '{"account_id": "A-1", "owner": "Ada"}').ok()
    cli(*base, "projections", "catch-up").ok()
    assert_error(cli(*base, "query", "balances", "--param", "limit=-1"), 2, "limit")
