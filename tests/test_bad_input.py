"""Bad input writes nothing: strict JSONL for append, dispatch and import, all-or-nothing
import, and a comparison of every table's rows before and after each bad input."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from helpers import BANK_APP, all_events, assert_error, cli, jsonl
from psycopg import sql

from cqrsctl.loader import load_app
from cqrsctl.services import projections
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.store import NewEvent, open_store
from cqrsctl.store.postgres import parse_postgres_url
from cqrsctl.store.sqlite import parse_sqlite_url


def every_row(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store (core and read models), in a stable order."""
    if url.startswith("sqlite"):
        path, _ = parse_sqlite_url(url)
        with sqlite3.connect(path) as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {n: sorted(map(repr, conn.execute(f'SELECT * FROM "{n}"'))) for n in names}  # type: ignore[misc]
    conninfo, schema = parse_postgres_url(url)
    with psycopg.connect(conninfo) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            ).fetchall()
        ]
        return {
            n: sorted(
                repr(r)
                for r in conn.execute(
                    sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(n))
                )
            )
            for n in names
        }  # type: ignore[misc]


BANK = load_app(BANK_APP)


@pytest.fixture
def seeded(store_url: str) -> str:
    """A store with an account, a rebuilt projection and a journal: something to damage."""
    with open_store(store_url, migrate=False) as store:
        store.initialise()
        dispatcher = Dispatcher(BANK, store)
        dispatcher.dispatch("OpenAccount", {"account_id": "A-1", "owner": "Ada"})
        dispatcher.dispatch("Deposit", {"account_id": "A-1", "amount": "10"}, command_id="dep-1")
        projections.rebuild(store, BANK, "balances")
    return store_url


def export_line(**override: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "global_position": 1, "stream_id": "Imp-1", "stream_version": 1,
        "event_id": "6f1d2a3b-0000-4000-8000-000000000001", "event_type": "Added", "schema_version": 1,
        "data": {"n": 1}, "metadata": {}, "recorded_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    line.update(override)
    return line


def raw_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


DEEP = "[" * 300 + "]" * 300

# (name, command after --db/--app, stdin or None, file content or None, exit code, needles)
BAD_INPUTS: list[tuple[str, list[str], str | None, str | None, int, tuple[str, ...]]] = [
    ("dispatch: misspelt id key", ["dispatch", "--file", "{file}"], None,
     '{"command": "Deposit", "idd": "dep-2", "data": {"account_id": "A-1", "amount": "5"}}\n', 3,
     ("line 1", 'unknown key "idd"')),
    ("dispatch: duplicate key", ["dispatch", "--file", "{file}"], None,
     '{"command": "Deposit", "id": "d3", "id": "d4", "data": {"account_id": "A-1", "amount": "5"}}\n', 3,
     ("duplicate key 'id'",)),
    ("dispatch: numeric id", ["dispatch", "--file", "{file}"], None,
     '{"command": "Deposit", "id": 7, "data": {"account_id": "A-1", "amount": "5"}}\n', 3, ('"id"',)),
    ("append: misspelt expected_version", ["append", "--file", "{file}"], None,
     '{"stream": "A-1", "type": "X", "data": {}, "expected_versoin": 0}\n', 3, ('unknown key "expected_versoin"',)),
    ("append: schema_version abc", ["append", "--file", "{file}"], None,
     '{"stream": "A-1", "type": "X", "schema_version": "abc"}\n', 3, ("line 1", "schema_version")),
    ("append: numeric event id", ["append", "--file", "{file}"], None,
     '{"stream": "A-1", "type": "X", "event_id": 12345}\n', 3, ("event_id",)),
    ("append: integer beyond 64 bits", ["append", "--file", "{file}"], None,
     '{"stream": "A-1", "type": "X", "data": {"n": 123456789012345678901234567890}}\n', 3, ("64 bits",)),
    ("append: second line bad", ["append", "--file", "{file}"], None,
     '{"stream": "A-9", "type": "X"}\n{"stream": "", "type": "X"}\n', 3, ("line 2", "stream")),
    ("append: nested 300 deep", ["append", "A-1", "X", "--unchecked", "--data", '{"a": ' + DEEP + "}"], None, None, 3, ("JSON",)),
    ("import: NUL stream id", ["import", "{file}"], None, jsonl([export_line(stream_id="A\x00")]), 3, ("NUL",)),
    ("import: empty stream id", ["import", "{file}"], None, jsonl([export_line(stream_id="")]), 3, ("stream_id",)),
    ("import: 100,000-character stream id", ["import", "{file}"], None,
     jsonl([export_line(stream_id="S" * 100_000)]), 3, ("longer than 500",)),
    ("import: stream_version true", ["import", "{file}"], None, jsonl([export_line(stream_version=True)]), 3,
     ("stream_version",)),
    ("import: stream_version 1.9", ["import", "{file}"], None, jsonl([export_line(stream_version=1.9)]), 3,
     ("stream_version",)),
    ("import: unknown key", ["import", "{file}"], None, jsonl([export_line(categry="x")]), 3,
     ('unknown key "categry"',)),
    ("import: naive timestamp", ["import", "{file}"], None,
     jsonl([export_line(recorded_at="2026-01-01T00:00:00")]), 3, ("recorded_at",)),
    ("import: timestamp out of range", ["import", "{file}"], None,
     jsonl([export_line(recorded_at="9999-12-31T23:59:59-23:59")]), 3, ("recorded_at",)),
    ("import: event id reused with other content", ["import", "{file}"], None, "{reused}", 4,
     ("line 1", "other content")),
    ("import: stream version gap", ["import", "{file}"], None, jsonl([export_line(stream_version=2)]), 4,
     ("line 1",)),
    ("outbox purge: negative age", ["outbox", "purge", "--delivered", "--older-than", "-7d"], None, None, 2,
     ("duration",)),
    ("outbox purge: infinite age", ["outbox", "purge", "--delivered", "--older-than", "inf"], None, None, 2,
     ("duration",)),
    ("skip beyond the head", ["projections", "skip", "balances", "--position", "999"], None, None, 6,
     ("no event at position 999",)),
    ("reset of an unknown projection", ["projections", "reset", "nope", "--yes"], None, None, 6, ("nope",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "args", "stdin", "content", "code", "needles"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_writes_nothing(
    seeded: str, tmp_path: Path, name: str, args: list[str], stdin: str | None, content: str | None, code: int,
    needles: tuple[str, ...],
) -> None:  # fmt: skip
    if content == "{reused}":
        first = all_events(seeded)[0]
        content = jsonl([{**first.to_dict(), "data": {"changed": True}}])
    if content is not None:
        args = [a.replace("{file}", raw_file(tmp_path, content)) for a in args]
    before = every_row(seeded)
    result = cli("--db", seeded, "--app", BANK_APP, *args, input=stdin)
    assert_error(result, code, *needles)
    assert every_row(seeded) == before


def test_import_is_all_or_nothing_for_a_bad_line_after_the_first_thousand(
    seeded: str, tmp_path: Path
) -> None:
    lines = [
        export_line(
            stream_id=f"Imp-{i // 10}",
            stream_version=i % 10 + 1,
            event_id=f"00000000-0000-4000-8000-{i:012d}",
        )
        for i in range(1500)
    ]
    path = tmp_path / "big.jsonl"
    for broken, code in (
        (dict(lines[1199], stream_version=True), 3),
        (dict(lines[1199], stream_version=9), 4),
    ):
        path.write_text(jsonl([*lines[:1199], broken, *lines[1200:]]))
        before = every_row(seeded)
        assert_error(cli("--db", seeded, "import", str(path)), code, "line 1200")
        assert every_row(seeded) == before
    path.write_text(jsonl(lines))
    dry = cli("--db", seeded, "--json", "import", str(path), "--dry-run").ok().json()
    assert dry == {"imported": 1500, "skipped": 0, "dry_run": True}
    assert len(all_events(seeded)) == 2
    assert cli("--db", seeded, "--json", "import", str(path)).ok().json()["imported"] == 1500
    assert cli("--db", seeded, "--json", "import", str(path)).ok().json() == {
        "imported": 0, "skipped": 1500,
    }  # fmt: skip
    kinds = [r["kind"] for r in cli("--db", seeded, "--json", "audit", "--kind", "import").ok().jsonl()]
    assert kinds == ["import", "import"]


def test_an_export_of_one_backend_imports_into_the_other(store_url_factory: Any, tmp_path: Path) -> None:
    source = store_url_factory()
    with open_store(source) as store:
        store.append(
            "Acc-1", [NewEvent("Opened", {"n": 2**63 - 1, "f": 1.5, "s": "é"}), NewEvent("Closed", {})]
        )
    path = tmp_path / "e.jsonl"
    cli("--db", source, "export", "-o", str(path)).ok()
    target = f"sqlite:///{tmp_path / 'target.db'}"
    cli("--db", target, "import", str(path)).ok()
    assert [e.to_dict() | {"global_position": 0} for e in all_events(target)] == [
        e.to_dict() | {"global_position": 0} for e in all_events(source)
    ]
    assert orjson.loads(path.read_bytes().splitlines()[0])["data"]["n"] == 2**63 - 1


@pytest.mark.skipif(os.environ.get("CQRSCTL_STRESS") != "1", reason="200,000 streams: set CQRSCTL_STRESS=1")
def test_an_import_of_more_streams_than_the_server_has_locks_is_one_transaction(
    store_url: str, tmp_path: Path
) -> None:
    # PostgreSQL's shared lock table (max_locks_per_transaction × max_connections, with
    # some slack) is out of memory long before 200,000 advisory locks, one per stream.
    n = 200_000
    path = tmp_path / "wide.jsonl"
    path.write_text(
        jsonl(
            export_line(stream_id=f"W-{i}", event_id=f"00000000-0000-4000-8000-{i:012d}")
            for i in range(n)  # type: ignore[arg-type]
        )
    )
    assert cli("--db", store_url, "--json", "import", str(path)).ok().json() == {"imported": n, "skipped": 0}
