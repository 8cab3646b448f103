"""Every sink against the real thing: messages are read back with the broker's own client,
in order per key, carrying the message id. Each test uses its own stream/subject/queue names."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from outbox_support import Receiver, app, app_with_topic, check_order, fill

from cqrsctl.services import outbox
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.sinks import open_sink
from cqrsctl.sinks.http import signature
from cqrsctl.sinks.kafka import kafka_topic
from cqrsctl.sinks.nats import subject_matches
from cqrsctl.store import Store


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def delivered_ids(store: Store) -> list[str]:
    return [m.message_id for m in outbox.list_messages(store, "delivered", limit=None)]


# -- stdout and file ------------------------------------------------------------------------


def test_stdout_sink_through_the_cli(store: Store, store_url: str) -> None:
    total = fill(store, accounts=3, deposits=9)
    proc = subprocess.run(
        [sys.executable, "-m", "cqrsctl", "--db", store_url, "outbox", "drain", "--sink", "stdout"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == total and {line["message_id"] for line in lines} == set(delivered_ids(store))
    check_order([line["payload"] for line in lines])
    assert b"delivered 12" in proc.stderr


def test_file_sink_appends_and_heals_a_torn_line(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"torn":')  # what a kill -9 mid-write leaves behind
    total = fill(store, accounts=2, deposits=2)
    assert outbox.drain(store, open_sink(f"file://{path}")).delivered == total
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"torn":' and len(lines) == total + 1
    assert all(orjson.loads(line)["message_id"] for line in lines[1:])


# -- HTTP -------------------------------------------------------------------------------------


def test_http_sink_posts_signed_json_in_order(store: Store) -> None:
    total = fill(store, accounts=3, deposits=12)
    with Receiver() as rx:
        sink = open_sink(f"{rx.url}?secret=k3y", timeout=5)
        assert "k3y" not in sink.name
        report = outbox.drain(store, sink)
        assert (report.delivered, report.exit_code) == (total, 0)
        payloads = rx.payloads()
        assert len(payloads) == total
        check_order(payloads)
        for headers, body in rx.requests:
            headers = {k.lower(): v for k, v in headers.items()}
            payload = orjson.loads(body)
            assert headers["x-message-id"] == payload["message_id"] == headers["idempotency-key"]
            assert headers["x-topic"] == payload["topic"] and headers["x-key"] == payload["key"]
            assert headers["x-signature"] == signature("k3y", body)
            assert headers["content-type"] == "application/json"


def test_http_sink_unreachable_is_a_clear_error(store: Store) -> None:
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("http://127.0.0.1:9/x", timeout=2))
    assert report.exit_code == 12 and "sink http://127.0.0.1:9/x is unavailable" in (report.error or "")
    [m] = outbox.list_messages(store, "pending")
    assert m.attempts == 0 and "unavailable" in (m.last_error or "")


# -- Redis ------------------------------------------------------------------------------------


def test_redis_sink_xadd_read_back_with_xrange(store: Store, redis_url: str) -> None:
    redis = pytest.importorskip("redis")
    stream = unique("cqrsctl-test-")
    total = fill(store, accounts=4, deposits=20)
    client = redis.Redis.from_url(redis_url)
    try:
        report = outbox.drain(store, open_sink(f"{redis_url}?stream={stream}&maxlen=1000"), batch=7)
        assert (report.delivered, report.exit_code) == (total, 0)
        entries = client.xrange(stream)
        assert len(entries) == total
        payloads = [orjson.loads(fields[b"payload"]) for _, fields in entries]
        assert [fields[b"message_id"].decode() for _, fields in entries] == [
            p["message_id"] for p in payloads
        ]
        assert {p["message_id"] for p in payloads} == set(delivered_ids(store))
        check_order(payloads)
    finally:
        client.delete(stream)
        client.close()


def test_redis_sink_without_stream_uses_the_topic(store: Store, redis_url: str) -> None:
    redis = pytest.importorskip("redis")
    topic = unique("cqrsctl-topic-")
    total = fill(store, accounts=2, deposits=3, using=app_with_topic(topic))
    client = redis.Redis.from_url(redis_url)
    try:
        assert outbox.drain(store, open_sink(redis_url)).delivered == total
        assert client.xlen(topic) == total
    finally:
        client.delete(topic)
        client.close()


def test_redis_sink_unreachable(store: Store) -> None:
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("redis://:pw@127.0.0.1:9/0?stream=x", timeout=2))
    assert report.exit_code == 12 and "redis://:***@127.0.0.1:9/0" in (report.error or "")
    assert "pw@" not in (report.error or "")


# -- NATS JetStream -----------------------------------------------------------------------------


def test_subject_matching() -> None:
    assert subject_matches("a.>", "a.b.c") and subject_matches("a.*", "a.b") and subject_matches("a.b", "a.b")
    assert (
        not subject_matches("a.*", "a.b.c")
        and not subject_matches("a.>", "a")
        and not subject_matches("a", "b")
    )


async def _nats_read(url: str, stream: str, subject: str, n: int) -> tuple[list[Any], int]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=stream)
        got: list[Any] = []
        while len(got) < n:
            got += await sub.fetch(n - len(got), timeout=5)
        for m in got:
            await m.ack()
        info = await js.stream_info(stream)
        return got, info.state.messages
    finally:
        await nc.close()


async def _nats_delete(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def test_nats_sink_jetstream_acks_dedupes_and_read_back(store: Store, nats_url: str) -> None:
    pytest.importorskip("nats")
    stream, topic = unique("CQRSCTL_TEST_"), unique("cqrsctl.test.")
    total = fill(store, accounts=4, deposits=30, using=app_with_topic(topic))
    try:
        sink = open_sink(f"{nats_url}?stream={stream}")
        report = outbox.drain(store, sink, batch=16)
        assert (report.delivered, report.exit_code) == (total, 0), report.error
        # Sending the same messages again (a crash between send and record) is deduped by
        # the broker on Nats-Msg-Id.
        again = outbox.list_messages(store, "delivered", limit=10)
        with open_sink(f"{nats_url}?stream={stream}") as resend:
            assert resend.send(again) == [None] * len(again)
        msgs, stored = asyncio.run(_nats_read(nats_url, stream, topic, total))
        assert stored == total
        payloads = [orjson.loads(m.data) for m in msgs]
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == [p["message_id"] for p in payloads]
        assert {p["message_id"] for p in payloads} == set(delivered_ids(store))
        check_order(payloads)
    finally:
        asyncio.run(_nats_delete(nats_url, stream))


def test_nats_sink_unreachable(store: Store) -> None:
    pytest.importorskip("nats")
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("nats://127.0.0.1:9?stream=X", timeout=2))
    assert report.exit_code == 12 and "sink nats://127.0.0.1:9?stream=X is unavailable" in (
        report.error or ""
    )
    assert outbox.list_messages(store, "pending")[0].attempts == 0


# -- AMQP (RabbitMQ) ----------------------------------------------------------------------------


def test_amqp_sink_confirms_persistent_read_back_with_basic_get(store: Store, amqp_url: str) -> None:
    pika = pytest.importorskip("pika")
    exchange, queue, topic = unique("cqrsctl-test-x-"), unique("cqrsctl-test-q-"), unique("cqrsctl.test.")
    total = fill(store, accounts=3, deposits=15, using=app_with_topic(topic))
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.queue_declare(queue, durable=False, auto_delete=False)
        ch.queue_bind(queue, exchange, routing_key=topic)
        report = outbox.drain(store, open_sink(f"{amqp_url}?exchange={exchange}"), batch=8)
        assert (report.delivered, report.exit_code) == (total, 0), report.error
        got = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append((method, props, orjson.loads(body)))
        assert len(got) == total
        for method, props, payload in got:
            assert props.message_id == payload["message_id"] and props.delivery_mode == 2
            assert method.routing_key == topic and props.headers["key"] == payload["key"]
        payloads = [p for _, _, p in got]
        assert {p["message_id"] for p in payloads} == set(delivered_ids(store))
        check_order(payloads)
    finally:
        ch.queue_delete(queue)
        ch.exchange_delete(exchange)
        conn.close()


def test_amqp_unroutable_message_is_a_failed_attempt(store: Store, amqp_url: str) -> None:
    pika = pytest.importorskip("pika")
    exchange = unique("cqrsctl-test-x-")
    fill(store, accounts=1, deposits=1, using=app_with_topic(unique("nobody.")))
    try:
        report = outbox.drain(store, open_sink(f"{amqp_url}?exchange={exchange}"))
        assert (report.delivered, report.failed, report.exit_code) == (0, 1, 12)
        first, second = outbox.list_messages(store, "pending")
        assert first.attempts == 1 and "no queue is bound" in (first.last_error or "")
        assert second.attempts == 0  # its key waits behind the failed message
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        conn.channel().exchange_delete(exchange)
        conn.close()


def test_amqp_wrong_password_is_a_clear_error(store: Store, amqp_url: str) -> None:
    pytest.importorskip("pika")
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("amqp://guest:wrong-pw@127.0.0.1:5672/%2F?exchange=x", timeout=5))
    assert report.exit_code == 12 and "amqp://guest:***@127.0.0.1:5672" in (report.error or "")
    assert "wrong-pw" not in (report.error or "")
    assert outbox.list_messages(store, "pending")[0].attempts == 0


# -- Kafka (a Tansu broker started for the session) -------------------------------------------


def _kafka_read(url: str, topic: str, n: int) -> list[Any]:
    """The first `n` records of `topic`, partition by partition (Kafka orders only within one)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    servers = url.removeprefix("kafka://")
    consumer = Consumer({"bootstrap.servers": servers, "group.id": unique("cqrsctl-test-"), "log_level": 0})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[Any] = []
        for _ in range(200):  # bounded: a missing record fails the count below, not a hang
            got += [r for r in consumer.consume(n - len(got), timeout=0.5) if r.error() is None]
            if len(got) >= n:
                break
        return sorted(got, key=lambda r: (r.partition(), r.offset()))
    finally:
        consumer.close()


def test_kafka_topic_names() -> None:
    assert kafka_topic("Account.events") == "Account.events"
    assert kafka_topic("bank/eu: payments") == "bank_eu__payments"


def test_kafka_sink_idempotent_produce_read_back(store: Store, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    topic = unique("cqrsctl/test:")  # '/' and ':' are not allowed in Kafka topic names
    total = fill(store, accounts=4, deposits=30, using=app_with_topic(topic))
    report = outbox.drain(store, open_sink(kafka_url), batch=16)
    assert (report.delivered, report.exit_code) == (total, 0), report.error
    records = _kafka_read(kafka_url, kafka_topic(topic), total)
    assert len(records) == total
    payloads = [orjson.loads(r.value()) for r in records]
    for r, p in zip(records, payloads, strict=True):
        headers = dict(r.headers())
        assert headers["message_id"].decode() == p["message_id"]
        assert headers["topic"].decode() == topic and r.key().decode() == p["key"]
        assert headers["event-type"].decode() == p["event_type"]
    assert {p["message_id"] for p in payloads} == set(delivered_ids(store))
    check_order(payloads)


def test_kafka_sink_topic_option_overrides_the_topic(store: Store, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    target = unique("cqrsctl-all-")
    total = fill(store, accounts=2, deposits=3)
    assert outbox.drain(store, open_sink(f"{kafka_url}?topic={target}")).delivered == total
    assert len(_kafka_read(kafka_url, target, total)) == total


def test_kafka_message_too_large_is_a_failed_attempt(store: Store, kafka_url: str) -> None:
    pytest.importorskip("confluent_kafka")
    d = Dispatcher(app, store)
    d.dispatch("Open", {"id": "a0", "owner": "x" * 2_000_000})  # over the producer's 1 MB limit
    d.dispatch("Deposit", {"id": "a0", "amount": 1})
    d.dispatch("Open", {"id": "a1", "owner": "o"})
    report = outbox.drain(store, open_sink(f"{kafka_url}?topic={unique('cqrsctl-big-')}"))
    assert (report.delivered, report.failed, report.exit_code) == (1, 1, 12)  # a1 is delivered
    big, after = outbox.list_messages(store, "pending")
    assert big.attempts == 1 and "too large" in (big.last_error or "").lower()
    assert after.attempts == 0  # its key waits behind the refused message


def test_kafka_sink_unreachable(store: Store) -> None:
    pytest.importorskip("confluent_kafka")
    fill(store, accounts=1, deposits=0)
    report = outbox.drain(store, open_sink("kafka://127.0.0.1:9?topic=x", timeout=2))
    error = report.error or ""
    assert report.exit_code == 12 and "sink kafka://127.0.0.1:9?topic=x is unavailable" in error
    assert "Connection refused" in error
    [m] = outbox.list_messages(store, "pending")
    assert m.attempts == 0 and "unavailable" in (m.last_error or "")


def test_kafka_sink_url_errors() -> None:
    from cqrsctl.errors import UsageError

    with pytest.raises(UsageError, match="not a Kafka topic name"):
        open_sink("kafka://127.0.0.1:9092?topic=a/b")
    with pytest.raises(UsageError, match="credentials"):
        open_sink("kafka://u:secret@127.0.0.1:9092")


def test_unknown_sink_scheme() -> None:
    from cqrsctl.errors import UsageError

    with pytest.raises(UsageError, match="unsupported sink"):
        open_sink("gopher://x")
