"""`cqrsctl import` from the stores NestJS services keep: Kafka topics (the Tansu broker the
suite starts) and DynamoDB export files, on both backends; then the migration sample's
walk-through (import, replay, rebuild, publish back to Kafka in the NestJS shape)."""

from __future__ import annotations

import gzip
import importlib.util
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from helpers import ROOT, cli
from test_sinks import _kafka_read

from cqrsctl.errors import HistoryGapError
from cqrsctl.services import sources
from cqrsctl.store import Store

SAMPLE = ROOT / "samples" / "nestjs-migration"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nestjs_generate", SAMPLE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def stored(store: Store) -> list[tuple[str, int, str, str]]:
    return [(e.stream_id, e.stream_version, e.event_id, e.event_type) for e in store.iter_all(0, 1000)]


def expected(values: list[dict[str, Any]]) -> set[tuple[str, int, str, str]]:
    return {
        (f"Account-{v['aggregateId']}", v["aggregateVersion"], v["eventId"], v["eventType"]) for v in values
    }


def check_stream_order(store: Store) -> None:
    last: dict[str, int] = {}
    for stream, version, _, _ in stored(store):
        assert version == last.get(stream, 0) + 1, (stream, last.get(stream), version)
        last[stream] = version


def produce(kafka_url: str, records: list[Any]) -> None:
    pytest.importorskip("confluent_kafka")
    gen.produce(kafka_url.removeprefix("kafka://"), records)


def kafka_history(kafka_url: str, flaws: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """A NestJS history (with a duplicate and a gap unless `flaws` is False) on topics of its own."""
    prefix = unique("shop")
    values = gen.history(accounts=3, deposits=6, prefix=prefix)
    produce(kafka_url, gen.kafka_records(gen.with_flaws(values) if flaws else values, prefix))
    return f"{kafka_url}?topics={prefix}.*.events", values


# -- Kafka ------------------------------------------------------------------------------------


def test_kafka_history_imported_per_aggregate_with_duplicates_and_gaps_reported(
    store: Store, store_url: str, kafka_url: str
) -> None:
    source, values = kafka_history(kafka_url)
    run = cli("--db", store_url, "--json", "import", "--from", source, "--on-gap", "report").ok()
    report = run.json()
    # A-3 lost its version 2: A-3 is imported up to version 1, the rest of it is reported.
    after_gap = [v for v in values if v["aggregateId"] == "A-3" and v["aggregateVersion"] >= 2]
    want = [v for v in values if v not in after_gap]
    assert set(stored(store)) == expected(want) and len(stored(store)) == len(want)
    check_stream_order(store)
    assert (report["read"], report["imported"], report["duplicates"], report["gaps"]) == (
        len(values),
        len(want),
        1,
        1,
    )
    assert report["cut_after_gaps"] == len(after_gap) - 1  # the missing one was never read
    [dup] = report["duplicate_list"]
    assert (dup["stream_id"], dup["version"], dup["same_event"]) == ("Account-A-2", 2, True)
    [gap] = report["gap_list"]
    assert (gap["stream_id"], gap["after_version"], gap["next_version"]) == ("Account-A-3", 1, 3)
    # Ids, times, correlation and causation come across.
    by_id = {v["eventId"]: v for v in values}
    for e in store.iter_all(0, 1000):
        v = by_id[e.event_id]
        assert e.data == v["data"] and e.recorded_at.isoformat().replace("+00:00", "Z") == v["timestamp"]
        assert e.metadata["correlation_id"] == v["correlationId"]
        assert e.metadata.get("causation_id") == v["causationId"]
        assert e.metadata["userId"] == v["metadata"]["userId"]
    # Re-running imports nothing new.
    again = cli("--db", store_url, "--json", "import", "--from", source, "--on-gap", "report").ok().json()
    assert (again["imported"], again["already_present"]) == (0, len(want))
    assert len(stored(store)) == len(want)


def test_kafka_gap_under_on_gap_stop_writes_nothing(store: Store, store_url: str, kafka_url: str) -> None:
    source, _ = kafka_history(kafka_url)
    run = cli("--db", store_url, "import", "--from", source)  # --on-gap stop is the default
    assert run.code == 19, run
    assert run.stderr.count("\n") == 1 and "Account-A-3 skips from version 1 to version 3" in run.stderr
    assert stored(store) == []


def test_kafka_clean_history_imports_everything_in_order(
    store: Store, store_url: str, kafka_url: str
) -> None:
    source, values = kafka_history(kafka_url, flaws=False)
    report = cli("--db", store_url, "--json", "import", "--from", source).ok().json()
    assert (report["imported"], report["duplicates"], report["gaps"]) == (len(values), 0, 0)
    assert set(stored(store)) == expected(values)
    check_stream_order(store)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"{not json", "the value is not JSON"),
        ("missing aggregateId", "missing or empty aggregateId"),
    ],
)
def test_kafka_bad_value_is_one_line_exit_3_and_writes_nothing(
    store: Store, store_url: str, kafka_url: str, bad: Any, message: str
) -> None:
    prefix = unique("bad")
    values = gen.history(accounts=2, deposits=2, prefix=prefix)
    records = gen.kafka_records(values, prefix)
    topic, key, value, headers = records[-1]
    if isinstance(bad, bytes):
        value = bad
    else:
        v = orjson.loads(value)
        del v["aggregateId"]
        value = orjson.dumps(v)
    produce(kafka_url, [*records[:-1], (topic, key, value, headers)])
    run = cli("--db", store_url, "import", "--from", f"{kafka_url}?topics={prefix}.account.events")
    assert run.code == 3, run
    assert run.stderr.count("\n") == 1 and message in run.stderr and f"{prefix}.account.events[" in run.stderr
    assert stored(store) == []


def test_kafka_source_errors(tmp_path: Path, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    store_url = f"sqlite:///{tmp_path}/x.db"  # nothing reaches the store
    run = cli("--db", store_url, "import", "--from", "kafka://127.0.0.1:9?topics=x")
    assert run.code == 20 and "could not be reached" in run.stderr, run
    run = cli("--db", store_url, "import", "--from", f"{kafka_url}?topics=no-such-topic-{uuid.uuid4().hex}")
    assert run.code == 2 and "no topic" in run.stderr, run
    run = cli("--db", store_url, "import", "--from", kafka_url)
    assert run.code == 2 and "name the topics" in run.stderr, run
    run = cli("--db", store_url, "import", "--from", f"{kafka_url}?topics=x", "--on-gap", "ignore")
    assert run.code == 2 and "--on-gap" in run.stderr, run


def test_a_stream_that_does_not_start_at_1_is_a_gap(store: Store) -> None:
    """From Python, with any source: a topic whose retention removed a stream's first records."""
    now = datetime.now(UTC)
    events = [
        sources.SourceEvent("Account-X", 2, str(uuid.uuid4()), "MoneyDeposited", now, {}, {}, "t[0]@0"),
        sources.SourceEvent("Account-Y", 1, y := str(uuid.uuid4()), "AccountOpened", now, {}, {}, "t[0]@1"),
    ]
    with pytest.raises(HistoryGapError, match="stream Account-X skips from the start to version 2 at t"):
        sources.stage(events)
    assert stored(store) == []
    report = sources.import_source(store, events, on_gap="report")
    assert (report.imported, report.cut, report.gap_count) == (1, 1, 1)
    assert stored(store) == [("Account-Y", 1, y, "AccountOpened")]


# -- DynamoDB export ----------------------------------------------------------------------------


def test_dynamodb_export_imported_in_version_order_and_idempotent(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    values = gen.history(accounts=4, deposits=9)
    path = tmp_path / "export.json.gz"
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in gen.dynamodb_lines(values))))
    args = ("--db", store_url, "--json", "import", "--input-format", "dynamodb-export", str(path))
    report = cli(*args).ok().json()
    assert (report["imported"], report["ignored"], report["gaps"], report["streams"]) == (
        len(values),
        1,
        0,
        4,
    )
    assert set(stored(store)) == expected(values)
    check_stream_order(store)  # the export is scrambled; each stream still goes in version order
    first = next(iter(store.iter_all(0, 10)))
    v = next(x for x in values if x["eventId"] == first.event_id)
    assert first.metadata == {**v["metadata"], "correlation_id": v["correlationId"]}
    assert cli(*args).ok().json()["already_present"] == len(values)
    assert len(stored(store)) == len(values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda item: item.pop("version"), "aggregateVersion must be a whole number"),
        (lambda item: item.update(PK={"S": "ACCOUNT"}), "PK must be"),
        (lambda item: item.update(data={"Q": "x"}), "unknown DynamoDB type 'Q'"),
    ],
)
def test_dynamodb_bad_item_is_one_line_exit_3_and_writes_nothing(
    store: Store, store_url: str, tmp_path: Path, change: Any, message: str
) -> None:
    lines = [orjson.loads(line) for line in gen.dynamodb_lines(gen.history(accounts=2, deposits=2))]
    event_lines = [i for i, line in enumerate(lines) if line["Item"]["SK"]["S"].startswith("EVENT#")]
    bad = event_lines[-1]
    change(lines[bad]["Item"])
    path = tmp_path / "export.json"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    run = cli("--db", store_url, "import", "--input-format", "dynamodb-export", str(path))
    assert run.code == 3, run
    assert run.stderr.count("\n") == 1 and message in run.stderr and f"line {bad + 1}" in run.stderr
    assert stored(store) == []


def test_import_usage_errors(store_url: str, tmp_path: Path) -> None:
    assert cli("--db", store_url, "import").code == 2
    run = cli("--db", store_url, "import", "--input-format", "csv", str(tmp_path / "x"))
    assert run.code == 2 and "--input-format" in run.stderr
    run = cli(
        "--db", store_url, "import", "--input-format", "dynamodb-export", str(tmp_path / "missing.json")
    )
    assert run.code == 15 and "cannot read" in run.stderr, run


# -- the sample's walk-through -----------------------------------------------------------------


def test_nestjs_migration_walkthrough(store: Store, store_url: str, kafka_url: str) -> None:
    """Import the Kafka history, replay an account, rebuild the projection, dispatch a new
    command and publish it back to Kafka in the NestJS shape."""
    source, values = kafka_history(kafka_url)
    app = str(SAMPLE / "app.py")
    base = ("--db", store_url, "--app", app)
    cli(*base, "import", "--from", source, "--on-gap", "report").ok()
    state = cli(*base, "--json", "replay", "--aggregate", "Account-A-1").ok().json()
    deposits = [v for v in values if v["aggregateId"] == "A-1" and v["eventType"] == "MoneyDeposited"]
    balance = sum(float(v["data"]["amount"]) for v in deposits) - 5
    assert float(state["state"]["balance"]) == balance and state["version"] == len(deposits) + 2
    cli(*base, "projections", "rebuild", "balances").ok()
    rows = {r["account_id"]: r for r in cli(*base, "--json", "query", "balances").ok().jsonl()}
    assert set(rows) == {"A-1", "A-2", "A-3"} and float(rows["A-1"]["balance"]) == balance
    cli(*base, "dispatch", "Deposit", "--data", '{"account_id": "A-1", "amount": "7.50"}').ok()
    topic = unique("bank.account.events.")
    cli(*base, "outbox", "drain", "--sink", f"{kafka_url}?topic={topic}").ok()  # nestjs: the app's default
    [record] = _kafka_read(kafka_url, topic, 1)
    value = orjson.loads(record.value())
    assert (value["aggregateType"], value["aggregateId"], value["eventType"]) == (
        "Account",
        "A-1",
        "MoneyDeposited",
    )
    assert value["aggregateVersion"] == len(deposits) + 3 and value["data"] == {"amount": "7.50"}
    assert record.key() == b"A-1" and dict(record.headers())["eventType"] == b"MoneyDeposited"
