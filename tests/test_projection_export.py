"""`projections export`: a read model to a SQLite file, CSV, JSON or JSON Lines, from
either backend, read back with the standard library; one snapshot, streamed, and nothing
written on bad input."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import assert_error, cli, subprocess_env

from cqrsctl.loader import load_app
from cqrsctl.services import projections
from cqrsctl.services.export import export_read_model
from cqrsctl.store import NewEvent, Store, open_store

APP = '''
from decimal import Decimal
from cqrsctl.app import App
from cqrsctl.projection import Projection, Table

app = App("export-tests")


@app.projection
class Kinds(Projection, name="kinds"):
    """One row per Added event, with a column of each portable type; a second table counts."""

    tables = {
        "items": Table(
            {"id": "text", "n": "int", "f": "float", "d": "decimal", "b": "bool", "j": "json", "t": "timestamp"},
            key=["id"],
            indexes=[["n"]],
        ),
        "tally": Table({"kind": "text", "seq": "int", "count": "int"}, key=["kind", "seq"]),
    }

    def on_Added(self, event, rm):
        data = event.data
        rm.upsert("items", {
            "id": event.stream_id, "n": data.get("n"), "f": data.get("f"),
            "d": None if data.get("d") is None else Decimal(data["d"]), "b": data.get("b"),
            "j": data.get("j"), "t": event.recorded_at if data.get("n") is not None else None,
        })
        row = rm.get("tally", kind="added", seq=1) or {"count": 0}
        rm.upsert("tally", {"kind": "added", "seq": 1, "count": row["count"] + 1})


@app.projection
class Names(Projection, name="names"):
    tables = {"names": Table({"id": "text", "name": "text"}, key=["id"])}

    def on_Named(self, event, rm):
        rm.upsert("names", {"id": event.stream_id, "name": event.data["name"]})
'''

ROWS = [
    ("K-1", {"n": 1, "f": 1.5, "d": "10.50", "b": True, "j": {"a": [1, "x"]}}),
    ("K-2", {"n": -(2**62), "f": -0.25, "d": "0.0000001", "b": False, "j": [1, 2]}),
    ("K-3", {}),  # every column but the key NULL
    ("K-4", {"n": 4, "f": 0.0, "d": "123456789012345678901234567890.12", "b": True, "j": 'text, "quoted"\n'}),
]


@pytest.fixture
def app_file(tmp_path: Path) -> str:
    path = tmp_path / "export_app.py"
    path.write_text(APP)
    return str(path)


def _fill(store: Store, app_file: str) -> dict[str, datetime]:
    """The rows above, projected; returns each stream's recorded_at."""
    app = load_app(app_file)
    for stream, data in ROWS:
        store.append(stream, [NewEvent("Added", data)])
    projections.catch_up(store, app, ["kinds"])
    return {e.stream_id: e.recorded_at for e in store.iter_all()}


def _expected(recorded: dict[str, datetime]) -> list[dict[str, object]]:
    """The rows as JSON holds them: decimals and timestamps as exact strings."""
    out = []
    for stream, data in ROWS:
        empty = not data
        out.append(
            {
                "id": stream,
                "n": data.get("n"),
                "f": data.get("f"),
                "d": data.get("d"),
                "b": data.get("b"),
                "j": data.get("j"),
                "t": None if empty else recorded[stream].astimezone(UTC).isoformat().replace("+00:00", "Z"),
            }
        )
    return out


def test_export_to_every_format_and_read_it_back(store_url: str, app_file: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        recorded = _fill(store, app_file)
    expected = _expected(recorded)
    base = ("--db", store_url, "--app", app_file, "projections", "export", "kinds")
    out = tmp_path / "out"
    out.mkdir()

    result = cli(*base[:4], "--json", *base[4:], "--to", str(out / "kinds.db")).ok().json()
    assert result["tables"] == {"items": 4, "tally": 1} and result["rows"] == 5
    assert result["format"] == "sqlite" and result["position"] == 4 and result["stored_version"] == "1"
    db = sqlite3.connect(out / "kinds.db")
    types = {r[1]: (r[2], r[5]) for r in db.execute("PRAGMA table_info(items)")}
    # sqlite-utils 3 names a float column FLOAT, 4 REAL: both have REAL affinity.
    types["f"] = ("REAL", types["f"][1]) if types["f"][0] == "FLOAT" else types["f"]
    assert types == {
        "id": ("TEXT", 1), "n": ("INTEGER", 0), "f": ("REAL", 0), "d": ("TEXT", 0), "b": ("INTEGER", 0),
        "j": ("TEXT", 0), "t": ("TEXT", 0),
    }  # fmt: skip
    assert [r[5] for r in db.execute("PRAGMA table_info(tally)")] == [1, 2, 0]  # the two-column key
    assert db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'items__ix0'"
    ).fetchone()
    rows = [dict(zip(types, r, strict=True)) for r in db.execute("SELECT * FROM items ORDER BY id")]
    as_sqlite = [
        {
            **e,
            "b": None if e["b"] is None else int(e["b"]),
            "j": None if e["j"] is None else json.dumps(e["j"]),
        }
        for e in expected
    ]
    assert [{**r, "j": None if r["j"] is None else json.dumps(json.loads(r["j"]))} for r in rows] == as_sqlite
    assert Decimal(rows[3]["d"]) == Decimal("123456789012345678901234567890.12")
    assert db.execute("SELECT * FROM tally").fetchall() == [("added", 1, 4)]
    about = db.execute("SELECT projection, version, position, tables FROM cqrsctl_export").fetchone()
    assert about[:3] == ("kinds", 1, 4) and json.loads(about[3])["items"]["columns"]["d"] == "decimal"
    db.close()

    cli(*base, "--to", str(out / "items.json"), "--table", "items").ok()
    assert json.loads((out / "items.json").read_text()) == expected

    cli(*base, "--to", str(out / "items.jsonl"), "--table", "items").ok()
    assert [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()] == expected

    cli(*base, "--to", str(out / "items.csv"), "--table", "items").ok()
    with open(out / "items.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["id"] for r in read] == ["K-1", "K-2", "K-3", "K-4"]
    assert read[0] == {
        "id": "K-1", "n": "1", "f": "1.5", "d": "10.50", "b": "true", "j": '{"a":[1,"x"]}', "t": expected[0]["t"],
    }  # fmt: skip
    assert read[2] == {"id": "K-3", "n": "", "f": "", "d": "", "b": "", "j": "", "t": ""}
    assert read[3]["j"] == json.dumps(ROWS[3][1]["j"]) and read[1]["b"] == "false"

    limited = cli(
        *base[:4], "--json", *base[4:], "--to", str(out / "two.jsonl"), "--table", "items", "-n", "2"
    )
    assert limited.ok().json()["rows"] == 2
    assert [json.loads(x)["id"] for x in (out / "two.jsonl").read_text().splitlines()] == ["K-1", "K-2"]
    said = cli(*base, "--to", str(out / "tally.csv"), "--table", "tally").ok().stderr
    assert "kinds: 1 row of tally (position 4)" in said
    assert sorted(p.name for p in out.iterdir()) == [
        "items.csv", "items.json", "items.jsonl", "kinds.db", "tally.csv", "two.jsonl",
    ]  # fmt: skip


def test_export_an_empty_read_model(store_url: str, app_file: str, tmp_path: Path) -> None:
    app = load_app(app_file)
    with open_store(store_url) as store:
        projections.catch_up(store, app, ["names"])  # it runs: tables, no rows
        for name in ("names.db", "names.csv", "names.json", "names.jsonl"):
            result = export_read_model(store, app, "names", tmp_path / name)
            assert result.tables == {"names": 0} and result.position == 0
    db = sqlite3.connect(tmp_path / "names.db")
    assert db.execute("SELECT count(*) FROM names").fetchone() == (0,)
    assert [r[1] for r in db.execute("PRAGMA table_info(names)")] == ["id", "name"]
    db.close()
    assert (tmp_path / "names.csv").read_text() == "id,name\n"
    assert json.loads((tmp_path / "names.json").read_text()) == []
    assert (tmp_path / "names.jsonl").read_text() == ""


def test_export_streams_a_large_read_model(store_url: str, app_file: str, tmp_path: Path) -> None:
    """Memory stays flat: the Python heap at its peak holds a few batches, not 50,000 rows."""
    app = load_app(app_file)
    spec = app.projections["names"].tables["names"]
    n = 50_000
    with open_store(store_url) as store:
        with store.transaction() as tx:
            tx.read_models.create_table("names", spec)
            for i in range(0, n, 5000):
                tx.read_models.write(
                    "names", spec, [{"id": f"N-{j:06d}", "name": "x" * 100} for j in range(i, i + 5000)]
                )
        for name in ("big.jsonl", "big.db"):
            tracemalloc.start()
            try:
                result = export_read_model(store, app, "names", tmp_path / name)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert result.tables == {"names": n} and result.position is None
            # All rows as dicts would take over 20 MB; a batch of 1,000 takes a few hundred kB.
            assert peak < 8_000_000, f"{name}: peak {peak:,} bytes"
    db = sqlite3.connect(tmp_path / "big.db")
    assert db.execute("SELECT count(*), min(id), max(id) FROM names").fetchone() == (
        n,
        "N-000000",
        "N-049999",
    )
    db.close()
    assert (tmp_path / "big.jsonl").read_text().count("\n") == n


def test_bad_input_writes_nothing(store_url: str, app_file: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        _fill(store, app_file)
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.db").write_bytes(b"not mine to replace")
    base = ("--db", store_url, "--app", app_file, "projections", "export")
    cases = [
        ((*base, "nope", "--to", str(out / "x.db")), 6, "unknown projection 'nope'"),
        ((*base, "names", "--to", str(out / "x.db")), 6, "read-model table names does not exist yet"),
        (
            (*base, "kinds", "--to", str(out / "x.xlsx")),
            2,
            "name the file .db (SQLite), .csv, .json or .jsonl",
        ),
        ((*base, "kinds", "--to", str(out / "x.csv")), 2, "has tables items, tally: choose one"),
        ((*base, "kinds", "--to", str(out / "x.db"), "--table", "nope"), 2, "has no table 'nope'"),
        ((*base, "kinds", "--to", str(out / "kept.db")), 15, "kept.db exists: give --force"),
        ((*base, "kinds", "--to", str(out / "missing" / "x.db")), 15, "no such directory"),
        ((*base, "kinds", "--to", str(out)), 2, "name the file"),
        ((*base, "kinds", "--to", str(out / "dir.db")), 15, "not a regular file"),
        ((*base, "kinds", "--to", str(out / "x.db"), "--limit", "-1"), 2, "--limit"),
    ]
    (out / "dir.db").mkdir()
    before = sorted(p.name for p in out.iterdir())
    for args, code, needle in cases:
        assert_error(cli(*args), code, needle)
        assert sorted(p.name for p in out.iterdir()) == before, args
    assert (out / "kept.db").read_bytes() == b"not mine to replace"
    cli(*base, "kinds", "--to", str(out / "kept.db"), "--force").ok()
    assert sqlite3.connect(out / "kept.db").execute("SELECT count(*) FROM items").fetchone() == (4,)
    assert_error(cli(*base[:4], "--json", *base[4:], "kinds", "--to", str(out / "kept.db")), 15, "exists")
    # Never over a store, --force or not: the SQLite store beside it is not an export.
    store_file = out / "store.db"
    cli("--db", f"sqlite:///{store_file}", "init").ok()
    content = store_file.read_bytes()
    assert_error(cli(*base, "kinds", "--to", str(store_file), "--force"), 15, "is a cqrsctl store")
    assert store_file.read_bytes() == content


def test_a_failed_write_leaves_no_file(store_url: str, app_file: str, tmp_path: Path) -> None:
    """A file size limit makes the write fail half-way (EFBIG): exit 15, no file, no temporary."""
    import resource

    app = load_app(app_file)
    spec = app.projections["names"].tables["names"]
    with open_store(store_url) as store, store.transaction() as tx:
        tx.read_models.create_table("names", spec)
        tx.read_models.write("names", spec, [{"id": f"N-{j:05d}", "name": "y" * 200} for j in range(20_000)])
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    for name in ("names.csv", "names.db"):
        proc = subprocess.run(
            [sys.executable, "-m", "cqrsctl", "--db", store_url, "--app", app_file, "projections", "export",
             "names", "--to", str(out / name)],
            capture_output=True, env=subprocess_env(), preexec_fn=limit, timeout=120, check=False,
        )  # fmt: skip
        err = proc.stderr.decode()
        assert proc.returncode == 15, err
        assert err.startswith(f"error: cannot write {out / name}") and len(err.strip().splitlines()) == 1, err
        assert list(out.iterdir()) == []


def test_snapshot_reader_sees_one_moment(store_url: str) -> None:
    """What the export reads in: a commit made meanwhile is not seen, on either backend."""
    with open_store(store_url) as store:
        store.append("S-1", [NewEvent("Added", {})])
        with store.reader(snapshot=True) as tx:
            assert tx.tracking.head() == 1
            with open_store(store_url) as other:
                other.append("S-2", [NewEvent("Added", {})])
            assert tx.tracking.head() == 1
        with store.reader(snapshot=True) as tx:
            assert tx.tracking.head() == 2
