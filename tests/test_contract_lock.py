"""`contract lock` / `contract diff`: the app's event schemas in a file of the user's
repository, and each kind of change classified as compatible or breaking. (These read
no store, so they run once, not per backend.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from helpers import assert_error, cli

from cqrsctl.errors import BreakingChangeError
from cqrsctl.loader import load_app
from cqrsctl.services import contract

BASE = """
from decimal import Decimal
from cqrsctl.app import App, Event

app = App("shop")

class OrderPlaced(Event{version}):
{fields}

class OrderShipped(Event):
    carrier: str

app.event(OrderPlaced)
app.event(OrderShipped)
{extra}
"""
FIELDS = "    order_id: str\n    total: Decimal\n    note: str = ''"


def app_file(tmp_path: Path, name: str, fields: str = FIELDS, version: int = 1, extra: str = "") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(
        BASE.format(fields=fields, version=f", schema_version={version}" if version != 1 else "", extra=extra)
    )
    return str(path)


@pytest.fixture
def locked(tmp_path: Path) -> Path:
    lock = tmp_path / "contract.json"
    result = cli("--app", app_file(tmp_path, "base"), "contract", "lock", "--file", str(lock)).ok()
    assert "wrote" in result.stderr
    return lock


def diff(tmp_path: Path, lock: Path, name: str, **kw: object) -> tuple[int, list[dict[str, object]], str]:
    ref = app_file(tmp_path, name, **kw)  # type: ignore[arg-type]
    result = cli("--app", ref, "--json", "contract", "diff", "--file", str(lock))
    return result.code, result.json()["changes"], result.stderr


def test_the_lock_file_holds_each_type_and_version_as_json_schema(tmp_path: Path, locked: Path) -> None:
    doc = orjson.loads(locked.read_bytes())
    assert doc["app"] == "shop" and doc["cqrsctl_contract"] == 1
    placed = doc["events"]["OrderPlaced"]
    assert placed["current"] == 1 and placed["upcasters"] == []
    schema = placed["versions"]["1"]
    assert schema["required"] == ["order_id", "total"] and set(schema["properties"]) == {
        "order_id",
        "total",
        "note",
    }
    # Unchanged code: no changes, exit 0.
    code, changes, _ = diff(tmp_path, locked, "same")
    assert (code, changes) == (0, [])
    # The file is stable (sorted keys): locking again changes nothing.
    before = locked.read_bytes()
    cli("--app", app_file(tmp_path, "same2"), "contract", "lock", "--file", str(locked)).ok()
    assert locked.read_bytes() == before


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        (
            "removed",
            {"fields": "    order_id: str\n    note: str = ''"},
            "OrderPlaced: field 'total' removed",
        ),
        (
            "renamed",
            {"fields": "    order_id: str\n    amount: Decimal\n    note: str = ''"},
            "OrderPlaced: field 'total' renamed to 'amount'",
        ),
        (
            "retyped",
            {"fields": "    order_id: int\n    total: Decimal\n    note: str = ''"},
            "OrderPlaced: field 'order_id' changed type from string to integer",
        ),
        (
            "required",
            {"fields": FIELDS + "\n    currency: str"},
            "OrderPlaced: new required field 'currency' without a default",
        ),
        (
            "bumped",
            {"version": 2},
            "OrderPlaced: schema_version bumped from v1 to v2 without an upcaster from v1",
        ),
        (
            "no_default",
            {"fields": "    order_id: str\n    total: Decimal\n    note: str"},
            "OrderPlaced: field 'note' is now required",
        ),
        (
            "type_gone",
            {"extra": "del app.events['OrderShipped']"},
            "OrderShipped: event type removed",
        ),
    ],
)
def test_each_breaking_change_exits_18_naming_it(
    tmp_path: Path, locked: Path, name: str, kw: dict[str, object], expected: str
) -> None:
    code, changes, stderr = diff(tmp_path, locked, name, **kw)
    assert code == 18
    assert any(c["breaking"] and f"{c['event_type']}: {c['change']}".startswith(expected) for c in changes), (
        changes
    )
    line = assert_error(
        cli("--app", str(tmp_path / f"{name}.py"), "contract", "diff", "--file", str(locked)), 18
    )
    assert expected in line
    # From Python too.
    with pytest.raises(BreakingChangeError, match=expected.split(": ", 1)[1][:20]):
        contract.check_diff(load_app(str(tmp_path / f"{name}.py")), locked)


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        (
            "optional",
            {"fields": FIELDS + "\n    gift: bool = False"},
            "OrderPlaced: new optional field 'gift'",
        ),
        (
            "new_type",
            {"extra": "class OrderCancelled(Event):\n    reason: str\napp.event(OrderCancelled)"},
            "OrderCancelled: new event type",
        ),
        (
            "bumped_with_upcaster",
            {
                "version": 2,
                "fields": FIELDS + "\n    currency: str",
                "extra": "@app.upcaster('OrderPlaced', from_version=1)\ndef _eur(d):\n    return {**d, 'currency': 'EUR'}",
            },
            "OrderPlaced: schema_version bumped from v1 to v2, with upcasters",
        ),
    ],
)
def test_compatible_changes_exit_0(
    tmp_path: Path, locked: Path, name: str, kw: dict[str, object], expected: str
) -> None:
    code, changes, _ = diff(tmp_path, locked, name, **kw)
    assert code == 0, changes
    assert [f"{c['event_type']}: {c['change']}" for c in changes] == [expected]
    assert not any(c["breaking"] for c in changes)
    human = cli("--app", str(tmp_path / f"{name}.py"), "contract", "diff", "--file", str(locked)).ok()
    assert "compatible" in human.stdout


def test_locking_a_new_version_keeps_the_old_schema_and_guards_its_upcaster(
    tmp_path: Path, locked: Path
) -> None:
    extra = "@app.upcaster('OrderPlaced', from_version=1)\ndef _eur(d):\n    return {**d, 'currency': 'EUR'}"
    v2 = app_file(tmp_path, "v2", fields=FIELDS + "\n    currency: str", version=2, extra=extra)
    cli("--app", v2, "contract", "lock", "--file", str(locked)).ok()
    placed = orjson.loads(locked.read_bytes())["events"]["OrderPlaced"]
    assert sorted(placed["versions"]) == ["1", "2"] and placed["current"] == 2 and placed["upcasters"] == [1]
    assert "currency" not in placed["versions"]["1"]["properties"]
    # Dropping the upcaster later is breaking: v1 events are still stored.
    code, changes, _ = diff(
        tmp_path, locked, "v2_no_upcaster", fields=FIELDS + "\n    currency: str", version=2
    )
    assert code == 18
    assert any("upcaster from v1 removed" in c["change"] for c in changes)


def test_diff_without_a_lock_file_and_with_a_bad_one(tmp_path: Path) -> None:
    ref = app_file(tmp_path, "base")
    assert_error(
        cli("--app", ref, "contract", "diff", "--file", str(tmp_path / "none.json")), 15, "contract lock"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert_error(cli("--app", ref, "contract", "diff", "--file", str(bad)), 3, "not a cqrsctl contract file")


def test_lock_and_diff_from_python(tmp_path: Path) -> None:
    app = load_app(app_file(tmp_path, "py"))
    lock = tmp_path / "c.json"
    doc, changes = contract.write_lock(app, lock)
    assert changes == [] and set(doc["events"]) == {"OrderPlaced", "OrderShipped"}
    assert contract.diff(app, contract.read_lock(lock)) == []


def test_the_bank_sample_keeps_a_current_contract_file() -> None:
    from helpers import BANK_APP, ROOT

    lock = ROOT / "samples" / "bank" / "cqrsctl-contract.json"
    result = cli("--app", BANK_APP, "--json", "contract", "diff", "--file", str(lock)).ok()
    assert result.json()["changes"] == []
