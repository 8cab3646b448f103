"""Event contracts on both backends: `app show`, upcasting on every read path (and --raw),
`contract check` (full and sampled), `contract lock` / `contract diff`, checked appends."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from helpers import BANK_APP, Run, all_events, assert_error, cli

from cqrsctl.errors import DecodeError, ValidationError
from cqrsctl.loader import load_app
from cqrsctl.services import contract
from cqrsctl.services.replay import replay
from cqrsctl.store import NewEvent, open_store

# Three versions of PriceChanged: v1 {"euros": "1.25"}, v2 {"cents": 125}, v3 {"cents", "currency"}.
PRICES_APP = """
from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.projection import Projection, Table

app = App("prices")


class PriceChanged(Event, schema_version=3):
    cents: int
    currency: str


class Discontinued(Event):
    reason: str = ""


class Product(Aggregate, category="Product"):
    cents: int = 0
    currency: str = ""

    def when_PriceChanged(self, e: PriceChanged) -> None:
        self.cents, self.currency = e.cents, e.currency


@app.command(aggregate=Product, stream=lambda c: c.sku)
class ChangePrice(Command):
    sku: str
    cents: int

    def handle(self, product: Product) -> list[Event]:
        return [PriceChanged(cents=self.cents, currency="EUR")]


@app.upcaster("PriceChanged", from_version=1)
def _euros_to_cents(data: dict) -> dict:
    return {"cents": round(float(data["euros"]) * 100)}


@app.upcaster("PriceChanged", from_version=2)
def _add_currency(data: dict) -> dict:
    return {**data, "currency": "EUR"}


class Catalogue(Projection, name="catalogue"):
    tables = {"products": Table({"sku": "text", "cents": "int"}, key=["sku"])}

    def on_PriceChanged(self, event, rm):
        rm.upsert("products", {"sku": event.aggregate_id, "cents": event.data["cents"]})

    def on_PriceRetired(self, event, rm):  # a type that no longer exists
        rm.delete("products", sku=event.aggregate_id)


app.projection(Catalogue)
app.event(Discontinued)
"""


@pytest.fixture
def prices_app(tmp_path: Path) -> str:
    path = tmp_path / "prices.py"
    path.write_text(PRICES_APP)
    return str(path)


def seed(url: str) -> dict[str, int]:
    """Events of three versions, one broken v2 event, and a type with no class."""
    with open_store(url) as store:
        pos = {}
        pos["v1"] = store.append(
            "Product-p1", [NewEvent("PriceChanged", {"euros": "1.25"}, schema_version=1)]
        ).positions[0]
        pos["v2"] = store.append(
            "Product-p1", [NewEvent("PriceChanged", {"cents": 150}, schema_version=2)]
        ).positions[0]
        pos["v3"] = store.append(
            "Product-p1", [NewEvent("PriceChanged", {"cents": 175, "currency": "USD"}, schema_version=3)]
        ).positions[0]
        store.append(
            "Product-p2", [NewEvent("PriceChanged", {"cents": 9, "currency": "EUR"}, schema_version=3)]
        )
        pos["broken"] = store.append(
            "Product-p3", [NewEvent("PriceChanged", {"cents": "lots"}, schema_version=2)]
        ).positions[0]
        store.append(
            "Product-p2", [NewEvent("PriceChanged", {"cents": 10, "currency": "EUR"}, schema_version=3)]
        )
        store.append("Legacy-1", [NewEvent("OldThing", {"x": 1})])
    return pos


def error_line(result: Run, code: int, *needles: str) -> str:
    """`contract` commands print warnings on stderr too: the error is its last line."""
    assert result.code == code, str(result)
    assert result.exception is None and "Traceback" not in result.stderr, str(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, str(result)
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


# -- app show ----------------------------------------------------------------------------------


def test_app_show_lists_everything_the_app_declares(prices_app: str) -> None:
    info = cli("--app", prices_app, "--json", "app", "show").ok().json()
    assert info["name"] == "prices"
    [command] = info["commands"]
    assert command["name"] == "ChangePrice" and command["aggregate"] == "Product"
    assert [(f["name"], f["type"], f["required"]) for f in command["fields"]] == [
        ("sku", "str", True),
        ("cents", "int", True),
    ]
    events = {e["type"]: e for e in info["events"]}
    assert events["PriceChanged"]["schema_version"] == 3
    assert events["PriceChanged"]["upcasters"] == ["v1->v2", "v2->v3"]
    assert events["Discontinued"]["fields"] == [
        {"name": "reason", "type": "str", "required": False, "default": ""}
    ]
    [proj] = info["projections"]
    assert proj["tables"] == {"products": {"sku": "text", "cents": "int"}}
    assert proj["handles"] == ["PriceChanged", "PriceRetired"]
    assert info["aggregates"][0]["handles"] == ["PriceChanged"]
    # The same from Python, and a table for people.
    assert contract.describe(load_app(prices_app)) == info
    human = cli("--app", prices_app, "app", "show").ok().stdout
    assert "ChangePrice" in human and "v1->v2, v2->v3" in human and "catalogue" in human


def test_app_show_of_the_bank_sample_lists_sagas_and_queries() -> None:
    info = cli("--app", BANK_APP, "--json", "app", "show").ok().json()
    assert [s["name"] for s in info["sagas"]] == ["TransferSaga"]
    assert [st["name"] for st in info["sagas"][0]["steps"]] == [
        "debit_source",
        "credit_destination",
        "complete_transaction",
    ]
    assert {"balance", "account"} <= {q["name"] for q in info["queries"]}


def test_app_show_needs_an_app() -> None:
    assert_error(cli("app", "show"), 2, "no app given")


# -- read paths upcast ---------------------------------------------------------------------------


def test_read_paths_show_upcast_data_and_raw_shows_what_is_stored(
    store_url: str, prices_app: str, tmp_path: Path
) -> None:
    pos = seed(store_url)
    app = ("--db", store_url, "--app", prices_app, "--json")
    first = {"cents": 125, "currency": "EUR"}

    [e1] = cli(*app, "events", "--limit", "1").ok().jsonl()
    assert (e1["schema_version"], e1["data"]) == (3, first)
    [raw1] = cli(*app, "events", "--limit", "1", "--raw").ok().jsonl()
    assert (raw1["schema_version"], raw1["data"]) == (1, {"euros": "1.25"})
    # Without an app there is nothing to upcast with: events are shown as stored.
    [plain] = cli("--db", store_url, "--json", "events", "--limit", "1").ok().jsonl()
    assert plain["data"] == {"euros": "1.25"}

    shown = cli(*app, "streams", "show", "Product-p1").ok().jsonl()
    assert [(e["schema_version"], e["data"]) for e in shown] == [
        (3, first),
        (3, {"cents": 150, "currency": "EUR"}),
        (3, {"cents": 175, "currency": "USD"}),
    ]
    raw = cli(*app, "streams", "show", "Product-p1", "--raw").ok().jsonl()
    assert [e["schema_version"] for e in raw] == [1, 2, 3]

    steps = cli(*app, "replay", "-a", "Product-p1", "--events").ok().jsonl()
    assert [s["event"]["data"]["cents"] for s in steps] == [125, 150, 175]
    assert [s["event"]["schema_version"] for s in steps] == [3, 3, 3]

    out = tmp_path / "up.jsonl"
    cli(*app, "export", "--stream", "Product-p1", "--upcast", "-o", str(out)).ok()
    exported = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [(e["schema_version"], e["data"]["cents"]) for e in exported] == [(3, 125), (3, 150), (3, 175)]
    cli("--db", store_url, "export", "--stream", "Product-p1", "-o", str(out)).ok()
    assert [orjson.loads(line)["schema_version"] for line in out.read_bytes().splitlines()] == [1, 2, 3]

    # Read paths show the upcast data even when it does not validate; folding it is exit 9,
    # naming the position and the stored version.
    bad = pos["broken"]
    [shown_bad] = cli(*app, "streams", "show", "Product-p3").ok().jsonl()
    assert shown_bad["data"] == {"cents": "lots", "currency": "EUR"}
    assert_error(
        cli(*app, "replay", "-a", "Product-p3"), 9, f"position {bad}", "stored as v2, upcast to v3", "cents"
    )
    assert cli(*app, "streams", "show", "Product-p3", "--raw").ok().jsonl()[0]["data"] == {"cents": "lots"}
    # An upcaster that raises stops the read path itself.
    with open_store(store_url) as store:
        worse = store.append(
            "Product-p4", [NewEvent("PriceChanged", {"price": 1}, schema_version=1)]
        ).positions[0]
    line = assert_error(cli(*app, "events", "--type", "PriceChanged"), 9, f"position {worse}", "stored as v1")
    assert "KeyError" in line
    assert len(cli(*app, "events", "--type", "PriceChanged", "--raw").ok().jsonl()) == 7
    assert all_events(store_url)[0].data == {"euros": "1.25"}  # the store is never rewritten


def test_decode_errors_name_the_stored_version(store_url: str, prices_app: str) -> None:
    app = load_app(prices_app)
    with open_store(store_url) as store:
        store.append(
            "Product-x", [NewEvent("PriceChanged", {"cents": 1, "currency": "EUR"}, schema_version=4)]
        )
        with pytest.raises(
            DecodeError, match="stored as v4.*has schema version 4, newer than PriceChanged's v3"
        ):
            replay(store, app, "Product-x")
        p = store.append("Product-y", [NewEvent("PriceChanged", {"price": 1}, schema_version=1)]).positions[0]
        with pytest.raises(
            DecodeError, match=f"position {p} \\(PriceChanged stored as v1\\) could not be upcast: KeyError"
        ):
            replay(store, app, "Product-y")


def test_an_upcaster_from_the_current_version_does_not_run(store_url: str, tmp_path: Path) -> None:
    # The README's old mistake: an upcaster from v1 while the class still says v1. Events
    # stored at the current version are read as they are; `contract check` flags the upcaster.
    path = tmp_path / "stale.py"
    path.write_text(
        "from cqrsctl.app import App, Event\n"
        "app = App('stale')\n"
        "class MoneyDeposited(Event):\n    amount: int\n"
        "app.event(MoneyDeposited)\n"
        "@app.upcaster('MoneyDeposited', from_version=1)\n"
        "def _up(data):\n    return {'amount': data.pop('cents')}\n"
    )
    with open_store(store_url) as store:
        store.append("Account-1", [NewEvent("MoneyDeposited", {"amount": 5})])
    app = load_app(str(path))
    [e] = cli("--db", store_url, "--app", str(path), "--json", "events").ok().jsonl()
    assert e["data"] == {"amount": 5}
    with open_store(store_url) as store:
        report = contract.check(app, store)
    assert report.ok and report.stale_upcasters == ["MoneyDeposited v1->v2"]


# -- contract check ------------------------------------------------------------------------------


def test_contract_check_names_type_version_and_position(store_url: str, prices_app: str) -> None:
    pos = seed(store_url)
    result = cli("--db", store_url, "--app", prices_app, "contract", "check")
    line = error_line(result, 17, "PriceChanged v2", f"position {pos['broken']}", "Product-p3@1", "cents")
    assert "upcast to v3" in line
    assert "warning: OldThing: stored, but the app has no Event class" in result.stderr
    assert "warning: projection catalogue handles PriceRetired" in result.stderr

    report = cli("--db", store_url, "--app", prices_app, "--json", "contract", "check")
    assert report.code == 17
    data = report.json()
    assert data["ok"] is False and data["events"] == 7 and data["checked"] == 6
    [price] = [t for t in data["types"] if t["event_type"] == "PriceChanged"]
    assert price["versions"] == {"1": 1, "2": 2, "3": 3}
    assert price["upcasters"] == ["v1->v2", "v2->v3"] and price["missing_upcasters"] == []
    assert price["failed"] == 1
    assert price["first_failure"]["position"] == pos["broken"]
    assert price["first_failure"]["schema_version"] == 2
    assert data["without_class"] == ["OldThing"]
    assert data["never_stored"] == ["Discontinued"]
    assert data["orphan_handlers"] == [
        {"kind": "projection", "name": "catalogue", "event_type": "PriceRetired"}
    ]

    # From Python, the same report.
    with open_store(store_url) as store:
        py = contract.check(load_app(prices_app), store)
    assert not py.ok and py.failures()[0].startswith(f"PriceChanged v2 at position {pos['broken']}")


def test_contract_check_passes_when_everything_decodes(store_url: str, prices_app: str) -> None:
    with open_store(store_url) as store:
        store.append("Product-p1", [NewEvent("PriceChanged", {"euros": "2"}, schema_version=1)])
        store.append(
            "Product-p1", [NewEvent("PriceChanged", {"cents": 1, "currency": "EUR"}, schema_version=3)]
        )
    result = cli("--db", store_url, "--app", prices_app, "contract", "check").ok()
    assert "ok: every checked event decodes" in result.stderr
    # Warnings fail only under --strict (the projection handles a type that no longer exists).
    error_line(
        cli("--db", store_url, "--app", prices_app, "contract", "check", "--strict"), 17, "PriceRetired"
    )


def test_contract_check_reports_a_missing_upcaster_and_a_newer_version(
    store_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "gap.py"
    path.write_text(PRICES_APP.replace('@app.upcaster("PriceChanged", from_version=2)', ""))
    with open_store(store_url) as store:
        store.append(
            "Product-a", [NewEvent("PriceChanged", {"cents": 1, "currency": "EUR"}, schema_version=3)]
        )
        p2 = store.append("Product-a", [NewEvent("PriceChanged", {"cents": 2}, schema_version=2)]).positions[
            0
        ]
        p4 = store.append("Product-b", [NewEvent("PriceChanged", {"cents": 2}, schema_version=4)]).positions[
            0
        ]
    data = cli("--db", store_url, "--app", str(path), "--json", "contract", "check").json()
    [price] = data["types"]
    assert price["missing_upcasters"] == ["v2->v3"]
    assert price["failed"] == 2 and price["first_failure"]["position"] == p2
    assert "no upcaster from v2" in price["first_failure"]["reason"]
    line = error_line(cli("--db", store_url, "--app", str(path), "contract", "check"), 17, f"position {p2}")
    assert "1 more" in line
    assert p4 > p2


def test_contract_check_sample_reads_the_oldest_and_newest_of_each_version(
    store_url: str, prices_app: str
) -> None:
    with open_store(store_url) as store:
        store.append(
            "Product-s",
            [NewEvent("PriceChanged", {"cents": i, "currency": "EUR"}, schema_version=3) for i in range(20)],
        )
        # A bad one in the middle of the v3 events is not sampled; one at the end is.
        store.append(
            "Product-t", [NewEvent("PriceChanged", {"cents": "x", "currency": "EUR"}, schema_version=3)]
        )
        store.append(
            "Product-s",
            [NewEvent("PriceChanged", {"cents": i, "currency": "EUR"}, schema_version=3) for i in range(20)],
        )
    data = (
        cli("--db", store_url, "--app", prices_app, "--json", "contract", "check", "--sample", "4")
        .ok()
        .json()
    )
    [price] = data["types"]
    assert (price["stored"], price["checked"], data["sample"]) == (41, 4, 4)
    with open_store(store_url) as store:
        bad = store.append(
            "Product-t", [NewEvent("PriceChanged", {"cents": "y"}, schema_version=3)]
        ).positions[0]
    result = cli("--db", store_url, "--app", prices_app, "--json", "contract", "check", "--sample", "4")
    assert result.code == 17
    assert result.json()["types"][0]["first_failure"]["position"] == bad
    # The full check finds the one in the middle too, and reports it first.
    full = cli("--db", store_url, "--app", prices_app, "--json", "contract", "check").json()
    assert full["types"][0]["failed"] == 2 and full["types"][0]["first_failure"]["position"] == 21


def test_contract_check_on_an_empty_store_and_usage(store_url: str, prices_app: str) -> None:
    data = cli("--db", store_url, "--app", prices_app, "--json", "contract", "check").ok().json()
    assert (
        data["events"] == 0
        and data["types"] == []
        and data["never_stored"] == ["Discontinued", "PriceChanged"]
    )
    assert_error(cli("--db", store_url, "contract", "check"), 2, "no app given")
    assert cli("--db", store_url, "--app", prices_app, "contract", "check", "--sample", "0").code == 2


# -- checked appends ------------------------------------------------------------------------------


def test_append_with_an_app_checks_the_data(store_url: str, prices_app: str, tmp_path: Path) -> None:
    app = ("--db", store_url, "--app", prices_app)
    ok = cli(
        *app, "--json", "append", "Product-1", "PriceChanged", "-d", '{"cents": 5, "currency": "EUR"}'
    ).ok()
    assert ok.json()["version"] == 1
    assert all_events(store_url)[0].schema_version == 3  # the class's current version by default
    # Old-version data is checked through the upcasters (and stored as given).
    cli(*app, "append", "Product-1", "PriceChanged", "-d", '{"euros": "2.50"}', "--schema-version", "1").ok()
    assert all_events(store_url)[1].data == {"euros": "2.50"}

    refused = [
        (('{"cents": "five", "currency": "EUR"}',), "PriceChanged v3 does not match PriceChanged: cents"),
        (('{"cents": 5}',), "currency: Field required"),
        (
            ('{"price": 1}', "--schema-version", "1"),
            "PriceChanged v1: the upcaster cannot read this data: KeyError",
        ),
        (('{"cents": 5, "currency": "EUR"}', "--schema-version", "4"), "PriceChanged v4 is newer than"),
    ]
    for args, needle in refused:
        assert_error(cli(*app, "append", "Product-1", "PriceChanged", "-d", *args), 3, needle)
    assert_error(
        cli(*app, "append", "Product-1", "PriceChangd", "-d", "{}"),
        3,
        "'PriceChangd' is not an event type",
        "--unchecked",
    )
    assert len(all_events(store_url)) == 2  # nothing written

    batch = tmp_path / "batch.jsonl"
    lines = [
        {
            "stream": "Product-2",
            "type": "PriceChanged",
            "data": {"cents": 1, "currency": "EUR"},
            "schema_version": 3,
        },
        {"stream": "Product-2", "type": "PriceChanged", "data": {"cents": []}, "schema_version": 3},
    ]
    batch.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in lines))
    assert_error(cli(*app, "append", "--file", str(batch)), 3, "line 2", "cents")
    assert len(all_events(store_url)) == 2

    # --unchecked skips the check.
    cli(*app, "append", "Product-3", "PriceChanged", "-d", '{"cents": "lots"}', "--unchecked").ok()
    cli(*app, "append", "--file", str(batch), "--unchecked").ok()
    assert len(all_events(store_url)) == 5

    # From Python.
    with open_store(store_url) as store:
        with pytest.raises(ValidationError, match="cents"):
            contract.append_checked(
                store,
                load_app(prices_app),
                "Product-4",
                [NewEvent("PriceChanged", {"cents": "x"}, schema_version=3)],
            )
        result = contract.append_checked(
            store,
            load_app(prices_app),
            "Product-4",
            [NewEvent("PriceChanged", {"cents": 1, "currency": "EUR"}, schema_version=3)],
        )
        assert result.version == 1


def test_repairing_a_stream_with_an_undecodable_event(
    store_url: str, prices_app: str, tmp_path: Path
) -> None:
    """The documented repair: an event that does not decode at the current version is made
    readable by a new version whose upcaster fixes the malformed shape; a correcting event
    then puts the state right."""
    app = ("--db", store_url, "--app", prices_app)
    cli(*app, "dispatch", "ChangePrice", "-d", '{"sku": "p1", "cents": 100}').ok()
    bad = cli(
        *app,
        "--json",
        "append",
        "Product-p1",
        "PriceChanged",
        "-d",
        '{"cents": "1OO", "currency": "EUR"}',
        "--unchecked",
    )
    position = bad.ok().json()["positions"][0]
    assert_error(
        cli(*app, "dispatch", "ChangePrice", "-d", '{"sku": "p1", "cents": 120}'), 9, f"position {position}"
    )
    error_line(cli(*app, "contract", "check"), 17, f"PriceChanged v3 at position {position}")

    fixed = tmp_path / "prices_fixed.py"
    fixed.write_text(
        PRICES_APP.replace("schema_version=3", "schema_version=4")
        + "\n\n@app.upcaster('PriceChanged', from_version=3)\n"
        "def _repair(data: dict) -> dict:  # the one malformed event of 2026: cents written with letter O\n"
        "    cents = data['cents']\n"
        "    return {**data, 'cents': int(cents.replace('O', '0')) if isinstance(cents, str) else cents}\n"
    )
    repaired = ("--db", store_url, "--app", str(fixed))
    assert cli(*repaired, "contract", "check").code == 0
    cli(*repaired, "dispatch", "ChangePrice", "-d", '{"sku": "p1", "cents": 120}').ok()
    state = cli(*repaired, "--json", "replay", "-a", "Product-p1").ok().json()["state"]
    assert state["cents"] == 120
    assert [e.schema_version for e in all_events(store_url)] == [3, 3, 4]


def test_read_paths_from_python(store_url: str, prices_app: str) -> None:
    import io

    from cqrsctl.services.events import upcast_all
    from cqrsctl.services.replay import history
    from cqrsctl.services.transfer import export_events

    seed(store_url)
    app = load_app(prices_app)
    with open_store(store_url) as store:
        events = store.read_stream("Product-p1")
        assert [e.data["cents"] for e in upcast_all(app, events)] == [125, 150, 175]
        assert list(upcast_all(None, events)) == events
        assert [s.event.schema_version for s in history(store, app, "Product-p1")] == [3, 3, 3]
        assert [s.event.schema_version for s in history(store, app, "Product-p1", raw=True)] == [1, 2, 3]
        out = io.BytesIO()
        assert export_events(store, out, stream="Product-p1", app=app) == 3
        assert [orjson.loads(line)["data"]["currency"] for line in out.getvalue().splitlines()] == [
            "EUR",
            "EUR",
            "USD",
        ]
