"""Message formats on the sinks: each one read back by its consumer's rules, and each one
carrying ids, types and order per stream through unchanged."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from outbox_support import Receiver, app_with_topic, fill, read_jsonl
from test_sinks import _kafka_read, _nats_delete, _nats_read
from typer.testing import CliRunner

from cqrsctl.cli import app as cli
from cqrsctl.errors import UsageError
from cqrsctl.services import outbox
from cqrsctl.sinks import open_sink
from cqrsctl.store import Store

ROUND_TRIP_FORMATS = ["cqrsctl", "nestjs", "cloudevents", "eventbridge"]
# CloudEvents 1.0 §3.1: attribute names are lower-case ASCII letters and digits.
CE_NAME = re.compile(r"^[a-z0-9]+$")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def published(store: Store) -> list[tuple[str, str, str, int]]:
    """(event id, type, stream, version) of every published event, in delivery order."""
    return [
        (m.message_id, m.payload["event_type"], m.payload["stream_id"], m.payload["stream_version"])
        for m in outbox.list_messages(store, "delivered", limit=None)
    ]


def decode(fmt: str, message: dict[str, Any]) -> tuple[str, str, str, int]:
    """Read a message back the way its consumers do: (event id, type, stream, version)."""
    if fmt == "cqrsctl":
        p = message["payload"]
        return p["event_id"], p["event_type"], p["stream_id"], p["stream_version"]
    if fmt == "nestjs":
        v = message
        return v["eventId"], v["eventType"], f"{v['aggregateType']}-{v['aggregateId']}", v["aggregateVersion"]
    if fmt == "cloudevents":
        return message["id"], message["type"], message["subject"], message["streamversion"]
    if fmt == "eventbridge":
        detail = orjson.loads(message["Detail"])
        assert message["DetailType"] == detail["eventType"]
        return decode("nestjs", detail)
    raise AssertionError(fmt)


def check_per_stream_order(decoded: list[tuple[str, str, str, int]]) -> None:
    last: dict[str, int] = {}
    for _, _, stream, version in decoded:
        assert version == last.get(stream, 0) + 1, (stream, last.get(stream), version)
        last[stream] = version


@pytest.mark.parametrize("fmt", ROUND_TRIP_FORMATS)
def test_each_format_round_trips_ids_types_and_order(store: Store, tmp_path: Path, fmt: str) -> None:
    fill(store, accounts=3, deposits=9)
    path = tmp_path / "out.jsonl"
    report = outbox.drain(store, open_sink(f"file://{path}?format={fmt}"), batch=5)
    assert report.exit_code == 0, report.error
    decoded = [decode(fmt, line) for line in read_jsonl(path)]
    assert decoded == published(store) and len(decoded) == 12
    check_per_stream_order(decoded)


def check_cloudevent(event: dict[str, Any], message: tuple[str, str, str, int]) -> None:
    """The CloudEvents 1.0 required attributes (id, source, specversion, type) and the
    optional ones we set, checked against the specification's rules."""
    event_id, event_type, stream, version = message
    assert event["specversion"] == "1.0"
    assert isinstance(event["id"], str) and event["id"] == event_id
    assert isinstance(event["source"], str) and event["source"] == "urn:cqrsctl:test"
    assert isinstance(event["type"], str) and event["type"] == event_type
    assert event["subject"] == stream
    # time: RFC 3339
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", event["time"])
    datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    assert all(CE_NAME.match(name) for name in event), sorted(event)
    assert event["streamversion"] == version


def test_cloudevents_structured_over_http(store: Store) -> None:
    fill(store, accounts=2, deposits=4)
    with Receiver() as rx:
        report = outbox.drain(
            store, open_sink(f"{rx.url}?format=cloudevents&source=urn:cqrsctl:test", timeout=5)
        )
        assert report.exit_code == 0, report.error
        requests = list(rx.requests)
    assert len(requests) == 6
    for (headers, body), message in zip(requests, published(store), strict=True):
        headers = {k.lower(): v for k, v in headers.items()}
        assert headers["content-type"] == "application/cloudevents+json"
        event = orjson.loads(body)
        check_cloudevent(event, message)
        assert event["datacontenttype"] == "application/json" and isinstance(event["data"], dict)
        assert not any(h.startswith("ce-") for h in headers)


def test_cloudevents_binary_over_http(store: Store) -> None:
    fill(store, accounts=2, deposits=4)
    with Receiver() as rx:
        sink = open_sink(f"{rx.url}?format=cloudevents-binary&source=urn:cqrsctl:test", timeout=5)
        assert outbox.drain(store, sink).exit_code == 0
        requests = list(rx.requests)
    stored = {m.message_id: m.payload for m in outbox.list_messages(store, "delivered", limit=None)}
    for (headers, body), message in zip(requests, published(store), strict=True):
        headers = {k.lower(): v for k, v in headers.items()}
        # Binary mode: attributes are ce-* headers, the body is the data, Content-Type its type.
        event = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
        event["streamversion"] = int(event["streamversion"])
        check_cloudevent(event, message)
        assert headers["content-type"] == "application/json"
        assert orjson.loads(body) == stored[message[0]]["data"]


def test_nestjs_format_on_kafka(store: Store, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    topic = unique("bank.acct.events-")
    fill(store, accounts=2, deposits=6)
    report = outbox.drain(store, open_sink(f"{kafka_url}?topic={topic}&format=nestjs"))
    assert report.exit_code == 0, report.error
    records = _kafka_read(kafka_url, topic, 8)
    messages = {m.message_id: m for m in outbox.list_messages(store, "delivered", limit=None)}
    decoded = []
    for r in records:
        value = orjson.loads(r.value())
        assert set(value) == {
            "eventId", "eventType", "aggregateId", "aggregateType", "aggregateVersion",
            "timestamp", "correlationId", "causationId", "metadata", "data",
        }  # fmt: skip
        m = messages[value["eventId"]]
        headers = {k: v.decode() for k, v in r.headers()}
        assert headers["eventType"] == value["eventType"] == m.payload["event_type"]
        assert headers["aggregateVersion"] == str(value["aggregateVersion"])
        assert headers["correlationId"] == value["correlationId"] == m.payload["correlation_id"]
        assert r.key().decode() == m.key and value["aggregateType"] == "Acct"
        assert value["data"] == m.payload["data"] and value["timestamp"] == m.payload["recorded_at"]
        assert "command_id" in value["metadata"]  # the rest of the event's metadata travels along
        decoded.append(decode("nestjs", value))
    assert sorted(decoded) == sorted(published(store))
    check_per_stream_order(decoded)  # one key, one partition: per-aggregate order holds


def test_cloudevents_binary_on_kafka(store: Store, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    topic = unique("ce-")
    fill(store, accounts=1, deposits=2)
    report = outbox.drain(
        store, open_sink(f"{kafka_url}?topic={topic}&format=cloudevents-binary&source=urn:cqrsctl:test")
    )
    assert report.exit_code == 0, report.error
    records = _kafka_read(kafka_url, topic, 3)
    for r, message in zip(records, published(store), strict=True):
        headers = {k: v.decode() for k, v in r.headers()}
        assert headers["content-type"] == "application/json"
        event = {k.removeprefix("ce_"): v for k, v in headers.items() if k.startswith("ce_")}
        event["streamversion"] = int(event["streamversion"])
        check_cloudevent(event, message)
        assert isinstance(orjson.loads(r.value()), dict)


def test_eventbridge_entries_for_put_events(store: Store, tmp_path: Path) -> None:
    fill(store, accounts=1, deposits=1)
    path = tmp_path / "entries.jsonl"
    assert (
        outbox.drain(
            store, open_sink(f"file://{path}?format=eventbridge&source=bank.accounts&bus=bank")
        ).exit_code
        == 0
    )
    entries = read_jsonl(path)
    assert [set(e) for e in entries] == [{"Source", "DetailType", "Detail", "EventBusName", "Time"}] * 2
    assert {e["Source"] for e in entries} == {"bank.accounts"} and {e["EventBusName"] for e in entries} == {
        "bank"
    }
    assert all(isinstance(e["Detail"], str) for e in entries)  # PutEvents takes Detail as JSON text


def test_bullmq_sink_one_job_per_message_consumed_by_a_worker(store: Store, redis_url: str) -> None:
    bullmq = pytest.importorskip("bullmq")
    import redis

    queue = unique("cqrsctl-test-")
    total = fill(store, accounts=3, deposits=7)
    sink = open_sink(f"bullmq://127.0.0.1:6379/{queue}?job=account-event&format=nestjs", timeout=10)
    report = outbox.drain(store, sink, batch=4)
    assert (report.delivered, report.exit_code) == (total, 0), report.error
    # A re-delivery (a crash after sending, before marking) adds no second job.
    with sink:
        assert sink.send(outbox.list_messages(store, "delivered", limit=None)) == [None] * total

    async def consume() -> list[Any]:
        seen: list[Any] = []
        done = asyncio.Event()

        async def process(job: Any, token: str) -> str:
            seen.append(job)
            if len(seen) >= total:
                done.set()
            return "ok"

        worker = bullmq.Worker(queue, process, {"connection": "redis://127.0.0.1:6379/0", "autorun": True})
        try:
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0)  # nothing more is waiting: counted below, not here
        finally:
            await worker.close()
        return seen

    client = redis.Redis.from_url(redis_url)
    try:
        jobs = asyncio.run(consume())
        assert client.llen(f"bull:{queue}:wait") == 0 and client.zcard(f"bull:{queue}:completed") == total
    finally:
        keys = list(client.scan_iter(f"bull:{queue}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert [j.id for j in jobs] == [m[0] for m in published(store)]  # one job per message, in order
    assert {j.name for j in jobs} == {"account-event"}
    assert [decode("nestjs", j.data) for j in jobs] == published(store)


def test_bullmq_sink_unreachable_and_url_errors(store: Store) -> None:
    pytest.importorskip("bullmq")
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("bullmq://127.0.0.1:9/jobs", timeout=2))
    assert report.exit_code == 12 and "sink bullmq://127.0.0.1:9/jobs is unavailable" in (report.error or "")
    assert outbox.list_messages(store, "pending")[0].attempts == 0
    with pytest.raises(UsageError, match="give the queue"):
        open_sink("bullmq://127.0.0.1:6379")


def test_format_errors_are_usage_errors(store_url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown message format 'avro'"):
        open_sink(f"file://{tmp_path}/x.jsonl?format=avro")
    with pytest.raises(UsageError, match="cloudevents-binary needs a sink with headers"):
        open_sink(f"file://{tmp_path}/x.jsonl?format=cloudevents-binary")
    r = CliRunner().invoke(
        cli, ["--db", store_url, "outbox", "drain", "--sink", f"file://{tmp_path}/x?format=xml"]
    )
    assert r.exit_code == 2 and "unknown message format 'xml'" in r.output


def test_app_outbox_format_is_the_default_and_the_url_wins(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    fill(store, accounts=1, deposits=1)
    module = tmp_path / "nestjs_app.py"
    module.write_text("from cqrsctl.app import App\n\napp = App('nestjs-out', outbox_format='nestjs')\n")
    path = tmp_path / "out.jsonl"
    drain = ["--db", store_url, "outbox", "drain", "--sink"]
    r = CliRunner().invoke(cli, ["--app", f"{module}:app", *drain, f"file://{path}", "--max", "1"])
    assert r.exit_code == 13, r.output  # stopped at --max with one left
    r = CliRunner().invoke(cli, ["--app", f"{module}:app", *drain, f"file://{path}?format=eventbridge"])
    assert r.exit_code == 0, r.output
    first, second = read_jsonl(path)
    assert "eventId" in first and "DetailType" in second


def test_formats_on_redis_nats_and_amqp(store: Store, redis_url: str, nats_url: str, amqp_url: str) -> None:
    """The other sinks carry the formatted body (and, where they have headers, its headers)."""
    redis = pytest.importorskip("redis")
    pytest.importorskip("nats")
    pika = pytest.importorskip("pika")
    topic = unique("cqrsctl.fmt.")
    fill(store, accounts=2, deposits=2, using=app_with_topic(topic))
    # Redis: the payload field holds a CloudEvent.
    stream = unique("cqrsctl-fmt-")
    client = redis.Redis.from_url(redis_url)
    try:
        assert (
            outbox.drain(
                store, open_sink(f"{redis_url}?stream={stream}&format=cloudevents&source=urn:x")
            ).exit_code
            == 0
        )
        events = [orjson.loads(f[b"payload"]) for _, f in client.xrange(stream)]
    finally:
        client.delete(stream)
        client.close()
    want = published(store)
    assert [decode("cloudevents", e) for e in events] == want and {e["source"] for e in events} == {"urn:x"}
    # NATS: NestJS values with the NestJS headers next to Nats-Msg-Id.
    nstream = unique("CQRSCTL_FMT_")
    try:
        sink = open_sink(f"{nats_url}?stream={nstream}&format=nestjs")
        with sink:
            assert sink.send(outbox.list_messages(store, "delivered", limit=None)) == [None] * len(want)
        msgs, _ = asyncio.run(_nats_read(nats_url, nstream, topic, len(want)))
    finally:
        asyncio.run(_nats_delete(nats_url, nstream))
    values = [orjson.loads(m.data) for m in msgs]
    assert [decode("nestjs", v) for v in values] == want
    assert [m.headers["eventType"] for m in msgs] == [v["eventType"] for v in values]
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [v["eventId"] for v in values]
    # AMQP: EventBridge entries, with the format's content type.
    exchange, queue = unique("cqrsctl-fmt-x-"), unique("cqrsctl-fmt-q-")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange, routing_key=topic)
        with open_sink(f"{amqp_url}?exchange={exchange}&format=cloudevents") as sink:
            assert sink.send(outbox.list_messages(store, "delivered", limit=None)) == [None] * len(want)
        got = []
        while (message := ch.basic_get(queue, auto_ack=True))[0] is not None:
            got.append(message)
    finally:
        ch.queue_delete(queue)
        ch.exchange_delete(exchange)
        conn.close()
    assert [p.content_type for _, p, _ in got] == ["application/cloudevents+json"] * len(want)
    assert [decode("cloudevents", orjson.loads(b)) for _, _, b in got] == want
